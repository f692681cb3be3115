"""What a researcher reads while and after a study runs: running rows' heartbeats, failures counted
by kind, the error_type and retryable columns, and the CLI's small courtesies (issue #25)."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

import batch_ast
from batch_ast.cli import main
from batch_ast.progress import (
    HEARTBEAT_EVERY_S,
    MIN_RATE_ITERATIONS,
    Heartbeat,
    Progress,
    duration,
    read_progress,
)
from batch_ast.status import WAITING, RowState, SubmissionStatus, format_status, submission_status
from batch_ast.store import ResultsRoot
from batch_ast.submissions import SubmissionRecord, cancelled_since

from .conftest import tiny_columns, write_manifest

# --- the heartbeat -------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_heartbeat_comes_at_the_first_iteration_then_at_most_every_30_s_with_speed_and_eta():
    clock = FakeClock()
    beat = Heartbeat(
        start_iteration=200, iterations=1200, host="n2", submission_id="s", clock=clock, wall=lambda: 5.0
    )
    clock.now += 20.0  # the first iteration, its optimiser warming up: no speed from it
    first = beat.beat(201, 12.5)
    assert first == Progress(201, 1200, 12.5, None, 5.0, "n2", "s")
    assert first.eta_s is None and "ETA" not in first.describe()
    clock.now += HEARTBEAT_EVERY_S - 1
    assert beat.beat(300, 11.0) is None  # too soon
    clock.now += 1
    second = beat.beat(351, float("nan"))  # speed since the first iteration, this process's only
    assert second is not None and second.loss is None and second.iterations_per_s == pytest.approx(150 / 30)
    assert second.eta_s == pytest.approx(849 / (150 / 30))
    assert not beat.log_due()  # a log line at most once a minute
    clock.now += 60
    assert beat.log_due() and not beat.log_due()


def test_no_speed_is_claimed_from_fewer_than_a_few_iterations():
    clock = FakeClock()
    beat = Heartbeat(start_iteration=0, iterations=100, host="", submission_id="s", clock=clock)
    beat.beat(1, 5.0)
    clock.now += HEARTBEAT_EVERY_S  # slow iterations: 4 in 30 s
    assert beat.beat(1 + MIN_RATE_ITERATIONS - 1, 4.0).iterations_per_s is None
    clock.now += HEARTBEAT_EVERY_S
    assert beat.beat(1 + MIN_RATE_ITERATIONS, 4.0).iterations_per_s == pytest.approx(MIN_RATE_ITERATIONS / 60)


def test_a_row_that_has_begun_says_so_before_its_first_iteration():
    p = Progress.starting(400, "n2", "s", wall=lambda: 7.0)
    assert p.stage == "starting" and p.updated == 7.0
    assert p.describe() == "starting (loading its inputs, building its network)"
    assert Progress.from_json(json.loads(json.dumps(p.to_json()))) == p
    older = {k: v for k, v in Progress(3, 10, 1.0, None, 1.0).to_json().items() if k != "stage"}
    assert Progress.from_json(older).stage == "optimising"  # a heartbeat of an older version
    with pytest.raises(ValueError, match="stage"):
        Progress.from_json({**p.to_json(), "stage": "done"})


def test_a_heartbeat_reads_as_one_line():
    p = Progress(1200, 4000, 123.456, 35.0, 1000.0, "n2", "s")
    assert p.describe() == "iteration 1200/4000 (30%), loss 123.5, 35 it/s, ETA ≤ 1m20s"
    assert p.describe(now=1012.0).endswith("(12s ago)")
    assert [duration(s) for s in (3, 80, 7500)] == ["3s", "1m20s", "2h05m"]


@pytest.mark.parametrize(
    "data",
    [
        [1, 2],
        {"iteration": -1, "iterations": 10, "updated": 1.0},
        {"iteration": True, "iterations": 10, "updated": 1.0},
        {"iteration": 1, "iterations": 10},
        {"iteration": 1, "iterations": 10, "updated": float("inf")},
        {"iteration": 1, "iterations": 10, "updated": 1.0, "iterations_per_s": -3},
        {"iteration": 1, "iterations": 10, "updated": 1.0, "loss": "low"},
        {"iteration": 1, "iterations": 10, "updated": 1.0, "host": "x" * 400},
    ],
)
def test_a_planted_heartbeat_is_no_heartbeat(tmp_path, data):
    root = ResultsRoot(tmp_path)
    path = root.progress_path("0123456789abcdef")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    assert read_progress(root, "0123456789abcdef") is None
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.json")  # a link is never followed
    (tmp_path / "elsewhere.json").write_text(json.dumps(Progress(1, 2, 1.0, 1.0, 1.0).to_json()))
    assert read_progress(root, "0123456789abcdef") is None


def test_a_running_row_publishes_heartbeats_and_a_log_line_and_removes_them_when_done(
        audio_dir, tmp_path, monkeypatch, capsys):
    """Every iteration due (the intervals set to 0 here): the heartbeat file exists while the row
    optimises, the job log gets progress lines, and the published row leaves no heartbeat."""
    from batch_ast import progress as progress_module
    from batch_ast.row import RowRun

    monkeypatch.setattr(progress_module, "HEARTBEAT_EVERY_S", 0.0)
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 0.0)
    seen: list[Progress] = []
    original = RowRun.beat

    def spying_beat(self, progress, log):
        original(self, progress, log)
        found = read_progress(self.results, self.spec.id)
        assert found == progress  # on disk, valid, as written
        seen.append(found)

    monkeypatch.setattr(RowRun, "beat", spying_beat)
    head, vals = tiny_columns(iterations=12, patience=1000)
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    results = tmp_path / "results"
    assert main(["submit", str(m), "--results", str(results), "--executor", "debug", "--quiet"]) == 0
    assert seen[0].stage == "starting" and seen[0].iteration == 0  # as the row begins
    assert [p.iteration for p in seen[1:]] == list(range(1, 13)) and all(p.iterations == 12 for p in seen)
    assert "iteration 12/12 (100%)" in capsys.readouterr().err
    (rid,) = batch_ast.load_index(results)["id"]
    assert not ResultsRoot(results).progress_path(rid).exists()


# --- status --------------------------------------------------------------------------------------

def fake_status(rows: list[RowState]) -> SubmissionStatus:
    sub = SubmissionRecord(
        "20261201T000000.000000-abcdef",
        "slurm",
        "2026-12-01T00:00:00+00:00",
        "m.csv",
        "/r",
        "",
        jobs=[{"job_id": "32_0", "rows": [r.id for r in rows], "log": ""}],
        rows={r.id: r.row for r in rows},
    )
    return SubmissionStatus(sub, rows)


def test_status_counts_failures_by_kind_with_one_example_each_and_every_row_on_request():
    rows = [RowState(f"{i:016x}", i, "failed", "32_0", error=f"AudioError: content file {i}.wav is empty")
            for i in range(1, 121)]
    rows += [RowState("f" * 16, 200, "failed", "32_0", error="FileNotFoundError: style x.wav"),
             RowState("e" * 16, 201, "lost", "32_0"), RowState("d" * 16, 202, "ok", "32_0")]
    text = format_status(fake_status(rows))
    assert "job ids=32" in text and "jobs=" not in text
    assert "    AudioError: 120 row(s)" in text and "FileNotFoundError: 1 row(s)" in text
    assert "lost (its job left the queue without a record): 1 row(s)" in text
    assert text.count("e.g. row") == 3 and "e.g. row 1 [0000000000000001]" in text  # the first of each kind
    assert len(text.splitlines()) < 15  # not 4 lines per failure
    every = format_status(fake_status(rows), every_failure=True)
    assert every.count("] failed job 32_0") == 121 and every.count("] lost job") == 1


def test_status_shows_each_running_row_where_it_is(tmp_path):
    root = ResultsRoot(tmp_path)
    rows = [RowState(f"{i:016x}", i, "running", "32_0") for i in range(1, 15)]
    status = fake_status(rows)
    for r in rows[:12]:
        root.write_json(
            root.progress_path(r.id),
            Progress(
                100 * r.row, 4000, 1.5, 10.0, time.time(), "n2", status.submission.submission_id
            ).to_json(),
        )
    root.write_json(
        root.progress_path(rows[11].id), Progress(1, 4000, 1.5, 10.0, time.time(), "n2", "another").to_json()
    )
    status.rows.append(RowState("f" * 16, 20, "pending", "32_0", error=WAITING))
    text = format_status(status, results=root)
    assert (
        "running row 1 [0000000000000001] job 32_0 on n2: iteration 100/4000 (2%), loss 1.5, 10 it/s" in text
    )
    assert text.count("  running row") == 10 and "… and 1 more running row(s)" in text
    assert "3 running row(s) finishing (no heartbeat)" in text  # two without, one of another submission
    assert "1 pending row(s) waiting for their turn in running jobs" in text


def test_a_running_job_counts_as_running_only_the_rows_that_have_begun():
    """A local job, or a packed array task, runs its rows one (or K) at a time: the others wait."""
    rows = [RowState(f"{i:016x}", i, "running", "32_0") for i in range(1, 5)]
    sub = fake_status(rows).submission
    sub.jobs.append({"job_id": "33_0", "rows": ["e" * 16], "log": ""})
    sub.rows["e" * 16] = 9
    records = {rows[0].id: {"status": "ok", "submission_id": sub.submission_id}}
    queue = {"32_0": "running", "33_0": "pending"}
    status = submission_status(sub, records, queue, begun={rows[1].id})
    states = {r.id: (r.state, r.error) for r in status.rows}
    assert states[rows[0].id][0] == "ok" and states[rows[1].id] == ("running", "")
    assert states[rows[2].id] == states[rows[3].id] == ("pending", WAITING)
    assert states["e" * 16] == ("pending", "")  # its job is queued
    assert status.counts == {"ok": 1, "running": 1, "pending": 3}
    assert submission_status(sub, records, queue).counts["running"] == 3  # no heartbeats read: as before


def test_status_says_older_submissions_exist_and_takes_the_root_either_way(audio_dir, tmp_path, capsys):
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    results = tmp_path / "results"
    for extra in ([], ["--force"]):
        assert (
            main(["submit", str(m), "--results", str(results), "--executor", "debug", "--quiet", *extra]) == 0
        )
    capsys.readouterr()
    assert main(["status", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert (
        out.count("submission ") == 1 and "1 older submission(s) of this root not shown: status --all" in out
    )
    assert main(["status", str(results), "--all"]) == 0
    assert capsys.readouterr().out.count("submission ") == 2
    for command in (["collect", "--quiet"], ["report"], ["analyse"], ["cancel"]):
        assert main([command[0], "--results", str(results), *command[1:]]) == 0, command
    with pytest.raises(SystemExit) as exc:
        main(["status", str(results), "--results", str(tmp_path / "other")])
    assert exc.value.code == 2 and "two results roots" in capsys.readouterr().err


# --- the index's failure columns -----------------------------------------------------------------

def test_error_type_and_a_boolean_retryable_in_the_index_also_for_records_written_before(audio_dir, tmp_path):
    head, vals = tiny_columns()
    (audio_dir / "empty.wav").write_bytes(b"")
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}", f"empty.wav,style.wav,{vals}"],
                       header=f"content,style,{head}")
    results = tmp_path / "results"
    assert main(["submit", str(m), "--results", str(results), "--executor", "debug", "--quiet"]) == 1
    index = batch_ast.load_index(results).set_index("row")
    assert index.loc[2, "error_type"] == "AudioError" and pd.isna(index.loc[1, "error_type"])
    assert index["retryable"].dtype == "boolean"
    root = ResultsRoot(results)
    rid = index.loc[2, "id"]
    record = json.loads(root.record_path(rid).read_text())
    del record["error_type"]  # as batch-ast before 0.3 wrote it
    root.record_path(rid).write_text(json.dumps(record))
    batch_ast.collect(results)
    assert batch_ast.load_index(results).set_index("row").loc[2, "error_type"] == "AudioError"


# --- small courtesies ----------------------------------------------------------------------------

def test_a_misspelt_column_gets_a_suggestion(audio_dir, tmp_path, capsys):
    m = write_manifest(audio_dir, ["content.wav,style.wav"], header="contnet,style")
    assert main(["submit", str(m), "--results", str(tmp_path / "r"), "--executor", "debug", "--dry-run"]) == 2
    assert "unknown column 'contnet' (did you mean 'content'?" in capsys.readouterr().err


def test_the_plan_lists_the_settings_that_vary(audio_dir, tmp_path, capsys):
    head, vals = tiny_columns()
    rows = [f"content.wav,style.wav,{cw},{vals}" for cw in (0.1, 1.0, 10.0)]
    m = write_manifest(audio_dir, rows, header=f"content,style,content_weight,{head}")
    assert main(["submit", str(m), "--results", str(tmp_path / "r"), "--executor", "debug", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "content_weight=0.1" in out and "content_weight=10.0" in out and "optimizer=" not in out


def test_a_submission_shows_as_one_line(audio_dir, tmp_path):
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    sub = batch_ast.submit(m, tmp_path / "r", executor="debug")
    text = repr(sub)
    assert (
        text.startswith("Submission(id=") and "executor='debug', rows=1, jobs=1" in text and len(text) < 300
    )


def test_executor_slurm_without_a_controller_points_to_the_local_executor(
    audio_dir, tmp_path, monkeypatch, capsys
):
    from batch_ast.backends import SlurmBackend

    monkeypatch.setattr(SlurmBackend, "available", lambda self, *a, **k: False)
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    assert main(["submit", str(m), "--results", str(tmp_path / "r"), "--executor", "slurm"]) == 2
    assert (
        "no SLURM controller answers" in (err := capsys.readouterr().err)
        and "--executor local runs the rows" in err
    )


def test_analyse_names_the_metric_it_shows(audio_dir, tmp_path, capsys):
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{cw},{vals}" for cw in (0.5, 2.0)],
                       header=f"content,style,content_weight,{head}")
    results = tmp_path / "results"
    assert main(["submit", str(m), "--results", str(results), "--executor", "debug", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["analyse", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("style_distance_heldout of the ok rows by config")
    assert "config: content_weight (the varying hyperparameters but seed)" in out
    assert "content_weight=0.5" in out and "content_weight=2" in out


def test_a_local_job_running_its_rows_one_at_a_time_shows_one_running_and_cancel_frees_the_rest(
        audio_dir, tmp_path, capsys, monkeypatch):
    """The issue's study: `progress: running=12` while a local job ran its rows one at a time."""
    from .test_hostile_root import wait_until

    head, vals = tiny_columns(iterations=100_000, patience=1_000_000, n_filters=32)  # until cancelled
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{seed},{vals}" for seed in (1, 2, 3)],
                       header=f"content,style,seed,{head}")
    results = tmp_path / "results"
    sub = batch_ast.submit(m, results, executor="local", rows_per_job=3)
    try:
        assert len(sub.record.jobs) == 1
        wait_until(lambda: sub.status().counts.get("running"), "a row running")
        assert sub.status().counts == {"running": 1, "pending": 2}
        reads = []  # the submission file is read again for a cancel only when it changed
        with monkeypatch.context() as patched:
            patched.setattr("batch_ast.api.cancelled_since", lambda *args: reads.append(args) or False)
            sub.status()
        assert not reads
        assert main(["status", str(results)]) == 0
        out = capsys.readouterr().out
        assert "pending=2  running=1" in out
        assert "2 pending row(s) waiting for their turn in running jobs" in out
        assert out.count("  running row ") == 1
        assert main(["cancel", str(results)]) == 0
        out = capsys.readouterr().out
        assert f"cancelled 1 job(s): {sub.record.jobs[0]['job_id']}" in out
        assert "released the claims of 2 row(s) that had not begun; 1 running row(s) stopped" in out
        assert len(list((results / "runs").glob("*/claim.json"))) <= 1  # the stopped row's, until it lapses
    finally:
        sub.cancel()
    wait_until(lambda: not sub.backend.jobs_running(sub.jobs), "the job ended")
    # the CLI's cancel (another process, as far as `sub` knows) is read from the submission's file,
    # and only from the user's own: in a shared root anyone may have replaced it
    with monkeypatch.context() as patched:
        patched.setattr(SubmissionRecord, "mine", property(lambda self: False))
        assert not cancelled_since(sub.results, sub.record)
    assert cancelled_since(sub.results, sub.record)
    assert sub.status().counts["cancelled"] == 3, sub.status().counts
