#!/usr/bin/env bash
# Install (Debian slurm-wlm + munge), configure and start a SLURM cluster on this machine, as root.
# One node named after this host by default; with --nodes N (N > 1), N nodes n1..nN, each slurmd in
# its own UTS, PID and mount namespace (`unshare`), so that jobs on n2 see hostname n2 and their own
# pids, as on separate machines; they share this machine's kernel, filesystem and network (each
# slurmd on its own port of 127.0.0.1). CPUs and memory are split between the nodes (at least 2 CPUs
# and the default job's 8 GB each, so a node may promise more than its share of a small machine).
# Idempotent: a cluster of the asked size that already answers is left as it is; one this script
# started with another size is restarted. The daemons it starts are written to a marker
# ($STATE/started-by-start.sh): slurm/stop.sh stops those and nothing else, and this script never
# kills a daemon it did not start.
# Usage: sudo bash slurm/start.sh [--nodes N]        Stop it with: sudo bash slurm/stop.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
STATE="${BATCH_AST_SLURM_STATE:-/var/lib/batch-ast-slurm}"
CONF_DIR=/etc/slurm
MARK="$STATE/started-by-start.sh"
NODES=1
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES="${2:-}"; shift 2 || true ;;
    --nodes=*) NODES="${1#--nodes=}"; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "slurm/start.sh: unknown argument '$1' (usage: start.sh [--nodes N])" >&2; exit 2 ;;
  esac
done
if ! [[ "$NODES" =~ ^[1-9][0-9]?$ ]]; then
  echo "slurm/start.sh: --nodes takes a number of nodes from 1 to 99, not '$NODES'" >&2
  exit 2
fi

if [ "$(id -u)" != 0 ]; then
  echo "slurm/start.sh: must run as root (it installs packages and starts daemons)" >&2
  exit 1
fi

ready_nodes() { sinfo -h -N -o '%N %T' 2>/dev/null | grep -cE ' (idle|mixed|allocated)$' || true; }
marked_nodes() { [ -s "$MARK" ] && grep -c '^slurmd ' "$MARK" || echo 0; }
ours() { [ -s "$MARK" ] && grep -Ewo '[0-9]+' "$MARK" || true; }  # the marker's pids ("n1" is no pid)

# One node of a multi-node cluster: a new session (not this shell's), a new UTS/PID/mount namespace
# with its own /proc, a shell as the namespace's init (it reaps the job steps slurmd leaves to it)
# running slurmd in the foreground. Killing that slurmd ends the namespace and everything running
# on the node. Appends "slurmd nI PID" (the pid as this machine sees it) to the marker.
start_node() {
  local i=$1 launcher init="" node_pid=""
  setsid unshare --uts --pid --fork --mount-proc \
    sh -c "hostname n$i && slurmd -D -N n$i; exit \$?" </dev/null >>"$STATE/node-n$i.out" 2>&1 &
  launcher=$!
  for _ in $(seq 1 40); do
    init=$(pgrep -P "$launcher" | head -n1 || true)
    [ -n "$init" ] && node_pid=$(pgrep -P "$init" -x slurmd | head -n1 || true)
    [ -n "$node_pid" ] && break
    sleep 0.25
  done
  if [ -z "$node_pid" ]; then
    echo "slurm: node n$i did not start (is \`unshare\` allowed here?); see $STATE/node-n$i.out" >&2
    tail -n 5 "$STATE/node-n$i.out" >&2 || true
    exit 1
  fi
  echo "slurmd n$i $node_pid" >> "$MARK"
}

# The one node of a single-node cluster: slurmd on this host, as it daemonizes itself.
start_host_node() {
  local host; host="$(hostname -s)"
  rm -f "$STATE/slurmd-$host.pid"
  slurmd
  for _ in $(seq 1 20); do [ -s "$STATE/slurmd-$host.pid" ] && break; sleep 0.5; done
  echo "slurmd $host $(cat "$STATE/slurmd-$host.pid")" >> "$MARK"
}

