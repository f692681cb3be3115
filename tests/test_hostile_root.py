"""A shared, group-writable results root is hostile input (issue #23): nothing planted in it runs,
kills, leaks, writes outside the root, blocks rows, or stops collect/status/submit for the others.

Each test plants what an attacker with write access to the root (or an unlucky colleague) could,
then uses batch-ast as its victim would. A "payload" is a pickle whose loading touches a marker."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import batch_ast
import batch_ast.record
import batch_ast.runopts
from batch_ast.claims import claim_path
from batch_ast.cli import main
from batch_ast.loop import run_row
from batch_ast.private import PrivateStateError, check_job_files
from batch_ast.record import record_dict
from batch_ast.store import ResultsRoot
from batch_ast.submissions import read_submissions, valid_submissions

from .conftest import tiny_columns, write_manifest
from .test_hostile import Payload, endless_manifest, plan_one

SAFETY_S = 3600  # bound on waits for states: never a deadline a loaded machine could miss


def cli(*args: str) -> int:
    return main([*args])


def wait_until(predicate, what: str, bound_s: float = SAFETY_S):
    t0 = time.monotonic()
    while not (value := predicate()):
        assert time.monotonic() - t0 < bound_s, f"never: {what}"
        time.sleep(0.2)
    return value


def ok_root(audio_dir: Path, tmp_path: Path) -> tuple[ResultsRoot, str]:
    """A results root with one finished row, as a colleague's study would have."""
    results = ResultsRoot(tmp_path / "results")
    spec, _ = plan_one(audio_dir, results)
    assert run_row(spec, results)["status"] == "ok"
    assert batch_ast.collect(results.root).rows == 1
    return results, spec.id


def submission_json(
    sid: str, rid: str, job_id: str, folder: str, log: str = "", executor: str = "local"
) -> dict:
    return {"submission_id": sid, "executor": executor, "created_at": "2026-11-30T00:00:00+00:00",
            "manifest": "/x.csv", "root": "/r", "submitit_folder": folder,
            "jobs": [{"job_id": job_id, "rows": [rid], "log": log}], "rows": {rid: 1}, "specs": {},
            "skipped": {}, "parameters": {}, "cancelled": False}


PLANTED_SID = "20261130T000000.000000-abcdef"


# --- 1. no pickle anyone else could write is ever unpickled -------------------------------------


def test_submitit_pickles_never_appear_in_the_shared_root_and_a_watcher_there_runs_nothing(
        audio_dir, tmp_path, private_state):
    """An attacker's watcher replaces every pickle that appears anywhere in the root; none appears
    there (submitit's files live in the user's private state folder), and the row is ok."""
    results = ResultsRoot(tmp_path / "results")
    results.root.mkdir()
    marker, stop, seen = tmp_path / "pwned", threading.Event(), []

    def watcher() -> None:
        while not stop.is_set():
            for pkl in results.root.rglob("*.pkl"):
                seen.append(pkl)
                with pkl.open("wb") as fh:
                    pickle.dump(Payload(marker), fh)
            time.sleep(0.01)

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    try:
        code = cli(
            "submit", str(m), "--results", str(results.root), "--executor", "local", "--wait", "--quiet"
        )
    finally:
        stop.set()
        thread.join()
    assert code == 0 and not seen and not marker.exists()
    (sub,) = valid_submissions(results)
    folder = Path(sub.submitit_folder)
    assert folder.parent.parent == private_state and folder.stat().st_mode & 0o077 == 0
    assert list(folder.rglob("*_submitted.pkl")) and list(folder.rglob("*_result.pkl"))


def _swap_when_it_appears(
    path_glob, folder: Path, marker: Path, stop: threading.Event, swapped: list
) -> None:
    """A watcher that replaces the first file matching ``path_glob`` under ``folder`` by a payload
    that another user owns (as root, who can chown)."""
    while not stop.is_set():
        for pkl in folder.rglob(path_glob):
            tmp = pkl.with_name(".planted")
            with tmp.open("wb") as fh:
                pickle.dump(Payload(marker), fh)
            os.chown(tmp, 65534, 65534)
            os.replace(tmp, pkl)
            swapped.append(pkl)
            return
        time.sleep(0.005)


