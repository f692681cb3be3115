"""Nothing lost: hostile inputs, atomic and concurrent collects, corrupt records, local requeue."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf

import batch_ast
from batch_ast import index as index_module
from batch_ast.backends import get_backend
from batch_ast.config import load_config
from batch_ast.dispatch import submit_arrays
from batch_ast.job import TransferJob
from batch_ast.loop import run_row
from batch_ast.manifest import load_manifest
from batch_ast.plan import make_plan
from batch_ast.runopts import Paused, RunOptions
from batch_ast.store import ResultsRoot

from .conftest import TINY, tiny_columns, write_manifest


def plan_rows(folder: Path, rows: list[str], results: ResultsRoot, **extra):
    head, vals = tiny_columns(**extra)
    m = write_manifest(folder, [f"{r},{vals}" for r in rows], header=f"content,style,{head}")
    return make_plan(load_manifest(m, load_config()), results, m).to_run


def run_one(folder: Path, content: str, style: str, tmp_path: Path, **extra) -> dict:
    results = ResultsRoot(tmp_path / "results")
    (spec,) = plan_rows(folder, [f"{content},{style}"], results, **extra)
    return run_row(spec, results)


# Unusual formats, generated here (a plain clone has no ../shared): (file name, rate, channels,
# seconds, peak, soundfile format, subtype).
FORMAT_CASES = {
    "stereo vorbis, 0.14 s": ("bell.oga", 44100, 2, 0.14, 0.5, "OGG", "VORBIS"),
    "8-bit PCM at 11.025 kHz": ("house_lo.wav", 11025, 1, 1.0, 0.5, "WAV", "PCM_U8"),
    "MS-ADPCM": ("adpcm.wav", 22050, 1, 1.0, 0.5, "WAV", "MS_ADPCM"),
    "AIFF": ("bell.aiff", 22050, 1, 1.0, 0.5, "AIFF", "PCM_16"),
    "48 kHz": ("front_left.wav", 48000, 2, 1.0, 0.5, "WAV", "PCM_16"),
    "MP3 with peaks above 1.0": ("loud.mp3", 22050, 2, 1.0, 1.6, "MP3", "MPEG_LAYER_III"),
}


def write_case(folder: Path, case: str) -> str:
    """A real encoded file of the case: a chirp with some noise, in the case's format."""
    name, rate, channels, seconds, peak, fmt, subtype = FORMAT_CASES[case]
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(0)
    mono = np.sin(2 * np.pi * (200 + 600 * t) * t) + 0.05 * rng.standard_normal(t.size)
    audio = np.stack([mono * peak / np.abs(mono).max()] * channels, axis=1).astype(np.float32)
    sf.write(folder / name, audio, rate, format=fmt, subtype=subtype)
    return name


@pytest.mark.parametrize("case", list(FORMAT_CASES))
def test_unusual_formats_rates_and_channels_transfer(case, audio_dir, tmp_path):
    name = write_case(audio_dir, case)
    record = run_one(audio_dir, name, "style.wav", tmp_path)
    assert record["status"] == "ok", record["error"]
    audio, sr = sf.read(tmp_path / "results" / record["output"])
    assert sr == TINY["sample_rate"] and np.isfinite(audio).all() and audio.ndim == 1


def test_paths_with_spaces_and_non_ascii(audio_dir, tmp_path):
    odd = audio_dir / "dossier été" / "ñandú canción.wav"
    odd.parent.mkdir()
    shutil.copy(audio_dir / "content.wav", odd)
    record = run_one(audio_dir, '"dossier été/ñandú canción.wav"', "style.wav", tmp_path)
    assert record["status"] == "ok", record["error"]
    assert record["output"] == f"runs/{record['id']}/output.wav"  # file names come from ids only


def test_audio_shorter_than_the_kernel_is_a_clear_failure(audio_dir, tmp_path):
    sf.write(audio_dir / "blip.wav", np.random.default_rng(0).normal(size=100).astype(np.float32), 8000)
    record = run_one(audio_dir, "blip.wav", "style.wav", tmp_path, kernel_size=11)
    assert record["status"] == "failed" and not record["retryable"]
    assert "content is 100 samples (2 STFT frames) long, shorter than kernel_size 11" in record["error"]


