"""Integration tests against the real SLURM cluster started by slurm/start.sh (`make test` starts
three nodes).

They skip with a reason where no cluster answers, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import batch_ast
from batch_ast.backends import get_backend
from batch_ast.cli import main
from batch_ast.record import record_dict
from batch_ast.store import ResultsRoot
from batch_ast.submissions import valid_submissions

from .conftest import LONG, TINY, long_rows, tiny_columns, uninterrupted_wav, write_manifest

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if not get_backend("slurm").available():
        reason = "no SLURM controller answers: run `sudo bash slurm/start.sh` first"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def cancel_own_jobs(private_state):
    """After each test, cancel the jobs it left queued — its own only: those whose sbatch script
    lies in this test's private state folder (the cluster may be shared with other work)."""
    yield
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %o"], capture_output=True, text=True)
    mine = [line.split()[0] for line in out.stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1].startswith(str(private_state) + os.sep)]
    if mine:
        subprocess.run(["scancel", *mine], capture_output=True)


# Tests wait on states, not on a guess of machine speed: a wait fails when what it waits for can no
# longer happen (the jobs left the queue without it), or after a bound far above what even a slow,
# loaded machine needs (SAFETY_S); never because the machine was slow.
SAFETY_S = 3600


def wait_for(predicate, timeout_s: float = SAFETY_S, every_s: float = 1.0, what: str = "condition",
             jobs: str = ""):
    """Poll ``predicate`` until it is truthy. With ``jobs`` (an array job id), fail as soon as none
    of its tasks is queued any more and the predicate is still false (after a short grace for the
    last files to appear); ``timeout_s`` is only a safety bound."""
    deadline = time.monotonic() + timeout_s
    gone_since = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if jobs:
            queued = any(i.split("_")[0] == jobs.split("_")[0] for i in squeue_ids())
            gone_since = None if queued else (gone_since or time.monotonic())
            if gone_since and time.monotonic() - gone_since > 30:
                raise AssertionError(f"job {jobs} left the queue without {what}")
        time.sleep(every_s)
    raise AssertionError(f"no {what} after the {timeout_s}s safety bound")


def iterations_per_second(audio_dir: Path, n_filters: int = 128) -> float:
    """This machine's sustained speed on the long rows (same settings and inputs), measured now, so
    tests size their work from it. Timed after 300 warm-up iterations: once the tiny transfer has
    converged, L-BFGS's line search takes more evaluations per iteration (measured: 1.2 in the
    first 60, 6 after a few hundred), so the first iterations overstate a long row's speed."""
    import torch

    from batch_ast.audio import load_audio
    from batch_ast.config import load_config
    from batch_ast.features import log_spectrogram
    from batch_ast.transfer import StyleTransfer

    p = load_config().params(TINY, n_filters=n_filters, iterations=10**6, patience=100000)
    specs = [
        log_spectrogram(torch.from_numpy(load_audio(audio_dir / name, p.sample_rate, p.max_seconds)),
                        p.n_fft, p.hop_length)
        for name in ("content.wav", "style.wav")
    ]
    transfer = StyleTransfer(*specs, p, torch.device("cpu"))
    for _ in range(300):
        transfer.step()
    t0 = time.perf_counter()
    for _ in range(300):
        transfer.step()
    return 300 / (time.perf_counter() - t0)


def squeue_ids() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def slurm_submit(manifest: Path, results: Path, *extra: str) -> int:
    return main(
        ["submit", str(manifest), "--results", str(results), "--executor", "slurm", "--quiet", *extra]
    )


def submitit_folders(results: Path) -> list[Path]:
    """The submissions' submitit folders (in the user's private state, not the results root)."""
    return [Path(s.submitit_folder) for s in valid_submissions(ResultsRoot(results))]