def submit_under_a_swapping_watcher(pattern: str, private_state: Path, audio_dir: Path, tmp_path: Path,
                                    submit) -> tuple[object, list[Path], Path]:
    """Run ``submit(manifest, results)`` of one tiny row while a watcher swaps the first file
    matching ``pattern`` in the private state folder (``_swap_when_it_appears``). Returns what
    ``submit`` returned, the swapped files and the payload's marker."""
    marker, stop, swapped = tmp_path / "pwned", threading.Event(), []
    private_state.mkdir(mode=0o700, exist_ok=True)
    thread = threading.Thread(
        target=_swap_when_it_appears, args=(pattern, private_state, marker, stop, swapped), daemon=True
    )
    thread.start()
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    try:
        out = submit(m, tmp_path / "results")
    finally:
        stop.set()
        thread.join()
    return out, swapped, marker


def local_submit(m: Path, results: Path):
    return batch_ast.submit(m, results, executor="local", wait=True)


# Another user's file in the user's 0700 state folder: only root can make one (chown); an unprivileged
# user's own group-writable file there is private (nobody else can reach it), so these run as root.
@pytest.mark.root_only
def test_a_job_refuses_a_submitted_pickle_it_does_not_own(audio_dir, tmp_path, private_state):
    """Even in the private folder (a misconfigured state dir), a submitted pickle swapped the
    moment it appears, for one another user owns or the group may write, is refused unread."""
    sub, swapped, marker = submit_under_a_swapping_watcher(
        "*_submitted.pkl", private_state, audio_dir, tmp_path, local_submit
    )
    assert swapped and not marker.exists()
    log = next(Path(sub.record.submitit_folder).rglob("*_log.err")).read_text()
    assert "refusing to load the job's pickle" in log
    assert sub.status().counts["lost"] == 1


@pytest.mark.root_only
def test_the_submitter_refuses_a_result_pickle_it_does_not_own(audio_dir, tmp_path, private_state):
    sub, swapped, marker = submit_under_a_swapping_watcher("*_result.pkl", private_state, audio_dir, tmp_path,
                                                           local_submit)
    assert swapped and not marker.exists()
    assert any("owned by uid" in e or "writable by group" in e for e in sub.job_errors), sub.job_errors


def test_a_state_folder_others_may_write_is_refused_before_anything_is_submitted(
    audio_dir, tmp_path, monkeypatch, capsys, reachable_tmp
):
    shared = reachable_tmp / "shared-state"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit: anyone may rename what is inside
    monkeypatch.setenv("BATCH_AST_STATE_DIR", str(shared / "batch-ast"))
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    assert cli("submit", str(m), "--results", str(tmp_path / "r"), "--executor", "local") == 2
    err = capsys.readouterr().err
    assert "writable by group or others" in err and "BATCH_AST_STATE_DIR" in err
    assert not (tmp_path / "r" / "submissions").exists()


def test_check_job_files_refuses_links_and_foreign_folders(reachable_tmp):
    tmp_path = reachable_tmp
    folder = tmp_path / "state" / "submitit" / PLANTED_SID / "123"
    folder.mkdir(parents=True, mode=0o700)
    for part in (tmp_path / "state", tmp_path / "state" / "submitit", folder.parent):
        part.chmod(0o755)
    pkl = folder / "123_submitted.pkl"
    pkl.write_bytes(b"x")
    check_job_files(folder, [pkl])  # the user's own: accepted
    pkl.unlink()
    pkl.symlink_to(tmp_path / "elsewhere.pkl")
    with pytest.raises(PrivateStateError, match="symlink"):
        check_job_files(folder, [pkl])
    pkl.unlink()
    folder.chmod(0o770)
    with pytest.raises(PrivateStateError, match="writable by group"):
        check_job_files(folder, [])
    folder.parent.chmod(0o700)  # what keeps everyone else out at a group umask: a closed folder above
    check_job_files(folder, [])


# --- 2. cancel signals only this submission's own controller ------------------------------------


def test_a_planted_submission_cannot_make_cancel_kill_a_process(audio_dir, tmp_path):
    results, rid = ok_root(audio_dir, tmp_path)
    (results.root / "runs" / rid / "record.json").unlink()  # the row is "running" in the planted submission
    victim = subprocess.Popen(["sh", "-c", "sleep 3000 & wait"])
    try:
        wait_until(lambda: batch_ast.backends.child_pids(victim.pid), "the victim's child")
        children = batch_ast.backends.child_pids(victim.pid)
        planted = submission_json(PLANTED_SID, rid, str(victim.pid), str(results.submitit_dir))
        results.write_json(results.submissions_dir / f"{PLANTED_SID}.json", planted)
        assert cli("cancel", str(results.root), "--submission", PLANTED_SID) == 2  # not the user's own
        assert victim.poll() is None and all(batch_ast.backends.local_job_alive(str(c)) for c in children)
    finally:
        for pid in batch_ast.backends.child_pids(victim.pid):
            os.kill(pid, signal.SIGKILL)
        victim.kill()
        victim.wait()


