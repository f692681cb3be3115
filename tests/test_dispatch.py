"""Executor choice, profiles and packing (no cluster needed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from batch_ast import dispatch
from batch_ast.dispatch import (
    NON_SUBMITIT_KEYS,
    DispatchError,
    _make_executor,
    choose_executor,
    default_rows_per_job,
    load_profile,
    local_gpu_passthrough,
)

REPO = Path(__file__).resolve().parents[1]


def test_auto_falls_back_to_local_and_says_why(monkeypatch):
    monkeypatch.setattr(dispatch, "slurm_available", lambda: False)
    kind, why = choose_executor("auto")
    assert kind == "local" and "local executor" in why
    with pytest.raises(DispatchError, match="no SLURM controller answers"):
        choose_executor("slurm")
    monkeypatch.setattr(dispatch, "slurm_available", lambda: True)
    assert choose_executor("auto")[0] == "slurm"


def test_example_profile_maps_to_valid_submitit_parameters(tmp_path, monkeypatch):
    # submitit's SlurmExecutor wants an srun on PATH even to check names; where SLURM is not
    # installed (a GPU machine) a stand-in one does, since nothing is submitted here
    if not shutil.which("srun"):
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / "bin" / "srun").chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    params = load_profile(REPO / "slurm" / "profile.example.yaml")
    assert params["slurm_partition"] == "gpu" and params["slurm_array_parallelism"] == 50
    assert params["batch_rows"] == 4
    for key in NON_SUBMITIT_KEYS:  # batch-ast's own keys, taken out by the CLI
        params.pop(key)
    executor = _make_executor("slurm", tmp_path, params)  # submitit rejects unknown names
    assert executor.cluster == "slurm"


def test_bad_profiles_are_clear(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("partitoin: gpu\n")
    with pytest.raises(DispatchError, match="unknown profile key"):
        load_profile(bad)
    bad.write_text("- a\n")
    with pytest.raises(DispatchError, match="must be a YAML mapping"):
        load_profile(bad)


def test_default_packing():
    assert default_rows_per_job("slurm", 10, workers=1) == 1
    assert default_rows_per_job("local", 10, workers=1) == 10
    assert default_rows_per_job("local", 10, workers=3) == 4


def test_a_forced_rerun_does_not_count_the_previous_result(tmp_path):
    """--force / --retry-failed: until the row's new record is written, its old record (from an
    earlier submission) is not this submission's result; progress, --wait and exit codes see the
    row as in flight (here: its job left, so lost), then ok once it is rewritten."""
    from batch_ast.dispatch import Submission
    from batch_ast.status import submission_status
    from batch_ast.store import ResultsRoot, write_json_atomic

    results = ResultsRoot(tmp_path / "results")
    results.run_dir("abc").mkdir(parents=True)
    old, new = "20261125T120000-aaaaaa", "20261126T090000-000000"
    write_json_atomic(results.record_path("abc"), {"id": "abc", "status": "ok", "submission_id": old})
    jobs = [{"job_id": "1", "rows": ["abc"], "log": ""}]
    rerun = Submission(new, "debug", "", "m.csv", str(results.root), "", jobs=jobs, rows={"abc": 1})
    first = Submission(old, "debug", "", "m.csv", str(results.root), "", jobs=jobs, rows={"abc": 1})
    assert [r.state for r in submission_status(results, rerun).rows] == ["lost"]
    assert [r.state for r in submission_status(results, first).rows] == ["ok"]
    write_json_atomic(results.record_path("abc"), {"id": "abc", "status": "failed", "submission_id": new})
    assert [r.state for r in submission_status(results, rerun).rows] == ["failed"]
    assert [r.state for r in submission_status(results, first).rows] == ["failed"]  # a later result counts
    write_json_atomic(results.record_path("abc"), {"id": "abc", "status": "ok"})  # an older version's record
    assert [r.state for r in submission_status(results, rerun).rows] == ["ok"]


def test_local_jobs_see_the_submitters_gpus(tmp_path, monkeypatch):
    """submitit's local executor empties CUDA_VISIBLE_DEVICES unless GPUs are asked for (jobs on a
    GPU workstation ran on the CPU, found on an H100): without a gpus request a local job sees
    exactly the GPUs its submitter sees; an explicit gpus_per_node is the user's to set."""
    assert local_gpu_passthrough("1,3") == {"gpus_per_node": 2, "visible_gpus": (1, 3)}
    assert local_gpu_passthrough("") == {}
    with pytest.warns(UserWarning, match="UUID or MIG"):
        assert local_gpu_passthrough("GPU-6f1c2a9e") == {}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    seen = _make_executor("local", tmp_path / "a" / "%j", {}).submit(os.getenv, "CUDA_VISIBLE_DEVICES")
    assert seen.result() == "1,3"
    chosen = _make_executor("local", tmp_path / "b" / "%j", {"gpus_per_node": 1}).submit(
        os.getenv, "CUDA_VISIBLE_DEVICES")
    assert chosen.result() == "0"
