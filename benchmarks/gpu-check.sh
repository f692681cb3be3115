#!/usr/bin/env bash
# The GPU check of issue #14, as one script: on a GPU machine in about 8 minutes it
#   1. installs the project beside the machine's own CUDA torch (a venv with system site packages,
#      so pip keeps that torch when it satisfies pyproject's range and downloads nothing),
#   2. runs the test suite (not slurm, not browser) with the tests' device switched to CUDA
#      (BATCH_AST_TEST_DEVICE: honoured by the math, transfer, phase and batched tests; the job
#      tests use device auto, i.e. the GPU),
#   3. runs the bench sections step, gl, transfer, batch, precision and rows on the device,
#   4. runs a 16-row `quick` manifest through the local executor with --batch-rows 1 and 8 and
#      prints rows per hour and peak device memory of each,
#   5. runs the same rows with --processes-per-job 1, 2 and 4 (issue #24: several rows per
#      allocation), and again with 2 and 4 under a CUDA MPS daemon that this script starts for the
#      measurement and stops after it (only where nvidia-cuda-mps-control exists and no daemon runs),
#   6. checks the rows' accounting columns (issue #34): device time and memory filled on a GPU,
#      utilisation where NVML is installed, all of them null on the CPU; cost per preset in cost.csv.
# Everything it prints is also written to files in OUTDIR (log, versions, pytest XML, bench JSON/CSV,
# rows-per-hour table). It runs on the CPU too (DEVICE=cpu) so it can be tested without a GPU;
# GPU_CHECK_QUICK=1 shrinks every step to a smoke test of the script itself.
# Other settings (environment): GPU_CHECK_WHEELS=DIR installs carried wheels beside the machine's
# Python instead of a venv (a machine without a package index; GPU_CHECK_PYTHON, GPU_CHECK_SITE);
# GPU_CHECK_WORKERS=N runs the tests in N pytest-xdist workers; GPU_CHECK_PYTEST_ARGS adds pytest
# options; GPU_CHECK_BENCH picks bench sections (empty: none); GPU_CHECK_ROWS=0 leaves the rows
# out; GPU_CHECK_{TEST,BENCH,ROWS}_TIMEOUT bound each part (seconds). The run of 2026-11-26 on an
# H100: benchmarks/RESULTS.md.
#
# usage: benchmarks/gpu-check.sh OUTDIR [cuda|cpu]
set -uo pipefail
OUT="${1:?usage: benchmarks/gpu-check.sh OUTDIR [cuda|cpu]}"
DEVICE="${2:-cuda}"
QUICK="${GPU_CHECK_QUICK:-0}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee "$OUT/gpu-check.log") 2>&1
failures=0
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
check() { local rc=$?; if [ $rc -ne 0 ]; then echo "FAILED ($rc): $*"; failures=$((failures + 1)); fi; }

step "install"
if [ -n "${GPU_CHECK_WHEELS:-}" ]; then
  # A machine without a package index (a lent GPU machine): the dependencies its Python lacks were
  # carried in as wheels; install them beside that Python (which holds the machine's CUDA torch) and
  # run the project from this checkout. Nothing is downloaded.
  PY="${GPU_CHECK_PYTHON:-python3}"
  SITE="${GPU_CHECK_SITE:-/tmp/batch-ast-site}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$GPU_CHECK_WHEELS"/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import batch_ast, submitit, librosa, soundfile, pandas, pyarrow, yaml, matplotlib, tqdm, pytest"
else
  VENV="${GPU_CHECK_VENV:-.venv-gpu}"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv --system-site-packages "$VENV"
  fi
  PY="$VENV/bin/python"
  if ! "$PY" -c "import torch" 2>/dev/null; then
    # no torch on this machine: the small CPU wheel (on a GPU machine this means the check is moot)
    "$PY" -m pip install -q torch==2.13.0
  fi
  # installed already from this very checkout (a venv the user may not write: the test suite's)
  if ! "$PY" -c "import sys, pathlib, batch_ast, pytest
sys.exit(pathlib.Path(batch_ast.__file__).resolve().parents[1] != pathlib.Path.cwd().resolve())" 2>/dev/null; then
    "$PY" -m pip install -q -e '.[test]'
  fi
fi
check "install"
CLI=("$PY" -m batch_ast)