# --- 3. no log outside the submission's own folder is read ---------------------------------------


@pytest.mark.parametrize("how", ["log-field", "folder-field", "symlink-in-legacy-folder"])
def test_a_planted_submission_does_not_leak_a_secret_file_into_the_index(how, audio_dir, tmp_path, capsys):
    results, rid = ok_root(audio_dir, tmp_path)
    (results.root / "runs" / rid / "record.json").unlink()
    secret = tmp_path / "home" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("line one\nSECRET-TOKEN-123\n")
    secret.chmod(0o600)
    job_id = "999999"  # no such process: the row is "lost", and status shows its log's tail
    folder, log = str(results.submitit_dir), str(secret)
    if how == "folder-field":
        folder = str(secret.parent)
        (secret.parent / job_id).mkdir()
        (secret.parent / job_id / f"{job_id}_0_log.err").symlink_to(secret)
    elif how == "symlink-in-legacy-folder":
        (results.submitit_dir / job_id).mkdir(parents=True)
        (results.submitit_dir / job_id / f"{job_id}_0_log.err").symlink_to(secret)
    results.write_json(results.submissions_dir / f"{PLANTED_SID}.json",
                       submission_json(PLANTED_SID, rid, job_id, folder, log))
    batch_ast.collect(results.root)
    index = batch_ast.load_index(results.root)
    assert index.loc[index["id"] == rid, "status"].iloc[0] == "lost"
    assert not index["error"].astype(str).str.contains("SECRET").any()
    cli("status", str(results.root), "--all")
    assert "SECRET" not in capsys.readouterr().out


# --- 4. nothing written outside the root, no record value becomes a path -------------------------


def test_portable_report_copies_only_inputs_whose_bytes_match_their_hash(audio_dir, tmp_path):
    results, rid = ok_root(audio_dir, tmp_path)
    record = record_dict(results, rid)
    evil = dict(record, content_sha256="../../../x-evil.sh")
    results.write_json(results.record_path(rid), evil)
    other = "0123456789abcdef"
    files = {key: f"runs/{other}/{name}" for key, name in batch_ast.record.ROW_FILES.items()}
    results.write_json(
        results.record_path(other), dict(record, id=other, content=str(audio_dir / "content2.wav"), **files)
    )
    assert cli("report", str(results.root), "--portable") == 0
    copied = sorted(p.name for p in (results.root / "report-inputs").iterdir())
    assert not any("evil" in name for name in copied) and not (tmp_path / "x-evil.sh").exists()
    assert not any(name.endswith("content2.wav") for name in copied)  # its bytes are not content.wav's hash
    assert any(name.endswith("style.wav") for name in copied)  # the style's bytes are its hash's
    index = batch_ast.load_index(results.root)
    assert index.set_index("id").loc[rid, "status"] == "invalid"


def test_planted_links_in_the_root_are_never_followed_to_write(audio_dir, tmp_path, capsys):
    results, rid = ok_root(audio_dir, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (results.root / "report-inputs").symlink_to(outside)
    (results.root / ".collect.lock").unlink(missing_ok=True)
    (results.root / ".collect.lock").symlink_to(outside / "created-by-collect")
    (results.root / ".claims.lock").symlink_to(outside / "created-by-submit")
    (results.root / "runs" / "aaaaaaaaaaaaaaaa").symlink_to(outside)
    results.write_json(results.record_path(rid), dict(record_dict(results, rid), figure_error="x"))
    assert batch_ast.collect(results.root).rows == 1
    assert cli("report", str(results.root), "--portable") == 0  # the link moved aside, never followed (H12)
    assert "moved aside" in capsys.readouterr().err and (results.root / "report-inputs.bad").is_symlink()
    head, vals = tiny_columns(seed=7)
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    assert cli("submit", str(m), "--results", str(results.root), "--executor", "debug", "--quiet") == 0
    assert list(outside.iterdir()) == []


def test_report_refuses_to_replace_a_data_file_it_did_not_write(audio_dir, tmp_path, capsys):
    results, _ = ok_root(audio_dir, tmp_path)
    notes = tmp_path / "notes.data.js"
    notes.write_text("my notes\n")
    assert cli("report", str(results.root), "-o", str(tmp_path / "notes.html")) == 2
    assert "not a batch-ast report's data" in capsys.readouterr().err and notes.read_text() == "my notes\n"
    assert cli("report", str(results.root), "-o", str(tmp_path / "study.html")) == 0
    assert cli("report", str(results.root), "-o", str(tmp_path / "study.html")) == 0  # its own: replaced


# --- 5. a planted claim blocks its row for minutes at most, and never --force --------------------


@pytest.mark.parametrize("claim", [
    {"submission_id": "x", "host": "elsewhere", "pid": 5, "created": 1e18},
    {"submission_id": "x", "host": "elsewhere", "pid": 5, "created": "abc"},
    [1],
    "folder",
])
def test_a_planted_or_malformed_claim_does_not_block_its_row(claim, audio_dir, tmp_path):
    results = ResultsRoot(tmp_path / "results")
    spec, m = plan_one(audio_dir, results)
    path = claim_path(results, spec.id)
    path.parent.mkdir(parents=True)
    if claim == "folder":
        path.mkdir()
    else:
        path.write_text(json.dumps(claim))
    sub = batch_ast.submit(m, results.root, executor="debug", wait=True)
    assert sub.status().counts["ok"] == 1


def test_a_live_looking_claim_blocks_until_force_takes_it_over(audio_dir, tmp_path):
    results = ResultsRoot(tmp_path / "results")
    spec, m = plan_one(audio_dir, results)
    path = claim_path(results, spec.id)
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps({"submission_id": "x", "host": socket.gethostname(), "pid": 1, "created": time.time()})
    )
    assert (
        batch_ast.submit(m, results.root, executor="debug", wait=True).record is None
    )  # within the grace period
    sub = batch_ast.submit(m, results.root, executor="debug", wait=True, force=True)
    assert sub.status().counts["ok"] == 1