def sbatch_script(results: Path) -> str:
    scripts = [p for folder in submitit_folders(results)
               for p in (*sorted(folder.glob("*/*submission.sh")), *sorted(folder.glob("*submission.sh")))]
    assert scripts, "submitit wrote no sbatch script"
    return scripts[-1].read_text()


def test_job_array_with_fake_gpu_throttling_and_a_failing_row(audio_dir, tmp_path, capsys):
    head, vals = tiny_columns()
    (audio_dir / "broken.mp3").write_bytes(b"ID3" + os.urandom(2000))
    m = write_manifest(
        audio_dir,
        [
            f"content.wav,style.wav,1,{vals}",
            f"content2.wav,style.wav,2,{vals}",
            f"broken.mp3,style.wav,3,{vals}",
            f"content.wav,content2.wav,4,{vals}",
        ],
        header=f"content,style,seed,{head}",
    )
    results = tmp_path / "results"
    code = slurm_submit(
        m, results, "--wait", "--gpus", "1", "--array-parallelism", "2", "--timeout-min", "10"
    )
    assert code == 1  # one row failed
    script = sbatch_script(results)
    assert re.search(r"#SBATCH --array=0-3%2", script), script
    assert "#SBATCH --gpus-per-node=1" in script
    index = batch_ast.load_index(results).set_index("row")
    assert list(index.loc[[1, 2, 4], "status"]) == ["ok", "ok", "ok"]
    assert index.loc[3, "status"] == "failed" and "broken.mp3" in index.loc[3, "error"]
    assert not index.loc[3, "retryable"]
    (sub,) = valid_submissions(ResultsRoot(results))
    array_id = sub.array_job_id
    assert set(index["slurm_job_id"]) == {array_id}
    assert set(index["slurm_array_task_id"]) == {"0", "1", "2", "3"}
    capsys.readouterr()
    assert main(["status", str(results)]) == 1  # non-zero: a row failed
    out = capsys.readouterr().out
    assert "ok=3" in out and "failed=1" in out and "broken.mp3" in out


def test_packing_and_per_row_resources(audio_dir, tmp_path):
    """Four rows, two per array task; rows 3-4 ask for a GPU in their own column, so they form a
    second array with its own resource request."""
    head, vals = tiny_columns()
    m = write_manifest(
        audio_dir,
        [f"content.wav,style.wav,{seed},{'1' if seed >= 2 else ''},{vals}" for seed in range(4)],
        header=f"content,style,seed,gpus,{head}",
    )
    results = tmp_path / "results"
    assert slurm_submit(m, results, "--wait", "--rows-per-job", "2") == 0
    index = batch_ast.load_index(results)
    assert len(index) == 4 and set(index["status"]) == {"ok"}
    assert index.groupby("slurm_job_id").size().tolist() == [2, 2]  # two arrays, one task of 2 rows each
    (sub,) = valid_submissions(ResultsRoot(results))
    assert [len(j["rows"]) for j in sub.jobs] == [2, 2]
    scripts = [p for folder in submitit_folders(results) for p in sorted(folder.glob("*/*submission.sh"))]
    gpu_requests = ["#SBATCH --gpus-per-node=1" in p.read_text() for p in scripts]
    assert sorted(gpu_requests) == [False, True], gpu_requests


def test_arrays_are_split_at_the_sites_max_array_size(audio_dir, tmp_path):
    head, vals = tiny_columns()
    m = write_manifest(
        audio_dir,
        [f"content.wav,style.wav,{seed},{vals}" for seed in range(3)],
        header=f"content,style,seed,{head}",
    )
    results = tmp_path / "results"
    assert slurm_submit(m, results, "--wait", "--max-array-size", "2") == 0
    (sub,) = valid_submissions(ResultsRoot(results))
    assert len(sub.array_job_id.split(",")) == 2  # 3 tasks -> arrays of 2 and 1
    index = batch_ast.load_index(results)
    assert len(index) == 3 and set(index["status"]) == {"ok"}


