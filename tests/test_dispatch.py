"""Executor choice, profiles and packing (no cluster needed)."""

from __future__ import annotations

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


def test_example_profile_maps_to_valid_submitit_parameters(tmp_path):
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