def test_zero_length_and_corrupt_audio_fail_with_the_file_named(audio_dir, tmp_path):
    sf.write(audio_dir / "empty.wav", np.zeros(0, dtype=np.float32), 8000)
    (audio_dir / "garbage.ogg").write_bytes(b"OggS" + bytes(500))
    record = run_one(audio_dir, "empty.wav", "style.wav", tmp_path)
    assert (
        record["status"] == "failed" and "empty.wav" in record["error"] and "zero length" in record["error"]
    )
    record = run_one(audio_dir, "content.wav", "garbage.ogg", tmp_path)
    assert record["status"] == "failed" and "garbage.ogg: cannot decode audio" in record["error"]


def test_long_audio_is_truncated_and_memory_budget_enforced(audio_dir, tmp_path):
    record = run_one(audio_dir, "content.wav", "style.wav", tmp_path, max_seconds=0.5)
    assert record["status"] == "ok" and record["content_seconds"] == pytest.approx(0.5)
    record = run_one(audio_dir, "content.wav", "style.wav", tmp_path, max_memory_gb=0.001)
    assert record["status"] == "failed" and not record["retryable"]
    assert "above max_memory_gb=0.001" in record["error"]


def test_transient_failure_is_retryable(audio_dir, tmp_path, monkeypatch):
    import batch_ast.transfer as transfer

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(transfer.StyleTransfer, "step", out_of_memory)
    record = run_one(audio_dir, "content.wav", "style.wav", tmp_path)
    assert record["status"] == "failed" and record["retryable"]
    plan = make_plan(
        load_manifest(audio_dir / "m.csv", load_config()),
        ResultsRoot(tmp_path / "results"),
        audio_dir / "m.csv",
        retry_failed=True,
    )
    assert len(plan.to_run) == 1  # --retry-failed picks transient failures up again


def finished_root(audio_dir: Path, tmp_path: Path) -> ResultsRoot:
    results = ResultsRoot(tmp_path / "results")
    for spec in plan_rows(audio_dir, ["content.wav,style.wav", "content2.wav,style.wav"], results):
        assert run_row(spec, results)["status"] == "ok"
    return results


def test_corrupt_and_truncated_records_are_reported_and_skipped(audio_dir, tmp_path):
    results = finished_root(audio_dir, tmp_path)
    (results.root / "runs" / "badbadbadbadbad1").mkdir(parents=True)
    (results.root / "runs" / "badbadbadbadbad1" / "record.json").write_text('{"id": "x", "status": "o')
    (results.root / "runs" / "badbadbadbadbad2").mkdir()
    (results.root / "runs" / "badbadbadbadbad2" / "record.json").write_text("[1, 2]")
    report = batch_ast.collect(results.root)
    assert report.rows == 4 and report.invalid == 2 and len(report.skipped) == 2
    assert all("indexed as invalid" in s for s in report.skipped)
    index = batch_ast.load_index(results.root).set_index("id")
    assert (index["status"] == "ok").sum() == 2
    assert "Unterminated string" in index.loc["badbadbadbadbad1", "error"]
    assert "not a record" in index.loc["badbadbadbadbad2", "error"]


def test_a_collect_killed_mid_write_leaves_the_previous_index(audio_dir, tmp_path, monkeypatch):
    results = finished_root(audio_dir, tmp_path)
    batch_ast.collect(results.root)
    before = results.index_path.read_bytes()

    def dies_half_way(table, where, **kwargs):
        where.write(b"PAR1 half a file")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(index_module.pq, "write_table", dies_half_way)
    results.collect_state_path.unlink()  # else nothing changed and the collect writes nothing
    with pytest.raises(KeyboardInterrupt):
        batch_ast.collect(results.root)
    assert results.index_path.read_bytes() == before
    assert not list(results.root.glob(".tmp-*"))
    assert len(batch_ast.load_index(results.root)) == 2


