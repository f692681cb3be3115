"""The benchmark command runs and writes its table (timings are read by people, never checked by tests;
counts are)."""

from __future__ import annotations

import json

import torch

from benchmarks import bench, common, kernel, pipeline, research


def test_step_flop_count_is_the_minimal_work_of_the_form_used():
    conv = 2 * 10 * 6 * 4 * 10  # 10 bins x kernel 6 x 4 filters x 10 output frames
    # conv forward + input gradient; C×C Gram forward + one C×C×T matmul back
    assert kernel.step_flops(10, 15, 4, 6) == 2 * conv + 2 * (2 * 4 * 4 * 10)
    # frames form: T×(T+Ts) products forward + one C×(T+Ts)×T matmul back (style: 20 - 5 = 15 frames)
    assert kernel.step_flops(10, 15, 4, 6, "frames", 20) == 2 * conv + 2 * (2 * 4 * 10 * (10 + 15))


def test_quick_griffin_lim_section_writes_json_and_csv(tmp_path):
    out = tmp_path / "bench"
    assert bench.main(["--quick", "--only", "gl", "--device", "cpu", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["meta"]["device"] == "cpu" and data["meta"]["matmul_gflops"] > 0
    sections = [r["section"] for r in data["rows"]]
    assert sections == ["griffin_lim"] * 3
    assert all(r["ratio"] > 0 for r in data["rows"])
    assert out.with_suffix(".csv").read_text().startswith("section,case,value")


def test_early_stop_iteration_follows_the_transfer_rule():
    # no relative improvement of 10 % for 2 iterations in a row: stops at the 2nd stale one
    assert research.early_stop_iteration([10.0, 8.0, 7.9, 7.8, 5.0], patience=2, min_delta=0.1) == 4
    assert research.early_stop_iteration([10.0, 8.0, 6.0], patience=2, min_delta=0.1) == 3  # never stale


def test_rhythm_measures_and_alignment_are_independent_of_the_loss():
    import numpy as np

    sr = 8000
    clicks = np.zeros(sr * 2, dtype=np.float32)
    clicks[:: sr // 4] = 1.0  # 4 clicks per second
    other = np.roll(clicks, sr // 8)  # off-beat
    same = research.rhythm_measures(clicks, clicks, other, sr)
    assert same["onset_cos_a"] > 0.99 and same["onset_cos_b"] < same["onset_cos_a"] and same["length"] == 1.0
    late = np.concatenate([np.zeros(800, dtype=np.float32), clicks])  # 100 ms codec delay
    aligned, lag = research.align_to(late, clicks, sr)
    assert abs(lag - 0.1) < 0.01
    before = research.rhythm_measures(late[: len(clicks)], clicks, other, sr)["onset_cos_a"]
    assert research.rhythm_measures(aligned[: len(clicks)], clicks, other, sr)["onset_cos_a"] > before


def test_sections_form_one_table_and_quick_leaves_out_the_long_checks():
    names = [s.name for s in bench.SECTIONS]
    assert len(names) == len(set(names)) and "step" in names and "collect" in names
    assert {s.name for s in bench.SECTIONS if not s.in_quick} == {
        "compile",
        "reference",
        "stopping",
        "rhythm",
        "throughput",
        "cold",
    }
    row = common.Result("gl", "case", 2.0, "x", reference=1.0, ratio=2.0, details={"curve": {"16": 0.3}})
    assert row.to_dict() == {"section": "gl", "case": "case", "value": 2.0, "unit": "x", "reference": 1.0,
                             "ratio": 2.0, "note": "", "curve": {"16": 0.3}}


def test_the_lean_loop_reads_fewer_values_back_per_iteration_than_the_previous_one():
    """The syncs section on the CPU: tensor values read back to Python per L-BFGS iteration (each
    a host sync on CUDA), lean loop against the previous one on the same row."""
    (row,) = kernel.bench_syncs(torch.device("cpu"), 8)
    assert row.section == "syncs" and row.reference > 0
    assert row.value < row.reference, row.note  # measured: see benchmarks/RESULTS.md


def test_throughput_section_runs_rows_through_real_submissions(tmp_path):
    rows = pipeline.bench_throughput(
        torch.device("cpu"),
        "quick",
        2,
        [pipeline.Throughput("2 processes", processes=2)],
        iterations=3,
        griffin_lim_iters=2,
        max_seconds=1.0,
    )
    assert [r.case for r in rows] == [f"quick: {pipeline.TODAY.label}", "quick: 2 processes"]
    assert all(r.value > 0 for r in rows) and rows[1].ratio == rows[1].value / rows[0].value


def test_the_collect_section_builds_the_study_size_asked_for(tmp_path):
    out = tmp_path / "bench"
    assert (
        bench.main(["--only", "collect", "--collect-rows", "40", "--device", "cpu", "--out", str(out)]) == 0
    )
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["section"] for r in rows] == ["collect"] * 3
    assert all("40 rows" in r["case"] for r in rows) and all(r["ratio"] > 0 for r in rows)


def test_the_accounting_section_times_the_ledger_inside_real_rows():
    """bench section ``cost``, its first half: real quick rows with the ledger and with it switched
    off; the calls it counts are the ledger's (enter, device, optimising on and off, leave)."""
    from benchmarks import accounting

    accounting.TimedLedger.calls = 0
    inside, ab = accounting.bench_accounting_overhead(torch.device("cpu"), 1)
    assert accounting.TimedLedger.calls == 5
    assert inside.section == ab.section == "cost" and inside.value > 0 and ab.ratio > 0


def test_aims_sdk_floor_times_its_runs_in_a_process_that_ends():
    """The export section's Aim reference: a run of Aim's SDK, empty and with a trace (the child
    process exits: Aim's exit-time flush of its removed scratch repository would wait for ever)."""
    import pytest

    pytest.importorskip("aim")
    from benchmarks.exporting import aim_sdk_floor

    floor = aim_sdk_floor(steps=5, runs=2)
    assert set(floor) == {"empty", "trace"} and all(seconds > 0 for seconds in floor.values())