# --- 6. a checkpoint of the right identity but the wrong types ------------------------------------


@pytest.mark.parametrize("tamper", ["iteration", "trace", "x", "last"])
def test_a_checkpoint_with_wrong_types_is_moved_aside(tamper, audio_dir, tmp_path):
    from batch_ast.runopts import Paused

    results = ResultsRoot(tmp_path / "results")
    spec, _ = plan_one(audio_dir, results, iterations=30, patience=1000)
    calls = iter(range(1000))
    with pytest.raises(Paused):
        run_row(spec, results, should_pause=lambda: next(calls) >= 5)
    ckpt = results.checkpoint_path(spec.id)
    state = torch.load(ckpt, weights_only=True)
    state.update({"iteration": {"iteration": "abc"}, "trace": {"trace": [["a", "b"]]},
                  "x": {"x": torch.zeros(3)}, "last": {"last": {"x": 1}}}[tamper])
    torch.save(state, ckpt)
    for _ in range(2):  # and again: a moved-aside checkpoint does not fail the row next time
        record = run_row(spec, results, options=batch_ast.runopts.RunOptions(submission_id="s"))
        assert record["status"] == "ok", record["error"]
    assert "checkpoint.pt.bad" in record_dict(results, spec.id).get("checkpoint_error", "") or \
        ckpt.with_name("checkpoint.pt.bad").exists()


# --- 7. ids come from the bytes: the hash cache is private, the job checks the inputs ------------


def test_a_hash_cache_planted_in_the_root_changes_no_id(audio_dir, tmp_path):
    results = ResultsRoot(tmp_path / "results")
    spec, m = plan_one(audio_dir, results)
    cache = results.root / ".cache" / "sha256.json"
    cache.parent.mkdir(parents=True)
    stamp = audio_dir / "content.wav"
    st = stamp.stat()
    cache.write_text(
        json.dumps(
            {"version": 1, "files": {str(stamp.resolve()): [st.st_size, st.st_mtime_ns, st.st_ino, "0" * 64]}}
        )
    )
    again, _ = plan_one(audio_dir, results)
    assert again.id == spec.id


def test_an_input_replaced_after_submit_fails_its_row_with_both_hashes(audio_dir, tmp_path):
    results = ResultsRoot(tmp_path / "results")
    spec, _ = plan_one(audio_dir, results)
    sf.write(
        audio_dir / "style.wav",
        np.random.default_rng(1).standard_normal(12000).astype(np.float32) * 0.1,
        8000,
    )
    record = run_row(spec, results)
    assert record["status"] == "failed" and not record["retryable"]
    assert "InputChangedError" in record["error"] and spec.style_sha256 in record["error"]


# --- 8. one planted file stops nothing but its own row ----------------------------------------