def test_detached_status_collect_while_running_and_cancel(audio_dir, tmp_path, capsys):
    m = long_rows(audio_dir, 3)
    results = tmp_path / "results"
    assert slurm_submit(m, results, "--array-parallelism", "1") == 0  # detached by default
    (sub,) = valid_submissions(ResultsRoot(results))
    assert sub.executor == "slurm" and sub.array_job_id
    wait_for(lambda: any(i.startswith(sub.array_job_id + "_") for i in squeue_ids()), what="queue")

    def running_status():
        capsys.readouterr()
        main(["status", str(results)])
        out = capsys.readouterr().out
        return out if "running=1" in out else None

    out = wait_for(running_status, what="a running task", jobs=sub.array_job_id)
    assert "pending=2" in out
    assert main(["collect", str(results)]) == 0  # collecting while jobs run is fine
    capsys.readouterr()
    assert main(["cancel", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"cancelled 3 array task(s) of 1 array(s): {sub.array_job_id} (3 tasks)" in out, out
    # the claims of the two rows that had not begun are released at once; the running row's
    # lapses as its task leaves the queue
    assert "released the claims of 2 row(s) that had not begun; 1 running row(s) stopped" in out, out
    claims = sorted(p.parent.name for p in (results / "runs").glob("*/claim.json"))
    assert len(claims) == 1
    wait_for(lambda: not any(i.startswith(sub.array_job_id + "_") for i in squeue_ids()), what="cancel")
    main(["status", str(results)])
    out = capsys.readouterr().out
    assert "cancelled=3" in out and "running=0" in out and "pending=0" in out


def test_scancel_of_one_array_task_leaves_the_others(audio_dir, tmp_path, capsys):
    head, vals = tiny_columns(iterations=300, patience=100000)
    m = write_manifest(
        audio_dir,
        [f"content.wav,style.wav,{s},{vals}" for s in range(3)],
        header=f"content,style,seed,{head}",
    )
    results = tmp_path / "results"
    assert slurm_submit(m, results, "--array-parallelism", "1") == 0
    (sub,) = valid_submissions(ResultsRoot(results))
    victim = sub.jobs[2]["job_id"]
    subprocess.run(["scancel", victim], check=True)
    wait_for(lambda: not any(i.startswith(sub.array_job_id + "_") for i in squeue_ids()), what="array end")
    assert main(["collect", str(results)]) == 0
    index = batch_ast.load_index(results)
    # every submitted row is in the index: the cancelled task's row as lost, with its settings
    assert len(index) == 3 and sorted(index["status"].astype(str)) == ["lost", "ok", "ok"]
    assert index.loc[index["status"] == "lost", "iterations"].tolist() == [300]
    capsys.readouterr()
    assert main(["status", str(results)]) == 1
    out = capsys.readouterr().out
    assert "ok=2" in out and "lost=1" in out and victim in out


def submit_long_row(audio_dir: Path, results: Path, *extra: str) -> tuple[str, str, Path]:
    m = long_rows(audio_dir, 1, iterations=LONG)
    assert slurm_submit(m, results, *extra) == 0
    (sub,) = valid_submissions(ResultsRoot(results))
    return sub.jobs[0]["job_id"], sub.jobs[0]["rows"][0], Path(sub.jobs[0]["log"])


def test_preemption_signal_checkpoints_requeues_and_resumes_to_the_same_result(
    audio_dir, tmp_path, reference_wav
):
    """USR2 long before the time limit: a preemption. With a 10-minute limit submitit would count
    it as a time-limit requeue (it does so from 10 minutes before the limit, so from the start
    here): the job tells it otherwise, and the requeue leaves the time-limit budget untouched."""
    from submitit.core.utils import DelayedSubmission

    results = tmp_path / "results"
    job_id, rid, log = submit_long_row(audio_dir, results, "--checkpoint-every", "0.5", "--timeout-min", "10",
                                       "--max-retries", "1")
    ckpt = ResultsRoot(results).checkpoint_path(rid)
    wait_for(ckpt.exists, every_s=0.2, what="a first checkpoint", jobs=job_id)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what SLURM sends before preemption
    record = wait_for(lambda: record_dict(ResultsRoot(results), rid), what="the record", jobs=job_id)
    assert record["status"] == "ok", record.get("error")
    assert record["resumes"] >= 1 and record["resumed_from_iteration"] > 0
    assert record["slurm_restart_count"] >= 1
    assert not ckpt.exists()
    np.testing.assert_allclose(sf.read(results / record["output"])[0], reference_wav, atol=2e-3)
    text = log.read_text(errors="replace")
    assert "this job is preempted" in text and "this job is timed-out" not in text
    (pickled,) = Path(log).parent.glob("*_submitted.pkl")  # one job, one pickle (rewritten at requeue)
    assert DelayedSubmission.load(pickled)._timeout_countdown == 1  # max_retries: none spent


def test_hard_requeue_resumes_from_the_periodic_checkpoint(audio_dir, tmp_path):
    """scontrol requeue: SIGTERM, KillWait (5 s here), SIGKILL, no warning signal. The row must
    outlive that window, so it is longer than LONG; it resumes from its last periodic checkpoint
    to the same result as an uninterrupted run."""
    m = long_rows(audio_dir, 1, iterations=4 * LONG)
    results = tmp_path / "results"
    assert slurm_submit(m, results, "--checkpoint-every", "0.5") == 0
    (sub,) = valid_submissions(ResultsRoot(results))
    job_id, rid = sub.jobs[0]["job_id"], sub.jobs[0]["rows"][0]
    wait_for(
        ResultsRoot(results).checkpoint_path(rid).exists, every_s=0.2, what="a first checkpoint", jobs=job_id
    )
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    record = wait_for(lambda: record_dict(ResultsRoot(results), rid), what="the record", jobs=job_id)
    assert record["status"] == "ok", record.get("error")
    assert record["slurm_restart_count"] >= 1 and record["resumed_from_iteration"] > 0
    assert record["iterations_run"] == 4 * LONG
    reference = uninterrupted_wav(tmp_path / "reference", 4 * LONG)
    np.testing.assert_allclose(sf.read(results / record["output"])[0], reference, atol=2e-3)


def test_timeout_triggers_checkpoint_requeue_and_resume(audio_dir, tmp_path):
    """A row that needs more than its 1-minute limit must be signalled (USR2 20 s before the
    limit), checkpoint, requeue and resume, as often as it takes. Its length is sized from this
    machine's measured speed (~80 s of compute: two or three time slots of ~40 s), so a slow
    machine gets a shorter row, not a failed test; it relies on the limit, not on when exactly the
    signal lands (SLURM checks limits only every ~30 s). Requeues are allowed generously (100): a
    machine whose load rises after the measurement makes less progress per slot (issue #26 saw 20
    run out at load 2-8), and how many slots the row takes is not what this test checks; a resume
    that lost its progress would still fail, at the wait's safety bound."""
    iterations = max(200, int(80 * iterations_per_second(audio_dir)))
    results = tmp_path / "results"
    profile = tmp_path / "profile.yaml"
    profile.write_text("timeout_min: 1\nsignal_delay_s: 20\nmax_num_timeout: 100\n")
    m = long_rows(audio_dir, 1, iterations=iterations)
    assert slurm_submit(m, results, "--profile", str(profile), "--checkpoint-every", "10") == 0
    (sub,) = valid_submissions(ResultsRoot(results))
    rid, log = sub.jobs[0]["rows"][0], Path(sub.jobs[0]["log"])
    record = wait_for(
        lambda: record_dict(ResultsRoot(results), rid), what="the record", jobs=sub.jobs[0]["job_id"]
    )
    assert record["status"] == "ok", record.get("error")
    assert record["iterations_run"] == iterations
    if "timed-out" in log.read_text():  # it ran past a limit at least once (the usual case)
        assert record["resumes"] >= 1 and record["resumed_from_iteration"] > 0


def test_a_row_out_of_timeout_requeues_gets_a_failed_record(audio_dir, tmp_path, capsys):
    """--max-retries 0: the first time limit ends the row. Before submitit refuses the requeue the
    row publishes a failed (retryable) record saying what to raise; its checkpoint stays so that
    --retry-failed resumes it."""
    results = tmp_path / "results"
    profile = tmp_path / "profile.yaml"
    profile.write_text("timeout_min: 1\nsignal_delay_s: 20\n")
    m = long_rows(audio_dir, 1, iterations=1_000_000)
    assert (
        slurm_submit(m, results, "--profile", str(profile), "--max-retries", "0", "--checkpoint-every", "10")
        == 0
    )
    (sub,) = valid_submissions(ResultsRoot(results))
    rid = sub.jobs[0]["rows"][0]
    record = wait_for(
        lambda: record_dict(ResultsRoot(results), rid), what="the record", jobs=sub.jobs[0]["job_id"]
    )
    assert record["status"] == "failed" and record["retryable"]
    assert "time limit reached more often than max_retries=0" in record["error"]
    assert "raise timeout_min or --max-retries" in record["error"]
    assert ResultsRoot(results).checkpoint_path(rid).exists()
    capsys.readouterr()
    assert main(["status", str(results)]) == 1
    assert "failed=1" in capsys.readouterr().out


def test_batched_rows_in_one_array_task_checkpoint_requeue_and_resume(audio_dir, tmp_path):
    """Three rows sharing a network, optimised together in one array task, preempted (USR2):
    every row saves its state, the task requeues, and each row resumes to its full length."""
    head, vals = tiny_columns(iterations=LONG, patience=100000, n_filters=128)
    pairs = ["content.wav,style.wav", "content2.wav,style.wav", "style.wav,content.wav"]
    m = write_manifest(audio_dir, [f"{p},{vals}" for p in pairs], header=f"content,style,{head}")
    results = tmp_path / "results"
    extra = ("--rows-per-job", "3", "--batch-rows", "3", "--checkpoint-every", "0.5")
    assert slurm_submit(m, results, *extra) == 0
    (sub,) = valid_submissions(ResultsRoot(results))
    (job,) = sub.jobs
    root = ResultsRoot(results)
    wait_for(
        lambda: all(root.checkpoint_path(r).exists() for r in job["rows"]),
        every_s=0.2,
        what="checkpoints",
        jobs=job["job_id"],
    )
    subprocess.run(["scancel", "--signal=USR2", job["job_id"]], check=True)

    def all_records():
        records = [record_dict(root, r) for r in job["rows"]]
        return records if all(records) else None

    records = wait_for(all_records, what="the records", jobs=job["job_id"])
    for record in records:
        assert record["status"] == "ok", record.get("error")
        assert record["resumes"] >= 1 and record["resumed_from_iteration"] > 0
        assert record["iterations_run"] == LONG and record["slurm_restart_count"] >= 1
    assert not any(root.checkpoint_path(r).exists() for r in job["rows"])


# the payload is another user's file: only root can chown one (test_hostile_root says why)
@pytest.mark.root_only
def test_a_swapped_submitted_pickle_is_refused_by_the_slurm_job(audio_dir, tmp_path, private_state):
    """Issue #23 on the cluster: during the pending time an attacker swaps the array task's
    ``_submitted.pkl`` for a payload they own; the job refuses it unread and the row is lost."""
    import pickle

    from .test_hostile import Payload
    from .test_hostile_root import submit_under_a_swapping_watcher

    code, swapped, marker = submit_under_a_swapping_watcher(
        "*_submitted.pkl",
        private_state,
        audio_dir,
        tmp_path,
        lambda m, results: slurm_submit(m, results, "--wait"),
    )
    assert code == 1 and swapped and not marker.exists()
    results = tmp_path / "results"
    (sub,) = valid_submissions(ResultsRoot(results))
    log = "".join(p.read_text() for p in Path(sub.submitit_folder).rglob("*_log.err"))
    assert "refusing to load the job's pickle" in log
    assert set(batch_ast.load_index(results)["status"]) == {"lost"}
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload is real: loading it does touch the marker
    assert marker.exists()


def test_two_row_processes_per_array_task_pause_requeue_and_resume(audio_dir, tmp_path):
    """--processes-per-job 2 --rows-per-job 2: each array task runs two rows in two processes that
    share its CPUs. USR2 reaches every process of the step; the row processes ignore it, the job's
    process has both checkpoint, the task requeues, and both rows resume to their full length."""
    head, vals = tiny_columns(iterations=LONG, patience=100000, n_filters=128)
    pairs = [
        "content.wav,style.wav",
        "content2.wav,style.wav",
        "style.wav,content.wav",
        "content2.wav,content.wav",
    ]
    m = write_manifest(audio_dir, [f"{p},{vals}" for p in pairs], header=f"content,style,{head}")
    results = tmp_path / "results"
    assert (
        slurm_submit(
            m, results, "--processes-per-job", "2", "--rows-per-job", "2", "--checkpoint-every", "0.5"
        )
        == 0
    )
    (sub,) = valid_submissions(ResultsRoot(results))
    assert [len(j["rows"]) for j in sub.jobs] == [2, 2]
    root = ResultsRoot(results)
    first = sub.jobs[0]
    wait_for(
        lambda: all(root.checkpoint_path(r).exists() for r in first["rows"]),
        every_s=0.2,
        what="checkpoints",
        jobs=first["job_id"],
    )
    signalled = datetime.now(timezone.utc).isoformat(timespec="seconds")
    subprocess.run(["scancel", "--signal=USR2", first["job_id"]], check=True)

    def all_records():
        records = [record_dict(root, r) for j in sub.jobs for r in j["rows"]]
        return records if all(records) else None

    records = wait_for(all_records, what="the records", jobs=first["job_id"].split("_")[0])
    assert [r["status"] for r in records] == ["ok"] * 4, [r.get("error") for r in records]
    assert all(r["iterations_run"] == LONG for r in records)
    # what each row consumed, measured in its row process, and what its array task was granted
    assert all(r["cpu_s"] > 0 and r["peak_rss_bytes"] > 0 and r["usage_scope"] in ("row", "shared")
               for r in records), [(r.get("cpu_s"), r.get("usage_scope")) for r in records]
    assert all(r["alloc_cpus"] >= 1 and r["alloc_mem_bytes"] > 0 and r["alloc_rows"] == 2
               and r["alloc_time_limit_s"] > 0 for r in records), records[0]
    batch_ast.collect(results)  # each array task's CPU use against its grant: one pandas line
    per_task = batch_ast.cost(batch_ast.load_index(results), by="job")
    assert len(per_task) == 2 and per_task["measured"].tolist() == [2, 2]
    assert (per_task["cpu_efficiency"] > 0).all() and (per_task["alloc_core_hours"] > 0).all()
    # every row still running when the signal came paused and resumed (a faster one may have ended)
    running = [r for r in records if r["id"] in first["rows"] and r["finished_at"] > signalled]
    assert running and all(r["resumes"] >= 1 and r["resumed_from_iteration"] > 0 for r in running)
    out = (
        Path(first["log"])
        .with_name(Path(first["log"]).name.replace(".err", ".out"))
        .read_text(errors="replace")
    )
    assert "[job] 2 row processes, 1 thread(s) each" in out and "[job] pausing" in out
    log = Path(first["log"]).read_text(errors="replace")
    assert len(set(re.findall(r"start \(manifest row \d+, pid (\d+)\)", log))) >= 2
    assert "resource_tracker" not in log  # no helper process for the USR2 to kill
