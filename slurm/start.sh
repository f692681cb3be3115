#!/usr/bin/env bash
# Install (Debian slurm-wlm + munge), configure and start a single-node SLURM cluster on this
# machine, as root. Idempotent: a cluster that already answers is left as it is. The daemons it
# starts are written to a marker ($STATE/started-by-start.sh): slurm/stop.sh stops those and
# nothing else, and this script never kills a daemon it did not start.
# Usage: sudo bash slurm/start.sh        Stop it with: sudo bash slurm/stop.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
STATE="${BATCH_AST_SLURM_STATE:-/var/lib/batch-ast-slurm}"
CONF_DIR=/etc/slurm
MARK="$STATE/started-by-start.sh"

if [ "$(id -u)" != 0 ]; then
  echo "slurm/start.sh: must run as root (it installs packages and starts daemons)" >&2
  exit 1
fi

node_ready() { sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

if command -v sinfo >/dev/null && node_ready; then
  echo "slurm: already running ($(sinfo -h -o '%N %T %G'))"
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  echo "slurm: installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: a key, then the daemon (as the munge user when it exists).
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
if id munge >/dev/null 2>&1; then
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
fi
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  if id munge >/dev/null 2>&1; then runuser -u munge -- munged; else munged --force; fi
fi

# Configuration from this machine's host name, CPUs and memory.
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
mkdir -p "$CONF_DIR" "$STATE/slurmctld" "$STATE/slurmd"
for f in slurm.conf gres.conf; do
  sed -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$MEM|g" -e "s|@STATE@|$STATE|g" \
    "$HERE/$f.in" > "$CONF_DIR/$f"
done
cp "$HERE/cgroup.conf" "$CONF_DIR/cgroup.conf"

# Daemons of an earlier run of this script (in the marker) are restarted; anyone else's are left
# alone, and then this cluster cannot start beside them.
ours() { [ -s "$MARK" ] && grep -Eo '[0-9]+' "$MARK" || true; }
for pid in $(ours); do
  case "$(cat "/proc/$pid/comm" 2>/dev/null)" in slurmctld|slurmd) kill "$pid" 2>/dev/null || true ;; esac
done
for _ in $(seq 1 20); do pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break; sleep 0.5; done
others="$( (pgrep -x slurmctld; pgrep -x slurmd) | tr '\n' ' ' || true)"
if [ -n "${others// /}" ]; then
  echo "slurm: SLURM daemons that slurm/start.sh did not start are running (pids $others); stop them" \
       "or use their cluster" >&2
  exit 1
fi
rm -f "$MARK"
slurmctld -i            # -i: start even if saved state is unreadable; job ids continue from the saved state
slurmd
for _ in $(seq 1 20); do [ -s "$STATE/slurmctld.pid" ] && [ -s "$STATE/slurmd.pid" ] && break; sleep 0.5; done
echo "slurmctld $(cat "$STATE/slurmctld.pid") slurmd $(cat "$STATE/slurmd.pid")" > "$MARK"
for _ in $(seq 1 60); do
  if node_ready; then
    echo "slurm: up ($(sinfo -h -o '%P %N %T cpus=%c gres=%G'))"
    exit 0
  fi
  # a node left DOWN/DRAIN by an earlier run comes back once resumed
  scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm: the node did not become idle; see $STATE/slurmctld.log and $STATE/slurmd.log" >&2
sinfo -N -l >&2 || true
tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
exit 1