def test_collect_reads_only_what_changed_and_writes_nothing_when_nothing_did(audio_dir, tmp_path):
    results = finished_root(audio_dir, tmp_path)
    first = batch_ast.collect(results.root)
    assert first.reread == 2 and not first.unchanged
    written = (results.index_path.stat().st_ino, results.traces_path.stat().st_ino)
    again = batch_ast.collect(results.root)
    assert again.unchanged and again.reread == 0 and (again.rows, again.traces) == (first.rows, first.traces)
    assert (results.index_path.stat().st_ino, results.traces_path.stat().st_ino) == written  # not rewritten
    # a new result for one row (published by rename, as a job does): only that record is read
    rid = batch_ast.load_index(results.root)["id"].iloc[0]
    record = json.loads(results.record_path(rid).read_text())
    record["name"] = "renamed"
    tmp = results.run_dir(rid) / "new.json"
    tmp.write_text(json.dumps(record))
    tmp.replace(results.record_path(rid))
    third = batch_ast.collect(results.root)
    assert third.reread == 1 and not third.unchanged
    assert batch_ast.load_index(results.root).set_index("id").loc[rid, "name"] == "renamed"
    # a rerun of the other row (--force): a new record and a new trace; the first row is unchanged
    other = batch_ast.load_index(results.root)["id"].iloc[1]
    trace = pq.read_table(results.trace_path(other)).to_pandas()
    trace["total"] *= 2
    trace.to_parquet(results.run_dir(other) / "new.parquet")
    (results.run_dir(other) / "new.parquet").replace(results.trace_path(other))
    rerun = json.loads(results.record_path(other).read_text())
    rerun["final_total"] = float(trace["total"].iloc[-1])
    (results.run_dir(other) / "new.json").write_text(json.dumps(rerun))
    (results.run_dir(other) / "new.json").replace(results.record_path(other))
    assert batch_ast.collect(results.root).reread == 1
    incremental = batch_ast.load_index(results.root)
    incremental_traces = batch_ast.load_traces(results.root)
    assert (
        incremental_traces.loc[incremental_traces["id"] == other, "total"].tolist() == trace["total"].tolist()
    )
    # the same index and traces as a collect from scratch
    results.collect_state_path.unlink()
    assert batch_ast.collect(results.root).reread == 2
    pd.testing.assert_frame_equal(batch_ast.load_index(results.root), incremental)
    pd.testing.assert_frame_equal(batch_ast.load_traces(results.root), incremental_traces)
    # an index rewritten by someone else is not trusted: everything is read again
    results.index_path.write_bytes(results.index_path.read_bytes())
    assert batch_ast.collect(results.root).reread == 2


def _collect_many(root: str, n: int) -> None:
    for _ in range(n):
        batch_ast.collect(root)


def test_concurrent_collects_do_not_corrupt_the_index(audio_dir, tmp_path):
    results = finished_root(audio_dir, tmp_path)
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_collect_many, args=(str(results.root), 5)) for _ in range(3)]
    for w in workers:
        w.start()
    for _ in range(20):  # a reader during the collects never sees a partial file
        if results.index_path.exists():
            assert pq.read_table(results.index_path).num_rows == 2
        time.sleep(0.05)
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert len(batch_ast.load_index(results.root)) == 2


def test_local_preemption_resumes_a_packed_job_without_redoing_finished_rows(audio_dir, tmp_path):
    """submitit's local executor delivers the same USR2 preemption signal as SLURM."""
    results = ResultsRoot(tmp_path / "results")
    specs = plan_rows(
        audio_dir, ["content.wav,style.wav", "content2.wav,style.wav"], results,
        iterations=400, patience=100000, n_filters=128,
    )
    job = TransferJob(RunOptions(checkpoint_every_s=0.2))
    submission, (local_job,) = submit_arrays(
        specs, results, get_backend("local"), audio_dir / "m.csv", rows_per_job=2, job=job
    )
    first, second = specs
    # first row done, second under way: waited for as a state (a loaded machine is slow, never
    # wrong), failing only when the job ended without it or after an hour's safety bound
    deadline = time.monotonic() + 3600
    while not results.checkpoint_path(second.id).exists():
        assert not local_job.done() and time.monotonic() < deadline, "the second row never checkpointed"
        time.sleep(0.1)
    first_record = results.record_path(first.id).read_text()
    # What the local controller does at timeout and SLURM before preemption: USR2 to the task.
    children = subprocess.run(["pgrep", "-P", str(local_job.job_id)], capture_output=True, text=True)
    for pid in children.stdout.split():
        os.kill(int(pid), signal.SIGUSR2)
    local_job.result()
    done = json.loads(results.record_path(second.id).read_text())
    assert done["status"] == "ok" and done["resumes"] == 1 and done["resumed_from_iteration"] > 0
    assert results.record_path(first.id).read_text() == first_record  # not redone
    assert not results.checkpoint_path(second.id).exists()