step "versions"
{
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm {p.major}.{p.minor}")
EOF
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
} | tee "$OUT/versions.txt"
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "FAILED: DEVICE=cuda but torch sees no CUDA device"; exit 2
fi

step "tests on $DEVICE"
# (this script's own smoke test is left out: it would run the whole check again inside the check)
if [ "$QUICK" = 1 ]; then
  TESTS=(tests/test_math.py -k "griffin_lim or gradient")
else
  TESTS=(-m "not slurm and not browser" --deselect tests/test_gpu_check.py)
fi
# pytest-xdist, where installed, runs the tests in GPU_CHECK_WORKERS processes (they share the GPU)
WORKERS=()
if [ "${GPU_CHECK_WORKERS:-0}" -gt 1 ] && "$PY" -c "import xdist" 2>/dev/null; then WORKERS=(-n "$GPU_CHECK_WORKERS"); fi
BATCH_AST_TEST_DEVICE="$DEVICE" timeout "${GPU_CHECK_TEST_TIMEOUT:-300}" "$PY" -m pytest -q -p no:cacheprovider \
  "${WORKERS[@]}" "${TESTS[@]}" ${GPU_CHECK_PYTEST_ARGS:-} --junitxml "$OUT/pytest.xml" 2>&1 | tee "$OUT/pytest.txt"
check "tests"

step "bench on $DEVICE"
# GPU_CHECK_BENCH: the sections to run (empty: none, e.g. when rerunning only the tests)
if [ "$QUICK" = 1 ]; then SECTIONS=(gl); BENCH_FLAGS=(--quick); else
  read -r -a SECTIONS <<< "${GPU_CHECK_BENCH-step gl transfer batch precision rows syncs}"; BENCH_FLAGS=(); fi
if [ "${#SECTIONS[@]}" -gt 0 ]; then
  timeout "${GPU_CHECK_BENCH_TIMEOUT:-300}" "$PY" -m benchmarks.bench --device "$DEVICE" "${BENCH_FLAGS[@]}" \
    --only "${SECTIONS[@]}" --out "$OUT/bench"
  check "bench"
fi

if [ "${GPU_CHECK_ROWS:-1}" = 1 ]; then  # GPU_CHECK_ROWS=0: leave the rows out (rerunning the tests only)
step "16 rows through the local executor, --batch-rows 1 vs 8"
ROWS=16; ITER=""
if [ "$QUICK" = 1 ]; then ROWS=2; ITER=",iterations,griffin_lim_iters"; fi
WORK="$OUT/rows"; rm -rf "$WORK"; mkdir -p "$WORK"
{
  echo "id,content,style,preset,seed,device${ITER}"
  for i in $(seq 1 "$ROWS"); do
    extra=""; [ "$QUICK" = 1 ] && extra=",5,4"
    echo "row$i,$PWD/manifests/audio/speech_gettysburg.wav,$PWD/manifests/audio/boogie_marabi.wav,quick,0,$DEVICE$extra"
  done
} > "$WORK/rows.csv"
# Equal seeds: the rows share one network, so --batch-rows can optimise them in one batched conv.
# A slightly different content_weight per row keeps their row ids distinct (equal rows run once).
"$PY" - "$WORK/rows.csv" <<'EOF'
import csv, sys
path = sys.argv[1]
rows = list(csv.DictReader(open(path)))
for i, row in enumerate(rows):
    row["content_weight"] = f"{4.3 * (1 + i / 100):.4f}"
