"""The benchmark command runs and writes its table (numbers are checked by people, never by tests)."""

from __future__ import annotations

import json

from batch_ast import bench


def test_step_flop_count():
    # conv forward + input gradient, Gram forward + both matmul gradients
    assert bench.step_flops(10, 15, 4, 6) == 2 * (2 * 10 * 6 * 4 * 10) + 3 * (2 * 4 * 4 * 10)


def test_quick_griffin_lim_section_writes_json_and_csv(tmp_path):
    out = tmp_path / "bench"
    assert bench.main(["--quick", "--only", "gl", "--device", "cpu", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["meta"]["device"] == "cpu" and data["meta"]["matmul_gflops"] > 0
    sections = [r["section"] for r in data["rows"]]
    assert sections == ["griffin_lim", "griffin_lim"]
    assert all(r["ratio"] > 0 for r in data["rows"])
    assert out.with_suffix(".csv").read_text().startswith("section,case,value")