def test_beat_segmented_row_runs_through_the_job(audio_dir, tmp_path):
    record = run_one(
        audio_dir, "content2.wav", "style.wav", tmp_path, rhythm="beats", kernel_size=3, iterations=3
    )
    assert record["status"] == "ok", record["error"]
    assert record["stop_reason"] == "max_iterations" and record["beat_segments"] >= 2
    assert record["content_bpm"] > 0 and record["style_bpm"] > 0 and len(record["style_beat_times"]) >= 2
    audio, _ = sf.read(tmp_path / "results" / record["output"])
    assert len(audio) == round(record["style_seconds"] * TINY["sample_rate"])  # the style's whole length
    batch_ast.collect(tmp_path / "results")
    index = batch_ast.load_index(tmp_path / "results")
    assert index["beat_segments"].iloc[0] == record["beat_segments"]


def test_resume_limit_fails_the_row_instead_of_looping(audio_dir, tmp_path):
    results = ResultsRoot(tmp_path / "results")
    (spec,) = plan_rows(audio_dir, ["content.wav,style.wav"], results, iterations=200, patience=100000)
    calls = iter(range(1000))
    with pytest.raises(Paused):  # interrupted after 3 iterations: checkpoint written
        run_row(spec, results, should_pause=lambda: next(calls) >= 3, options=RunOptions(max_retries=1))
    assert results.checkpoint_path(spec.id).exists()
    calls = iter(range(1000))
    with pytest.raises(Paused):  # first resume is allowed (and interrupted again)
        run_row(spec, results, should_pause=lambda: next(calls) >= 3, options=RunOptions(max_retries=1))
    record = run_row(spec, results, options=RunOptions(max_retries=1))  # a second resume is over the limit
    assert record["status"] == "failed" and not record["retryable"]
    assert "interrupted 2 times, more than max_retries=1" in record["error"]
    assert not results.checkpoint_path(spec.id).exists()


@pytest.mark.parametrize("preset", ["ulyanov-tf", "student-adamw", "tomczak-dafx18", "quick"])
def test_every_preset_runs_from_a_manifest(preset, audio_dir, tmp_path):
    """Each preset through the manifest and the job, shrunk by the row's own columns."""
    record = run_one(
        audio_dir, "content2.wav", "style.wav", tmp_path, preset=preset, kernel_size=3, iterations=3
    )
    assert record["status"] == "ok", record["error"]
    assert record["params"]["preset"] == preset
    assert record["params"]["activation"] == load_config().presets[preset].get("activation", "relu")


@pytest.mark.parametrize(("elapsed", "limit", "warning", "expected"), [
    (30, 600, 60, False),      # a 10-minute job signalled after 30 s: preempted (submitit: "timed-out")
    (539, 600, 60, True),      # the time limit's signal, 61 s early
    (430, 600, 60, True),      # within the slack before the limit: counted as the limit's, the safe side
    (2 * 3600, 3 * 3600, 60, False),  # 2 h into 3 h: preempted
    (10, 60, 20, True),        # a 1-minute limit: every signal is the limit's
    (30, 0, 0, None),          # no known limit (a job pickled by an older batch-ast): submitit judges
])
def test_a_warning_signal_is_the_time_limits_only_near_the_limit(elapsed, limit, warning, expected):
    from batch_ast.job import is_time_limit_warning

    assert is_time_limit_warning(elapsed, limit, warning) is expected


class FakeSignalHandler:
    """Stands in for submitit's SignalHandler: records what it was told about the time limit."""

    def __init__(self):
        self.judged = None

    def has_timed_out(self) -> bool:
        return True  # submitit's own rule for a limit of 10 minutes or less

    def checkpoint_and_try_requeue(self, signum, frame=None):
        self.judged = self.has_timed_out()