BAD_RECORDS = {
    "iterations_run-text": {"iterations_run": "abc"},
    "iterations_run-1e300": {"iterations_run": 1e300},
    "iterations_run-huge": {"iterations_run": 10**30},
    "row-text": {"row": "abc"},
    "id-number": {"id": 12345},
    "status-list": {"status": ["ok"]},
    "params-n_fft-text": {"params": "n_fft"},
    "params-list": {"params": [1, 2]},
    "output-outside": {"output": "../../etc/passwd"},
    "id-of-another-row": {"id": "ROW"},  # a duplicate id: it used to leave a ghost row (MergeError)
}


def test_bad_records_become_invalid_rows_and_the_others_are_indexed(audio_dir, tmp_path, capsys):
    results, rid = ok_root(audio_dir, tmp_path)
    good = record_dict(results, rid)
    planted = {}
    for i, (name, change) in enumerate(BAD_RECORDS.items()):
        bad_id = f"{i:016x}"
        change = dict(change)
        if change.get("params") == "n_fft":
            change["params"] = dict(good["params"], n_fft="abc")
        if change.get("id") == "ROW":
            change["id"] = rid
        data = {
            **good,
            "id": bad_id,
            "output": f"runs/{bad_id}/output.wav",
            "trace": f"runs/{bad_id}/trace.parquet",
            "spectrogram_png": f"runs/{bad_id}/spectrograms.png",
            "loss_png": f"runs/{bad_id}/losses.png",
            **change,
        }
        path = results.record_path(bad_id)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(data))
        planted[bad_id] = name
    deep = "f" * 16
    results.record_path(deep).parent.mkdir(parents=True)
    results.record_path(deep).write_text("[" * 100_000 + "]" * 100_000)
    fifo = "e" * 16
    results.run_dir(fifo).mkdir(parents=True)
    os.mkfifo(results.record_path(fifo))
    report = batch_ast.collect(results.root)
    index = batch_ast.load_index(results.root).set_index("id")
    assert index.loc[rid, "status"] == "ok"
    for bad_id in [*planted, deep, fifo]:
        assert index.loc[bad_id, "status"] == "invalid", planted.get(bad_id, bad_id)
        assert index.loc[bad_id, "error"], bad_id
    assert report.invalid == len(planted) + 2
    assert (
        "not a regular file" in index.loc[fifo, "error"] and "nested too deeply" in index.loc[deep, "error"]
    )
    # the status of plans and reports goes on too
    assert cli("report", str(results.root)) == 0
    assert batch_ast.load_traces(results.root, params=["seed"])["id"].eq(rid).all()


def test_a_record_whose_input_is_a_fifo_does_not_hang_collect(audio_dir, tmp_path):
    results, rid = ok_root(audio_dir, tmp_path)
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    record = dict(record_dict(results, rid), content=str(fifo), figure_error="missing")
    results.write_json(results.record_path(rid), record)
    report = batch_ast.collect(results.root)  # figures are redrawn from the inputs: not from a FIFO
    assert any("not a regular file" in s for s in report.skipped)


@pytest.mark.parametrize(
    "state",
    [
        '{"version": 1, "sources": "x"}',
        "[]",
        '{"version": 1}',
        '{"version": 1, "sources": {"records": [], "traces": {}, "submissions": {}}}',
    ],
)
def test_a_malformed_collect_state_means_a_full_collect(state, audio_dir, tmp_path):
    results, rid = ok_root(audio_dir, tmp_path)
    results.collect_state_path.write_text(state)
    assert batch_ast.collect(results.root).rows == 1
    assert batch_ast.collect(results.root).rows == 1


@pytest.mark.parametrize("change", [{"rows": []}, {"jobs": "abc"}, {"jobs": [{"rows": []}]}, {"rows": None},
                                    {"executor": "bogus"}, {"submission_id": "../../x"}])
def test_malformed_submissions_are_listed_not_fatal(change, audio_dir, tmp_path, capsys):
    results, rid = ok_root(audio_dir, tmp_path)
    data = {**submission_json(PLANTED_SID, rid, "999999", str(results.submitit_dir)), **change}
    (results.submissions_dir).mkdir(exist_ok=True)
    (results.submissions_dir / f"{PLANTED_SID}.json").write_text(json.dumps(data))
    subs, problems = read_submissions(results)
    assert subs == [] and len(problems) == 1 and PLANTED_SID in problems[0]
    assert batch_ast.collect(results.root).rows == 1
    assert cli("status", str(results.root)) == 0
    out = capsys.readouterr().out
    assert "not a valid submission" in out and PLANTED_SID in out
    assert cli("cancel", str(results.root)) == 1  # nothing to cancel: said, not a traceback


