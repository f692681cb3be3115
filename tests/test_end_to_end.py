"""Real runs through submitit's local executor: WAVs, records, the Parquet index, skip, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

import batch_ast
from batch_ast.cli import main
from batch_ast.store import ResultsRoot

from .conftest import tiny_columns, write_manifest


def submit(manifest: Path, results: Path, *extra: str) -> int:
    return main(
        ["submit", str(manifest), "--results", str(results), "--executor", "local", "--quiet", *extra]
    )


def test_local_run_produces_wavs_records_and_index(audio_dir, tmp_path, capsys):
    head, vals = tiny_columns()
    m = write_manifest(
        audio_dir,
        [f"a,content.wav,style.wav,lbfgs,{vals}", f"b,content2.wav,style.wav,adam,{vals}"],
        header=f"id,content,style,optimizer,{head}",
    )
    results = tmp_path / "results"
    assert submit(m, results, "--workers", "2") == 0
    index = batch_ast.load_index(results)
    assert len(index) == 2 and set(index["status"]) == {"ok"}
    assert set(index["name"]) == {"a", "b"}
    assert index["iterations_run"].between(1, 12).all()
    assert pd.api.types.is_float_dtype(index["final_total"]) and index["final_total"].notna().all()
    assert str(index["finished_at"].dtype).startswith("datetime64")
    for rel in index["output"]:
        audio, sr = sf.read(results / rel)
        assert sr == 8000 and len(audio) == 12000 and abs(audio).max() > 0.01
    traces = batch_ast.load_traces(results)
    assert set(traces["id"]) == set(index["id"])
    assert list(traces.columns) == ["id", "iteration", "total", "content", "style", "evaluations"]
    # what each row cost: its evaluations are the sum of its trace's, one per Adam iteration
    per_row = traces.groupby("id")["evaluations"].sum()
    for _, row in index.iterrows():
        assert per_row[row["id"]] == row["evaluations"] >= row["iterations_run"]
        assert row["style_form"] in ("filters", "frames")
    adam = index.set_index("name").loc["b"]
    assert adam["evaluations"] == adam["iterations_run"]
    # traces with the hyperparameters joined, typed as in the index (no merge to write)
    joined = batch_ast.load_traces(results, params=["optimizer", "name", "n_filters"])
    assert list(joined.columns[-3:]) == ["optimizer", "name", "n_filters"] and len(joined) == len(traces)
    assert str(joined["optimizer"].dtype) == "category" and str(joined["n_filters"].dtype) == "Int64"
    assert set(joined.loc[joined["name"] == "b", "optimizer"]) == {"adam"}
    with pytest.raises(KeyError, match="no index column 'nope'"):
        batch_ast.load_traces(results, params=["nope"])
    record = json.loads((results / "runs" / index["id"][0] / "record.json").read_text())
    for key in (
        "content_sha256",
        "params",
        "time_optimize_s",
        "time_phase_s",
        "torch_version",
        "device_used",
    ):
        assert key in record


def test_resubmit_skips_done_rows_and_force_redoes(audio_dir, tmp_path, capsys):
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    results = tmp_path / "results"
    assert submit(m, results) == 0
    (rid,) = batch_ast.load_index(results)["id"]
    record = ResultsRoot(results).record_path(rid)
    stamp = record.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["submit", str(m), "--results", str(results), "--executor", "local"]) == 0
    out = capsys.readouterr().out
    assert "already done" in out and "nothing to run" in out
    assert record.stat().st_mtime_ns == stamp
    assert submit(m, results, "--force") == 0
    assert record.stat().st_mtime_ns != stamp


def test_row_ids_follow_content_not_names(audio_dir, tmp_path):
    head, vals = tiny_columns()
    (audio_dir / "renamed.wav").write_bytes((audio_dir / "content.wav").read_bytes())
    m = write_manifest(
        audio_dir,
        [f"content.wav,style.wav,{vals}", f"renamed.wav,style.wav,{vals}", f"content.wav,style.wav,{vals}"],
        header=f"content,style,{head}",
    )
    assert main(["submit", str(m), "--results", str(tmp_path / "r"), "--executor", "local", "--dry-run"]) == 0
    results = tmp_path / "r"
    assert submit(m, results) == 0
    assert len(batch_ast.load_index(results)) == 1  # three rows, one transfer


def test_failing_row_does_not_stop_the_others(audio_dir, tmp_path, capsys):
    head, vals = tiny_columns()
    (audio_dir / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    (audio_dir / "empty.wav").write_bytes(b"")
    m = write_manifest(
        audio_dir,
        [
            f"content.wav,style.wav,{vals}",
            f"corrupt.wav,style.wav,{vals}",
            f"content.wav,empty.wav,{vals}",
            f"content2.wav,style.wav,{vals}",
        ],
        header=f"content,style,{head}",
    )
    results = tmp_path / "results"
    assert submit(m, results) == 1  # non-zero: some rows failed
    index = batch_ast.load_index(results).set_index("row")
    assert index.loc[1, "status"] == "ok" and index.loc[4, "status"] == "ok"
    assert index.loc[2, "status"] == "failed" and "corrupt.wav" in index.loc[2, "error"]
    assert index.loc[3, "status"] == "failed" and "empty.wav" in index.loc[3, "error"]
    # failed rows are not retried by default, only with --retry-failed; the exit code still says
    # that rows of this manifest failed, and the message names them and the flag that reruns them
    capsys.readouterr()
    assert submit(m, results) == 1
    err = capsys.readouterr().err
    assert "2 row(s) of this manifest failed before" in err and "row 2 [" in err and "row 3 [" in err
    assert "--force reruns it" in err and "corrupt.wav" in err
    assert submit(m, results, "--retry-failed") == 1  # bad audio is not retryable
    assert submit(m, results, "--force") == 1


def test_debug_executor_runs_in_process(audio_dir, tmp_path):
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    results = tmp_path / "results"
    assert main(["submit", str(m), "--results", str(results), "--executor", "debug", "--quiet"]) == 0
    assert list(batch_ast.load_index(results)["status"]) == ["ok"]


def test_status_and_collect_commands(audio_dir, tmp_path, capsys):
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    results = tmp_path / "results"
    for command in ("status", "collect", "report", "cancel", "analyse"):  # a typo never makes a root
        assert main([command, str(results)]) == 2
        assert "does not exist" in capsys.readouterr().err and not results.exists()
    assert submit(m, results) == 0
    capsys.readouterr()
    assert main(["status", str(results), "--all"]) == 0
    assert "ok=1" in capsys.readouterr().out
    assert main(["collect", str(results), "--quiet"]) == 0
    assert "(1 rows)" in capsys.readouterr().out
    assert main(["cancel", str(results)]) == 0
    assert "nothing queued or running" in capsys.readouterr().out


def test_bad_manifest_stops_before_submitting(audio_dir, tmp_path, capsys):
    m = write_manifest(audio_dir, ["content.wav,missing.wav,-1"], header="content,style,lr")
    results = tmp_path / "results"
    assert main(["submit", str(m), "--results", str(results), "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert "row 1 (line 2): column 'style'" in err and "missing.wav: file not found" in err
    assert "column 'lr': must be a number > 0" in err
    assert not (results / "submissions").exists()