with open(path, "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=[*rows[0].keys()])
    writer.writeheader(); writer.writerows(rows)
EOF
echo "batch_rows,rows,seconds,rows_per_hour,peak_device_mib" > "$OUT/rows-per-hour.csv"
for BATCH in 1 8; do
  RES="$WORK/results-b$BATCH"
  MEMLOG="$WORK/mem-b$BATCH.txt"; : > "$MEMLOG"
  if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$MEMLOG" & SAMPLER=$!
  else
    SAMPLER=""
  fi
  START=$(date +%s.%N)
  timeout "${GPU_CHECK_ROWS_TIMEOUT:-300}" "${CLI[@]}" submit "$WORK/rows.csv" --results "$RES" --executor local \
    --rows-per-job "$ROWS" --batch-rows "$BATCH" --quiet
  check "submit --batch-rows $BATCH"
  END=$(date +%s.%N)
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
  "$PY" - "$BATCH" "$ROWS" "$START" "$END" "$MEMLOG" "$RES" >> "$OUT/rows-per-hour.csv" <<'EOF'
import sys
import batch_ast
batch, rows, start, end, memlog, res = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
index = batch_ast.load_index(res)
ok = int((index["status"] == "ok").sum())
seconds = end - start
samples = [float(x) for x in open(memlog).read().split() if x.strip()]
peak = f"{max(samples):.0f}" if samples else "n/a"
print(f"{batch},{ok},{seconds:.1f},{3600 * ok / seconds:.0f},{peak}")
stages = [c for c in index.columns if c.startswith("time_") and c.endswith("_s")]
summary = index.groupby(["status", "device_used"], dropna=False)[stages].median().round(2)
print(f"--batch-rows {batch}: median seconds per stage by status and device\n{summary.to_string()}", file=sys.stderr)
EOF
done
cat "$OUT/rows-per-hour.csv"

step "what those rows cost (issue #34: accounting columns filled on the device, null off it)"
"$PY" - "$WORK/results-b1" "$DEVICE" "$OUT/cost.csv" <<'EOF'
import importlib.util, sys
import batch_ast
res, device, out = sys.argv[1], sys.argv[2], sys.argv[3]
df = batch_ast.load_index(res)
ok = df[df["status"] == "ok"]
table = batch_ast.cost(df)
table.to_csv(out)
print(table.to_string())
columns = ["cpu_s", "peak_rss_bytes", "usage_scope", "device_s", "device_peak_bytes", "gpu_util_mean"]
print(ok[columns].describe(include="all").to_string())
problems = [] if len(ok) and ok["cpu_s"].gt(0).all() and ok["peak_rss_bytes"].gt(0).all() else ["cpu_s/peak_rss_bytes"]
nvml = importlib.util.find_spec("pynvml") is not None
if device == "cuda":
    problems += [c for c in ("device_s", "device_peak_bytes") if not ok[c].notna().all()]
    if nvml and not ok["gpu_util_mean"].notna().all():
        problems.append("gpu_util_mean (NVML installed)")
    print("NVML:", "installed" if nvml else "not installed (pip install 'batch-ast[gpu]'): gpu_util_mean stays null")
else:
    problems += [c for c in ("device_s", "device_peak_bytes", "gpu_util_mean") if ok[c].notna().any()]
print("accounting:", "as expected" if not problems else f"FAILED: {problems}")
sys.exit(1 if problems else 0)
EOF
check "accounting columns"

step "the same rows with --processes-per-job 1, 2, 4 (row processes sharing one job's device)"
echo "processes_per_job,mps,rows,seconds,rows_per_hour" > "$OUT/allocation.csv"
allocation() {  # K MPS(on|off)
  local K=$1 MPS=$2 RES="$WORK/results-k$1-$2"
  local START END
  START=$(date +%s.%N)
  timeout "${GPU_CHECK_ROWS_TIMEOUT:-300}" "${CLI[@]}" submit "$WORK/rows.csv" --results "$RES" --executor local \
    --rows-per-job "$ROWS" --processes-per-job "$K" --quiet
  check "submit --processes-per-job $K (MPS $MPS)"
  END=$(date +%s.%N)
  "$PY" - "$K" "$MPS" "$START" "$END" "$RES" >> "$OUT/allocation.csv" <<'EOF'
import sys
import batch_ast
k, mps, start, end, res = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
ok = int((batch_ast.load_index(res)["status"] == "ok").sum())
print(f"{k},{mps},{ok},{end - start:.1f},{3600 * ok / (end - start):.0f}")
EOF
}
PROCESSES=(1 2 4); [ "$QUICK" = 1 ] && PROCESSES=(1 2)
for K in "${PROCESSES[@]}"; do allocation "$K" off; done
if [ "$DEVICE" = cuda ] && command -v nvidia-cuda-mps-control >/dev/null && [ ! -e /tmp/nvidia-mps/control ]; then
  export CUDA_MPS_PIPE_DIRECTORY="$WORK/mps-pipe" CUDA_MPS_LOG_DIRECTORY="$WORK/mps-log"
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d; then
    for K in 2 4; do allocation "$K" on; done
    echo quit | nvidia-cuda-mps-control
  else
    echo "MPS daemon did not start: MPS rows left out"
  fi
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
fi
cat "$OUT/allocation.csv"
fi

step "done: $failures step(s) failed; files in $OUT"
ls "$OUT"
exit $((failures > 0))