def test_a_second_submit_goes_on_beside_malformed_claims_and_submissions(audio_dir, tmp_path):
    results, rid = ok_root(audio_dir, tmp_path)
    (results.submissions_dir).mkdir(exist_ok=True)
    (results.submissions_dir / "junk.json").write_text('{"rows": null}')
    head, vals = tiny_columns(seed=3)
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    sub = batch_ast.submit(m, results.root, executor="debug", wait=True)
    assert sub.status().counts["ok"] == 1


def test_endless_job_is_still_cancelled_by_its_own_submitter(audio_dir, tmp_path):
    """The controller check (issue #23's item 2) still lets cancel stop a real local job."""
    m = endless_manifest(audio_dir)
    sub = batch_ast.submit(m, tmp_path / "results", executor="local")
    try:
        wait_until(lambda: sub.status().counts.get("running"), "the row running")
        assert sub.cancel()
        wait_until(lambda: not sub.backend.jobs_running(sub.jobs), "the job ended")
    finally:
        sub.cancel()
    assert sub.status().counts["cancelled"] == 1


def test_the_job_entry_point_refuses_a_folder_others_may_write(reachable_tmp):
    """``python -m batch_ast.job_entry FOLDER``, as submitit's command line runs it, on a job folder
    the group may write: it exits before submitit loads anything, without runpy's warning."""
    tmp_path = reachable_tmp
    folder = tmp_path / "1"
    folder.mkdir()
    folder.chmod(0o770)
    (folder / "1_submitted.pkl").write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
    env = {
        **os.environ,
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "1",
        "SUBMITIT_LOCAL_GLOBAL_RANK": "0",
        "SUBMITIT_LOCAL_LOCALID": "0",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NTASKS": "1",
    }
    done = subprocess.run([sys.executable, "-u", "-m", "batch_ast.job_entry", str(tmp_path / "%j")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 3 and "writable by group" in done.stderr, done.stderr
    assert "RuntimeWarning" not in done.stderr and not (tmp_path / "pwned").exists()


# --- 9. small inputs cannot make unbounded work ----------------------------------------------------


def test_a_study_that_multiplies_to_too_many_rows_is_refused_before_expanding(audio_dir, tmp_path, capsys):
    study = tmp_path / "study.yaml"
    grid = "\n".join(f"  {name}: [{', '.join(str(i + 1) for i in range(1000))}]"
                     for name in ("seed", "iterations", "n_filters", "kernel_size"))
    study.write_text(f"contents: {audio_dir}/content.wav\nstyles: {audio_dir}/style.wav\ngrid:\n{grid}\n")
    assert cli("submit", str(study), "--results", str(tmp_path / "r"), "--dry-run") == 2
    err = capsys.readouterr().err
    assert "1000000000000 rows" in err and "--max-rows" in err
    study.write_text(f"contents: {audio_dir}/content.wav\nstyles: {audio_dir}/style.wav\n"
                     "name: '{content:>1000000000}'\n")
    assert cli("submit", str(study), "--results", str(tmp_path / "r"), "--dry-run") == 2
    assert "field width or precision above 1000" in capsys.readouterr().err


def test_a_manifest_over_the_row_cap_is_refused_and_the_flag_raises_it(audio_dir, tmp_path, capsys):
    m = write_manifest(
        audio_dir, [f"content.wav,style.wav,{seed}" for seed in range(300)], header="content,style,seed"
    )
    assert cli("submit", str(m), "--results", str(tmp_path / "r"), "--dry-run", "--max-rows", "100") == 2
    assert "at least 101 rows, above the cap of 100 rows per submission" in capsys.readouterr().err
    assert cli("submit", str(m), "--results", str(tmp_path / "r"), "--dry-run", "--max-rows", "300") == 0
    out = capsys.readouterr().out
    assert "... and 100 more row(s) to run" in out and len(out.splitlines()) < 210


def test_nested_yaml_and_huge_csv_cells_are_one_line_errors(audio_dir, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("a: " + "[" * 8000 + "]" * 8000 + "\n")
    m = write_manifest(audio_dir, ["content.wav,style.wav"])
    assert cli("submit", str(m), "--config", str(config), "--dry-run") == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.splitlines()) == 1
    big = write_manifest(
        audio_dir, [f'content.wav,style.wav,"{"x" * 200_000}"'], header="content,style,id", name="big.csv"
    )
    assert cli("submit", str(big), "--results", str(tmp_path / "r"), "--dry-run") == 2
    err = capsys.readouterr().err
    assert "not CSV this reader accepts" in err and len(err.splitlines()) <= 3


# --- 10. the rest: one clear line, never a traceback ------------------------------------------------


@pytest.mark.parametrize(
    "line,problem",
    [
        ("python: [1, 2]", "python must be text"),
        ("mem_gb: lots", "mem_gb must be a number"),
        ("additional_parameters: 5", "additional_parameters must be a mapping"),
        ("python: /no/such/python", "not a program this machine can start"),
    ],
)
def test_profile_values_of_the_wrong_type_are_refused(line, problem, audio_dir, tmp_path, capsys):
    profile = tmp_path / "p.yaml"
    profile.write_text(line + "\n")
    m = write_manifest(audio_dir, ["content.wav,style.wav"])
    assert (
        cli(
            "submit",
            str(m),
            "--results",
            str(tmp_path / "r"),
            "--executor",
            "local",
            "--profile",
            str(profile),
            "--dry-run",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert problem in err and len(err.splitlines()) == 1


def test_metrics_that_are_not_numbers_are_refused(audio_dir, tmp_path, capsys):
    results, _ = ok_root(audio_dir, tmp_path)
    assert cli("analyse", str(results.root), "--metric", "name") == 2
    assert cli("report", str(results.root), "--metric", "status") == 2
    err = capsys.readouterr().err
    assert err.count("is not a numeric") == 2 and "Traceback" not in err


def test_api_arguments_of_the_wrong_type_are_clear(audio_dir, tmp_path, monkeypatch):
    from batch_ast import plan as plan_module
    from batch_ast.backends import BackendError
    from batch_ast.options import DispatchError

    m = write_manifest(audio_dir, ["content.wav,style.wav"])
    for call, match in ((lambda: batch_ast.submit(123), "manifest must be a path"),
                        (lambda: batch_ast.submit(None), "manifest must be a path"),
                        (lambda: batch_ast.prepare(m, results=None), "results must be a path"),
                        (lambda: batch_ast.prepare(m, config=123), "config must be a path"),
                        (lambda: batch_ast.load_index(None), "root must be a results folder"),
                        (lambda: batch_ast.load_traces(tmp_path, params="iterations"), "not a string"),
                        (lambda: batch_ast.prepare(m, tmp_path / "r", bogus=1), "unknown option")):
        with pytest.raises(TypeError, match=match):
            call()
    with pytest.raises(DispatchError, match="timeout_min must be an integer >= 1, not '5'"):
        batch_ast.prepare(m, tmp_path / "r", timeout_min="5")
    with pytest.raises(DispatchError, match="gpus must be an integer >= 0, not -3"):
        batch_ast.prepare(m, tmp_path / "r", gpus=-3)
    assert cli("submit", str(m), "--results", str(tmp_path / "r"), "--gpus", "-3", "--dry-run") == 2

    def no_hashing(*args, **kwargs):
        raise AssertionError("inputs were hashed before the executor was checked")

    monkeypatch.setattr(plan_module, "file_sha256", no_hashing)
    with pytest.raises(BackendError, match="unknown executor 'bogus'"):
        batch_ast.prepare(m, tmp_path / "r", executor="bogus")


def test_the_api_says_which_rows_failed_before(audio_dir, tmp_path):
    sf.write(audio_dir / "silence.wav", np.zeros(16000, dtype=np.float32), 8000)
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"silence.wav,style.wav,{vals}"], header=f"content,style,{head}")
    first = batch_ast.submit(m, tmp_path / "r", executor="debug", wait=True)
    assert first.status().counts["failed"] == 1 and not first.failed_before
    again = batch_ast.submit(m, tmp_path / "r", executor="debug", wait=True)
    assert again.record is None and list(again.failed_before.values())[0].startswith("SilentInputError")


def test_a_full_disk_error_names_the_file(audio_dir, tmp_path, monkeypatch, capsys):
    import errno

    from batch_ast import index as index_module

    results, _ = ok_root(audio_dir, tmp_path)
    results.collect_state_path.unlink()

    def full(table, where, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a real write: no file name

    monkeypatch.setattr(index_module.pq, "write_table", full)
    assert cli("collect", str(results.root)) == 2
    err = capsys.readouterr().err
    assert "index.parquet: No space left on device" in err


def test_long_paths_and_yaml_aliases_are_one_short_line(audio_dir, tmp_path, capsys):
    m = write_manifest(audio_dir, ["content.wav,style.wav"])
    assert cli("submit", str(m), "--config", "/x" * 5000, "--dry-run") == 2
    err = capsys.readouterr().err
    assert len(err) < 600 and len(err.splitlines()) == 1
    alias = tmp_path / "alias.yaml"
    alias.write_text("a: &x 1\nb: *x\n")
    assert cli("submit", str(m), "--config", str(alias), "--dry-run") == 2
    err = capsys.readouterr().err
    assert "aliases" in err and len(err.splitlines()) == 1


def test_expand_quotes_names_that_a_spreadsheet_would_run(audio_dir, tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(f"contents: {audio_dir}/content.wav\nstyles: {audio_dir}/style.wav\n"
                     "name: '=HYPERLINK(\"x\",\"{content}\")'\n")
    assert cli("expand", str(study)) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.startswith("\"'=HYPERLINK") or row.startswith("'=HYPERLINK")


def test_a_checkpoint_that_is_a_fifo_or_a_link_is_moved_aside_not_read(audio_dir, tmp_path):
    results = ResultsRoot(tmp_path / "results")
    spec, _ = plan_one(audio_dir, results)
    ckpt = results.checkpoint_path(spec.id)
    ckpt.parent.mkdir(parents=True)
    os.mkfifo(ckpt)  # a job that opened it would wait for a writer for good
    record = run_row(spec, results)
    assert record["status"] == "ok" and "not a regular file" in record["checkpoint_error"]
    ckpt.symlink_to(tmp_path / "elsewhere.pt")
    record = run_row(spec, results)
    assert record["status"] == "ok" and "symlink" in record["checkpoint_error"]


def test_status_shows_a_row_whose_record_is_invalid(audio_dir, tmp_path, capsys):
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    sub = batch_ast.submit(m, tmp_path / "results", executor="debug", wait=True)
    (rid,) = sub.record.rows
    path = sub.results.record_path(rid)
    path.write_text(json.dumps({**json.loads(path.read_text()), "iterations_run": "abc"}))
    assert sub.status().counts["invalid"] == 1
    assert cli("status", str(sub.results.root)) == 1
    out = capsys.readouterr().out
    assert "invalid=1" in out and "field 'iterations_run'" in out


def test_a_lost_row_of_a_pre_0_2_root_still_shows_its_log(audio_dir, tmp_path, capsys):
    """Roots written before the private state kept submitit's logs in ``<root>/submitit``: a
    lost row's log tail is still read from there (a regular file, no link)."""
    results, rid = ok_root(audio_dir, tmp_path)
    (results.root / "runs" / rid / "record.json").unlink()
    job_id = "999998"
    log = results.submitit_dir / job_id / f"{job_id}_0_log.err"
    log.parent.mkdir(parents=True)
    log.write_text(f"[row {rid}] start (manifest row 1)\nKilled: out of memory\n")
    old_id = "20261125T120000-aaaaaa"  # the older id form (whole seconds)
    results.write_json(results.submissions_dir / f"{old_id}.json",
                       submission_json(old_id, rid, job_id, str(results.submitit_dir), log="anything"))
    assert cli("status", str(results.root)) == 1
    assert "Killed: out of memory" in capsys.readouterr().out
    batch_ast.collect(results.root)
    index = batch_ast.load_index(results.root).set_index("id")
    assert index.loc[rid, "status"] == "lost" and "out of memory" in index.loc[rid, "error"]


def test_the_inputs_of_one_submission_have_a_total_limit(audio_dir, tmp_path, monkeypatch, capsys):
    """The 4 GiB limit is per file; many files under it may still add up to hours of hashing."""
    for i in range(3):
        with (audio_dir / f"big{i}.wav").open("wb") as fh:
            fh.truncate(600 << 20)  # sparse: nothing is read before the refusal
    monkeypatch.setenv("BATCH_AST_MAX_TOTAL_INPUT_GB", "1")
    m = write_manifest(audio_dir, [f"big{i}.wav,style.wav" for i in range(3)])
    assert cli("submit", str(m), "--results", str(tmp_path / "r"), "--dry-run") == 2
    err = capsys.readouterr().err
    assert "4 distinct input files hold 1.8 GiB together, above the 1 GiB" in err


def test_a_link_planted_as_a_row_folder_is_moved_aside_and_the_row_runs(audio_dir, tmp_path):
    results = ResultsRoot(tmp_path / "results")
    spec, m = plan_one(audio_dir, results)
    outside = tmp_path / "outside"
    outside.mkdir()
    (results.root / "runs").mkdir(parents=True)
    results.run_dir(spec.id).symlink_to(outside)
    sub = batch_ast.submit(m, results.root, executor="debug", wait=True)
    assert sub.status().counts["ok"] == 1 and list(outside.iterdir()) == []
    assert results.run_dir(spec.id).is_dir() and not results.run_dir(spec.id).is_symlink()
    assert list((results.root / "runs").glob(f"{spec.id}.bad-*"))
