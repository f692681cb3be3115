"""Per-row accounting (usage.py), a study's cost (cost.py) and right-sizing a submission."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import batch_ast
from batch_ast.backends import slurm_allocation
from batch_ast.cli import main
from batch_ast.config import load_config
from batch_ast.costing import cost, job_need, row_need
from batch_ast.loop import run_row
from batch_ast.manifest import load_manifest
from batch_ast.plan import make_plan
from batch_ast.record import Record, RecordError, columns
from batch_ast.store import ResultsRoot
from batch_ast.usage import PeakMemory, UsageLedger, carried_usage

from .conftest import REPO, tiny_columns, write_manifest

GIB = 2**30


class Clock:
    """A counter the test moves by hand (CPU seconds, wall seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakePeak(PeakMemory):
    """Peaks the test sets, as the kernel would report them between two entries."""

    def __init__(self) -> None:
        self.resettable, self.next = True, 0

    def take(self) -> int:
        return self.next


def test_the_ledger_splits_cpu_among_the_rows_running_and_gives_each_its_own_peak():
    cpu, wall, peak = Clock(), Clock(), FakePeak()
    ledger = UsageLedger(cpu=cpu, wall=wall, memory=peak)
    ledger.enter("a")
    cpu.now, wall.now, peak.next = 2.0, 2.0, 100
    ledger.enter("b")  # a alone so far: 2 s, peak 100
    cpu.now, wall.now, peak.next = 6.0, 6.0, 300
    a = ledger.leave("a")  # 4 s while both ran: 2 each
    cpu.now, wall.now, peak.next = 7.0, 7.0, 50
    b = ledger.leave("b")
    ledger.enter("c")
    cpu.now, wall.now, peak.next = 9.0, 9.0, 80
    c = ledger.leave("c")
    assert a["cpu_s"] == 4.0 and a["peak_rss_bytes"] == 300 and a["usage_scope"] == "shared"
    assert b["cpu_s"] == 3.0 and b["peak_rss_bytes"] == 300 and b["usage_scope"] == "shared"
    assert a["wall_s"] == 4.0 and b["wall_s"] == 3.0  # the process's time split like its CPU time
    assert c == {"cpu_s": 2.0, "wall_s": 2.0, "peak_rss_bytes": 80, "usage_scope": "row", "device_s": None,
                 "device_peak_bytes": None, "gpu_util_mean": None}
    assert a["cpu_s"] + b["cpu_s"] + c["cpu_s"] == cpu.now  # nothing counted twice or lost
    assert ledger.leave("never-entered") == {}


def test_device_time_peak_and_utilisation_are_the_rows_on_that_device():
    cpu, wall, peak = Clock(), Clock(), FakePeak()
    readings = iter([40.0, 60.0, float("nan"), 80.0])
    ledger = UsageLedger(cpu=cpu, wall=wall, memory=peak, device_peak=lambda d: 5 * GIB,
                         utilisation=lambda d: next(readings), sample_every_s=3600)
    ledger.enter("gpu-row")
    ledger.assign("gpu-row", device="cuda:0")
    ledger.enter("cpu-row")
    ledger.sample()  # not optimising yet: no reading taken
    ledger.optimising("gpu-row", True)
    for _ in range(4):
        ledger.sample()  # what the sampler thread does every second
    ledger.optimising("gpu-row", False)
    ledger.sample()
    wall.now = 10.0
    on_gpu, on_cpu = ledger.leave("gpu-row"), ledger.leave("cpu-row")
    assert on_gpu["device_s"] == 10.0 and on_gpu["device_peak_bytes"] == 5 * GIB
    assert on_gpu["gpu_util_mean"] == pytest.approx(60.0)  # the NaN reading left out
    assert on_cpu["device_s"] is None and on_cpu["gpu_util_mean"] is None  # never made up


def test_usage_before_a_requeue_is_carried_and_a_bad_checkpoint_figure_is_left_out():
    cpu, wall, peak = Clock(), Clock(), FakePeak()
    ledger = UsageLedger(cpu=cpu, wall=wall, memory=peak)
    ledger.enter("a")
    ledger.assign("a", carried=carried_usage({"cpu_s": 5.0, "peak_rss_bytes": 900, "device_s": -1,
                                              "util_sum": float("inf"), "evil": 3, "util_samples": True}))
    cpu.now, peak.next = 1.0, 400
    figures = ledger.leave("a")
    assert figures["cpu_s"] == 6.0 and figures["peak_rss_bytes"] == 900
    assert carried_usage("not a mapping") == {}


def test_the_kernel_peak_is_reset_for_each_row_of_a_process():
    """Real /proc counters: a row that touches 300 MB, then one that touches 30 MB."""
    ledger = UsageLedger()
    if not ledger.memory.resettable:
        pytest.skip("this kernel refuses /proc/self/clear_refs: peaks cover the whole process "
                    "(scope 'process')")
    ledger.enter("big")
    big = np.ones(300 * 2**20 // 8)
    del big
    first = ledger.leave("big")
    ledger.enter("small")
    small = np.ones(30 * 2**20 // 8)
    del small
    second = ledger.leave("small")
    assert first["usage_scope"] == second["usage_scope"] == "row"
    assert first["peak_rss_bytes"] - second["peak_rss_bytes"] > 200 * 2**20


ROWS_SCRIPT = r"""
import json, sys, time
from pathlib import Path
import torch
from batch_ast.config import load_config
from batch_ast.loop import run_row
from batch_ast.manifest import load_manifest
from batch_ast.plan import make_plan
from batch_ast.store import ResultsRoot
from batch_ast.transfer import estimate_memory_bytes
from batch_ast.features import stft_frames

manifest, root = Path(sys.argv[1]), ResultsRoot(sys.argv[2])
torch.set_num_threads(2)
specs = make_plan(load_manifest(manifest, load_config()), root, manifest).to_run
out = []
for spec in specs:
    before = next(int(l.split()[1]) * 1024 for l in Path("/proc/self/status").read_text().splitlines()
                  if l.startswith("VmRSS:"))
    cpu0, thread0 = time.process_time(), time.thread_time()
    record = run_row(spec, root)
    p = spec.params
    frames = stft_frames(int(record["content_seconds"] * p.sample_rate), p.hop_length)
    style_frames = stft_frames(int(record["style_seconds"] * p.sample_rate), p.hop_length)
    out.append({"record": record, "rss_before": before, "process_cpu": time.process_time() - cpu0,
                "main_thread_cpu": time.thread_time() - thread0,
                "estimate": estimate_memory_bytes(p.n_fft // 2 + 1, frames, style_frames, p)})
print(json.dumps(out))
"""


def test_rows_of_one_process_report_their_own_peak_and_every_thread_s_cpu(audio_dir, tmp_path):
    """Three rows in one fresh process with 2 torch threads: a tiny one (it loads what every row
    needs once: libraries, caches), a large one (2048 filters), a tiny one again. The large row's
    peak rises over the process's size by the estimate behind max_memory_gb (within 40 %); the
    tiny row after it reports its own, smaller peak; each row's CPU time counts both threads
    (more than the main thread's own) and never more than the process's."""
    big = {"n_filters": 2048, "iterations": 3, "patience": 100, "max_seconds": 4.0,
           "sample_rate": 22050, "n_fft": 2048, "hop_length": 256}
    head, big_vals = tiny_columns(**big)
    _, tiny_vals = tiny_columns(**{**big, "n_filters": 32, "n_fft": 256, "hop_length": 64,
                                   "sample_rate": 8000, "max_seconds": 1.0})
    rows = [f"content.wav,style.wav,{tiny_vals}", f"content.wav,style.wav,{big_vals}",
            f"content2.wav,style.wav,{tiny_vals}"]
    combined = write_manifest(audio_dir, rows, header=f"content,style,{head}")
    done = subprocess.run([sys.executable, "-c", ROWS_SCRIPT, str(combined), str(tmp_path / "results")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    first, large, last = json.loads(done.stdout.splitlines()[-1])
    for row in (first, large, last):
        r = row["record"]
        assert r["status"] == "ok", r.get("error")
        assert r["usage_scope"] == "row" and r.get("device_s") is None and r.get("gpu_util_mean") is None
        assert 0 < r["cpu_s"] <= row["process_cpu"] + 0.05  # never more than the whole process
    # both threads of the 2048-filter row counted, not the main thread's alone
    assert large["record"]["cpu_s"] > 1.2 * large["main_thread_cpu"]
    rise = large["record"]["peak_rss_bytes"] - large["rss_before"]
    assert 0.6 * large["estimate"] < rise < 1.4 * large["estimate"], (rise, large["estimate"])
    # the last row's peak is its own (without a reset it would be at least the large row's)
    assert last["record"]["peak_rss_bytes"] < large["record"]["peak_rss_bytes"]


def test_a_resumed_row_adds_the_usage_of_its_run_before_the_pause(audio_dir, tmp_path):
    from batch_ast.checkpoint import read_checkpoint
    from batch_ast.runopts import Paused

    results = ResultsRoot(tmp_path / "results")
    head, vals = tiny_columns(iterations=30, patience=1000)
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    (spec,) = make_plan(load_manifest(m, load_config()), results, m).to_run
    calls = iter(range(1000))
    with pytest.raises(Paused):
        run_row(spec, results, should_pause=lambda: next(calls) >= 5)
    state, _ = read_checkpoint(results.checkpoint_path(spec.id), spec, torch.device("cpu"), results.root)
    before = state["usage"]
    assert before["cpu_s"] > 0 and before["peak_rss_bytes"] > 0
    record = run_row(spec, results)
    assert record["status"] == "ok" and record["resumes"] == 1
    assert record["cpu_s"] > before["cpu_s"] and record["peak_rss_bytes"] >= before["peak_rss_bytes"]
    # its time in a process counts both runs; time_total_s only the last
    assert record["wall_s"] > before["wall_s"] and record["wall_s"] > record["time_total_s"]


@pytest.mark.parametrize("field, value", [("cpu_s", -1.0), ("cpu_s", float("nan")), ("peak_rss_bytes", -5),
                                          ("usage_scope", "everything"), ("alloc_cpus", "2")])
def test_a_record_with_an_impossible_usage_figure_is_invalid(field, value):
    data = {"id": "r1", "status": "ok", field: value}
    with pytest.raises(RecordError, match=field):
        Record.from_json(data, "r1")


def test_slurm_allocation_from_the_job_environment():
    assert slurm_allocation({"SLURM_CPUS_ON_NODE": "4", "SLURM_MEM_PER_NODE": "8000",
                             "SLURM_JOB_GPUS": "0,1"}) == {
        "alloc_cpus": 4, "alloc_mem_bytes": 8000 * 2**20, "alloc_gpus": 2, "alloc_time_limit_s": None}
    per_cpu = slurm_allocation({"SLURM_CPUS_PER_TASK": "2", "SLURM_MEM_PER_CPU": "1024",
                                "SLURM_GPUS_ON_NODE": "1", "SLURM_JOB_START_TIME": "1000",
                                "SLURM_JOB_END_TIME": "4600"})
    assert per_cpu == {"alloc_cpus": 2, "alloc_mem_bytes": 2 * 2**30, "alloc_gpus": 1,
                       "alloc_time_limit_s": 3600.0}
    assert slurm_allocation({})["alloc_cpus"] is None and slurm_allocation({})["alloc_gpus"] == 0


def _study() -> pd.DataFrame:
    """Five finished rows of two presets, one written before 0.5 (no figures), one still running."""
    return pd.DataFrame({
        "id": list("abcdef"), "status": ["ok", "ok", "failed", "ok", "ok", "running"],
        "preset": ["quick", "quick", "quick", "", "quick", "quick"],
        "cpu_s": [3600.0, 7200.0, 1800.0, np.nan, 3600.0, 100.0],
        "device_s": [np.nan, np.nan, np.nan, np.nan, 1800.0, np.nan],
        "time_total_s": [1800.0, 3600.0, 900.0, 60.0, 1800.0, 10.0],
        "peak_rss_bytes": [1 * GIB, 2 * GIB, 1 * GIB, np.nan, 3 * GIB, GIB],
        "alloc_cpus": [2, 2, 2, np.nan, 4, 2], "alloc_rows": [1, 1, 1, np.nan, 2, 1],
        "slurm_job_id": ["7", "7", "7", "", "8", "8"], "slurm_array_task_id": ["0", "1", "1", "", "0", "0"],
    })


def test_cost_sums_the_finished_rows_per_preset_and_per_job():
    table = batch_ast.cost(_study())
    quick, old = table.loc["quick"], table.loc[""]
    assert (quick["rows"], quick["measured"]) == (4, 4) and (old["rows"], old["measured"]) == (1, 0)
    assert quick["core_hours"] == pytest.approx(4.5) and quick["gpu_hours"] == pytest.approx(0.5)
    assert quick["peak_rss_gib_max"] == 3 and quick["peak_rss_gib_p50"] == 1.5
    # the grant: 2 CPUs x 1.75 h of rows alone + 4 CPUs x 0.5 h shared by 2 row processes
    assert quick["alloc_core_hours"] == pytest.approx(3.5 + 1.0)
    assert quick["cpu_efficiency"] == pytest.approx(4.5 / 4.5)
    local = _study()
    local.loc[4, ["alloc_cpus", "alloc_rows"]] = np.nan  # a row without a grant (local executor)
    assert cost(local).loc["quick", "cpu_efficiency"] == pytest.approx(3.5 / 3.5)  # like for like
    per_job = cost(_study(), by="job")
    assert per_job.loc[("7", "1"), "core_hours"] == pytest.approx(2.5)
    total = cost(_study(), by=None)
    assert list(total.index) == ["all"] and total.loc["all", "rows"] == 5
    with pytest.raises(KeyError, match="no column"):
        cost(_study(), by="nonsense")


def test_right_sizing_needs_similar_rows_and_warns_both_ways():
    history = _study().assign(content_seconds=[4.0, 4.0, 4.2, 4.0, 3.9, 4.0])
    assert row_need(history, "quick", 20.0) is None  # no earlier row of that length
    need = row_need(history, "quick", 4.0)
    assert need.rows == 4 and need.peak_rss_bytes == pytest.approx(history["peak_rss_bytes"][[0, 1, 2, 4]]
                                                                  .quantile(0.95))
    job = job_need("preset quick", need, rows_per_job=4, processes=2, requested_memory_bytes=1 * GIB,
                   requested_time_s=100 * 3600.0)
    assert job.memory_bytes == 2 * need.peak_rss_bytes and job.time_s == 2 * need.wall_s
    low, high = job.warnings()
    assert "below" in low and "killed for memory" in low and f"mem_gb: {job.suggested()['mem_gb']}" in low
    assert "over 4x" in high and "timeout_min" in high
    fitting = job_need("preset quick", need, 4, 2, job.memory_bytes * 1.5, job.time_s * 2)
    assert fitting.warnings() == []


def test_status_report_and_dry_run_show_what_the_rows_cost(audio_dir, tmp_path, capsys):
    head, vals = tiny_columns(preset="quick")
    rows = [f"{c},style.wav,{vals}" for c in ("content.wav", "content2.wav", "style.wav")]
    m = write_manifest(audio_dir, rows, header=f"content,style,{head}")
    results = tmp_path / "results"
    assert main(["submit", str(m), "--results", str(results), "--executor", "debug", "--quiet"]) == 0
    df = batch_ast.load_index(results)
    assert (df["cpu_s"] > 0).all() and (df["peak_rss_bytes"] > 0).all() and df["device_s"].isna().all()
    capsys.readouterr()
    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "cost (measured in the jobs" in out and "quick: 3 row(s):" in out and "core-h" in out
    assert main(["report", str(results)]) == 0
    page = (results / "report.html").read_text()
    assert "<table id='cost'>" in page and "<td>quick</td><td>3</td><td>3</td>" in page
    # the same rows again with another seed, a new study: sized from the three finished ones
    again = audio_dir / "again.csv"
    pd.read_csv(m).assign(seed=7).to_csv(again, index=False)
    assert main(["submit", str(again), "--results", str(results), "--executor", "local", "--dry-run",
                 "--timeout-min", "6000"]) == 0
    captured = capsys.readouterr()
    assert "preset quick: p95 of 3 earlier row(s)" in captured.out
    assert "over 4x" in captured.err and "timeout_min" in captured.err
    assert main(["submit", str(again), "--results", str(tmp_path / "empty"), "--executor", "local",
                 "--dry-run"]) == 0
    assert "no estimate for preset(s) quick" in capsys.readouterr().out
    # rows asking for their own time limit (manifest column) are sized against it, group by group
    mixed = audio_dir / "mixed.csv"
    pd.read_csv(m).assign(seed=8, timeout_min=[6000, 6000, 12]).to_csv(mixed, index=False)
    assert main(["submit", str(mixed), "--results", str(results), "--executor", "local", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "preset quick, timeout_min=6000: p95 of 3" in captured.out
    assert "preset quick, timeout_min=12: p95 of 3" in captured.out
    assert "preset quick, timeout_min=6000: the jobs ask for 100h00m" in captured.err
    assert "timeout_min=12: the jobs ask" not in captured.err


def test_an_index_written_before_accounting_reads_with_null_usage(audio_dir, tmp_path):
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    results = ResultsRoot(tmp_path / "results")
    (spec,) = make_plan(load_manifest(m, load_config()), results, m).to_run
    record = run_row(spec, results)
    old = {k: v for k, v in record.items()
           if k not in columns("cost") and k != "usage_scope"}
    results.write_json(results.record_path(spec.id), old)
    batch_ast.collect(results.root)
    df = batch_ast.load_index(results.root)
    assert df.loc[0, "status"] == "ok" and pd.isna(df.loc[0, "cpu_s"]) and pd.isna(df.loc[0, "usage_scope"])
    assert batch_ast.cost(df).loc["", "measured"] == 0
    # an index file an older version wrote lacks the columns: read as empty ones until a collect
    import pyarrow.parquet as pq

    table = pq.read_table(results.index_path)
    pq.write_table(table.drop_columns([*columns("cost"), "usage_scope"]), results.index_path)
    df = batch_ast.load_index(results.root)
    assert df["cpu_s"].isna().all() and str(df["alloc_cpus"].dtype) == "Int64"


def test_gpu_probes_say_nothing_off_a_gpu_and_match_nvml_by_uuid(monkeypatch):
    """Off CUDA both probes give None; on it (faked here: no GPU in CI), NVML's device is the one
    whose UUID torch reports (NVML numbers every GPU of the node, torch only the visible ones)."""
    from types import SimpleNamespace

    from batch_ast import gpu_usage

    assert gpu_usage.cuda_peak_bytes("cpu") is None and gpu_usage.nvml_utilisation("cpu") is None
    asked = []
    fake_nvml = SimpleNamespace(
        nvmlDeviceGetHandleByUUID=lambda uuid: asked.append(uuid) or "handle",
        nvmlDeviceGetUtilizationRates=lambda handle: SimpleNamespace(gpu=87 if handle == "handle" else 0),
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: SimpleNamespace(uuid=f"uuid-of-{index}"))
    monkeypatch.setattr(gpu_usage, "_nvml", lambda: fake_nvml)
    gpu_usage._nvml_handle.cache_clear()
    try:
        assert gpu_usage.nvml_utilisation("cuda:1") == 87.0 and asked == ["GPU-uuid-of-1"]
    finally:
        gpu_usage._nvml_handle.cache_clear()
