#!/usr/bin/env bash
# Stop the SLURM cluster that slurm/start.sh started, and only that: the daemons named in its marker
# ($STATE/started-by-start.sh), after cancelling the jobs on that cluster (its own controller's
# queue). A node's slurmd ends its namespace, and with it whatever still ran on that node. A cluster someone else started is left running, their jobs untouched.
# munge is left running (harmless).
set -uo pipefail
STATE="${BATCH_AST_SLURM_STATE:-/var/lib/batch-ast-slurm}"
MARK="$STATE/started-by-start.sh"
if [ "$(id -u)" != 0 ]; then echo "slurm/stop.sh: must run as root" >&2; exit 1; fi
pids=()
if [ -s "$MARK" ]; then
  for pid in $(grep -Ewo '[0-9]+' "$MARK"); do  # "n1" is a node, not a pid
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in slurmctld|slurmd) pids+=("$pid") ;; esac
  done
fi
if [ "${#pids[@]}" = 0 ]; then
  rm -f "$MARK"
  echo "slurm: nothing that slurm/start.sh started is running; any other cluster is left as it is"
  exit 0
fi
scancel --state=PENDING,RUNNING,SUSPENDED,REQUEUED >/dev/null 2>&1 || true  # the queue of our controller
kill "${pids[@]}" 2>/dev/null || true
for _ in $(seq 1 20); do
  alive=0; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break; sleep 0.5
done
rm -f "$MARK"
echo "slurm: stopped (pids ${pids[*]})"
