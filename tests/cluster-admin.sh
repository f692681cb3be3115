#!/usr/bin/env bash
# What the test cluster's administrator does for the multi-node tests, which run as an unprivileged
# user (tests/as-user.sh lets that user run this script, and only this, as root through sudo):
#   lose-node NODE   the node dies: its slurmd (and so its namespace and its jobs) SIGKILLed, and
#                    the controller told at once (State=DOWN) instead of after SlurmdTimeout
#   restart N        slurm/start.sh --nodes N: the nodes whose slurmd is gone start again
set -euo pipefail
STATE=/var/lib/batch-ast-slurm
case "${1:-}" in
  lose-node)
    node="${2:?lose-node NODE}"
    [[ "$node" =~ ^n[0-9]{1,2}$ ]] || { echo "not a node of the test cluster: $node" >&2; exit 2; }
    pid="$(awk -v n="$node" '$1 == "slurmd" && $2 == n && $3 ~ /^[0-9]+$/ {print $3}' "$STATE/started-by-start.sh")"
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmd ] || { echo "no slurmd of $node" >&2; exit 1; }
    kill -KILL "$pid"
    scontrol update "NodeName=$node" State=DOWN Reason="lost in a test"
    ;;
  restart)
    nodes="${2:?restart N}"
    [[ "$nodes" =~ ^[0-9]{1,2}$ ]] || { echo "not a node count: $nodes" >&2; exit 2; }
    exec bash "$(cd "$(dirname "$0")/.." && pwd)/slurm/start.sh" --nodes "$nodes"
    ;;
  *) echo "usage: cluster-admin.sh lose-node NODE | restart N" >&2; exit 2 ;;
esac