@pytest.mark.parametrize(("limit", "expected"), [(600.0, False), (0.0, True)])
def test_the_job_tells_submitit_whether_a_signal_was_the_time_limit(limit, expected, capsys):
    """A preemption 0 s into a 10-minute job must not spend a time-limit requeue (issue #26: a
    packed job preempted once per row was refused its requeue, as 'timed-out too many times');
    where the limit is not known, submitit's own judgement stands."""
    job = TransferJob(RunOptions(time_limit_s=limit, limit_warning_s=60.0))
    handler = FakeSignalHandler()
    job._submitit_handler, job._signal, job._started = (
        handler.checkpoint_and_try_requeue,
        signal.SIGUSR2,
        time.monotonic(),
    )
    job._hand_signal_to_submitit([])
    assert handler.judged is expected
    assert ("a preemption (not a time-limit requeue)" in capsys.readouterr().out) is (limit > 0)


def test_a_local_submission_from_another_host_is_not_judged_here(audio_dir, tmp_path, capsys):
    """A local job's id is a pid of the host that submitted it. Seen from another host (a shared
    root), its unfinished rows are pending there, not lost here, and cancel says where to cancel.
    (tests/test_multinode.py does the same across two nodes of the cluster.)"""
    import json

    from batch_ast.cli import main

    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    results = tmp_path / "results"
    assert main(["submit", str(m), "--results", str(results), "--executor", "local", "--quiet"]) == 0
    root = ResultsRoot(results)
    (path,) = root.submissions_dir.glob("*.json")
    sub = json.loads(path.read_text())
    assert sub["host"] == socket.gethostname()
    root.record_path(next(iter(sub["rows"]))).unlink()  # as if the row were still running
    capsys.readouterr()
    assert (
        main(["status", str(results)]) == 1 and "lost=1" in capsys.readouterr().out
    )  # here: its job is gone
    path.write_text(json.dumps({**sub, "host": "another-host"}))
    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "pending=1" in out and "its local jobs run on host another-host" in out
    assert main(["cancel", str(results)]) == 2
    assert "runs local jobs on host another-host: cancel it there" in capsys.readouterr().err


def test_traces_are_written_in_row_groups_and_a_traces_file_failing_part_way_is_not_reused(
        audio_dir, tmp_path, monkeypatch):
    """A collect writes its traces in row groups of about WRITE_SLICE points (a row group per row's
    trace made 20,000 of them, slow to read back); it copies an unchanged row's points from the last
    traces file a row group at a time; a file that fails part way through is not used: the points
    are read from the rows' files, and the index is the one a collect from scratch writes."""
    monkeypatch.setattr(index_module, "WRITE_SLICE", 7)
    results = finished_root(audio_dir, tmp_path)
    batch_ast.collect(results.root)
    points = batch_ast.load_traces(results.root)
    groups = pq.ParquetFile(results.traces_path).metadata
    sizes = [groups.row_group(i).num_rows for i in range(groups.num_row_groups)]
    assert len(sizes) > 1 and min(sizes[:-1]) >= 7 and sum(sizes) == len(points)  # none small but the last
    rid = points["id"].iloc[0]
    record = json.loads(results.record_path(rid).read_text())
    record["name"] = "renamed"
    (results.run_dir(rid) / "new.json").write_text(json.dumps(record))
    (results.run_dir(rid) / "new.json").replace(results.record_path(rid))  # the other row is reused
    reads = []
    real = pq.ParquetFile.read_row_group

    def fails_at_the_third(self, i, *args, **kwargs):
        reads.append(i)
        if i == 2:
            raise OSError("Input/output error")
        return real(self, i, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(pq.ParquetFile, "read_row_group", fails_at_the_third)
        report = batch_ast.collect(results.root)
    assert 2 in reads and report.reread == 1 and report.traces == len(points)
    again = batch_ast.load_traces(results.root)
    pd.testing.assert_frame_equal(again.sort_values(["id", "iteration"]).reset_index(drop=True),
                                  points.sort_values(["id", "iteration"]).reset_index(drop=True))
    incremental = batch_ast.load_index(results.root)
    results.collect_state_path.unlink()
    batch_ast.collect(results.root)
    pd.testing.assert_frame_equal(batch_ast.load_index(results.root), incremental)
