"""benchmarks/gpu-check.sh runs end to end (on the CPU, shrunk by GPU_CHECK_QUICK=1) and writes
every file it promises: what a session with a lent GPU runs as is, with `cuda`."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def test_gpu_check_script_runs_on_the_cpu(tmp_path):
    env = {**os.environ, "GPU_CHECK_QUICK": "1", "GPU_CHECK_VENV": str(Path(sys.executable).parent.parent)}
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu-check.sh"), str(tmp_path / "out"), "cpu"],
        capture_output=True, text=True, env=env, timeout=1200,
    )
    out = tmp_path / "out"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    for name in (
        "gpu-check.log",
        "versions.txt",
        "pytest.xml",
        "bench.json",
        "bench.csv",
        "rows-per-hour.csv",
        "allocation.csv",
        "cost.csv",
    ):
        assert (out / name).exists(), name
    assert "cuda available" in (out / "versions.txt").read_text()
    table = list(csv.DictReader((out / "rows-per-hour.csv").open()))
    assert [r["batch_rows"] for r in table] == ["1", "8"]
    assert all(int(r["rows"]) == 2 and float(r["rows_per_hour"]) > 0 for r in table)
    allocation = list(csv.DictReader((out / "allocation.csv").open()))
    assert [(r["processes_per_job"], r["mps"]) for r in allocation] == [("1", "off"), ("2", "off")]
    assert all(int(r["rows"]) == 2 and float(r["rows_per_hour"]) > 0 for r in allocation)
    assert "accounting: as expected" in (out / "gpu-check.log").read_text()  # device columns null on the CPU
    assert "0 step(s) failed" in (out / "gpu-check.log").read_text()