wait_ready() {
  for _ in $(seq 1 60); do
    if [ "$(ready_nodes)" -ge "$NODES" ]; then
      echo "slurm: up ($(sinfo -h -o '%P %N %T cpus=%c gres=%G'))"
      return 0
    fi
    # a node left DOWN/DRAIN (by an earlier run, or a node that was lost) comes back once resumed
    scontrol update NodeName="$1" State=RESUME >/dev/null 2>&1 || true
    sleep 1
  done
  echo "slurm: not every node became idle; see $STATE/slurmctld.log and $STATE/slurmd-*.log" >&2
  sinfo -N -l >&2 || true
  tail -n 20 "$STATE/slurmctld.log" "$STATE"/slurmd-*.log >&2 || true
  return 1
}

if command -v sinfo >/dev/null && [ "$(ready_nodes)" -gt 0 ]; then
  if [ ! -s "$MARK" ] || [ "$(marked_nodes)" = "$NODES" ]; then
    [ -s "$MARK" ] || [ "$(ready_nodes)" = "$NODES" ] || \
      echo "slurm: a cluster this script did not start answers, with $(ready_nodes) nodes, not $NODES: left as it is" >&2
    lost=()  # nodes of ours whose slurmd is gone (killed, crashed): started again
    while read -r comm node pid; do
      [ "$comm" = slurmd ] || continue
      [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmd ] || lost+=("$node")
    done < <([ -s "$MARK" ] && cat "$MARK" || true)
    if [ "${#lost[@]}" = 0 ]; then
      echo "slurm: already running ($(sinfo -h -o '%N %T %G'))"
      exit 0
    fi
    for node in "${lost[@]}"; do
      sed -i "/^slurmd $node /d" "$MARK"
      echo "slurm: node $node is gone: starting it again"
      if [ "$NODES" = 1 ]; then start_host_node; else start_node "${node#n}"; fi
    done
    wait_ready "$(sinfo -h -o %N | head -n1)"
    exit $?
  fi
  echo "slurm: restarting the cluster this script started with $(marked_nodes) nodes, as $NODES"
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
if [ "$NODES" = 1 ]; then
  CTLD="$HOST"; NODELIST="$HOST"
  NODE_LINES="NodeName=$HOST CPUs=$CPUS RealMemory=$MEM Gres=gpu:2 State=UNKNOWN"
else
  # SLURM schedules CPUs but not memory here (CR_Core), so a node's memory only has to admit jobs.
  node_cpus=$(( CPUS / NODES > 2 ? CPUS / NODES : 2 ))
  node_mem=$(( MEM / NODES > 8192 ? MEM / NODES : (MEM < 8192 ? MEM : 8192) ))
  CTLD="$HOST(127.0.0.1)"; NODELIST="n[1-$NODES]"; NODE_LINES=""
  for i in $(seq 1 "$NODES"); do
    NODE_LINES+="NodeName=n$i NodeHostname=n$i NodeAddr=127.0.0.1 Port=$((6900 + i)) CPUs=$node_cpus"
    NODE_LINES+=" RealMemory=$node_mem Gres=gpu:2 State=UNKNOWN"$'\n'
  done
fi
mkdir -p "$CONF_DIR" "$STATE/slurmctld"
for f in slurm.conf gres.conf; do
  awk -v nodes="${NODE_LINES%$'\n'}" '{ if ($0 == "@NODES@") print nodes; else print }' "$HERE/$f.in" |
    sed -e "s|@CTLD@|$CTLD|g" -e "s|@NODELIST@|$NODELIST|g" -e "s|@STATE@|$STATE|g" > "$CONF_DIR/$f"
done
cp "$HERE/cgroup.conf" "$CONF_DIR/cgroup.conf"

# Daemons of an earlier run of this script (in the marker) are restarted; anyone else's are left
# alone, and then this cluster cannot start beside them.
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
rm -f "$MARK" "$STATE"/slurmd*.pid "$STATE/slurmctld.pid"
slurmctld -i            # -i: start even if saved state is unreadable; job ids continue from the saved state
for _ in $(seq 1 20); do [ -s "$STATE/slurmctld.pid" ] && break; sleep 0.5; done
echo "slurmctld $(cat "$STATE/slurmctld.pid")" > "$MARK"
if [ "$NODES" = 1 ]; then
  start_host_node
else
  for i in $(seq 1 "$NODES"); do start_node "$i"; done
fi
wait_ready "$NODELIST"
