#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by slurm/start.sh (munge is left running: harmless).
set -uo pipefail
if [ "$(id -u)" != 0 ]; then echo "slurm/stop.sh: must run as root" >&2; exit 1; fi
scancel --user=root >/dev/null 2>&1 || true
pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
for _ in $(seq 1 20); do pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break; sleep 0.5; done
echo "slurm: stopped"
