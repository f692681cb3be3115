"""Several row processes sharing one job's allocation (pool.py), and finishing a row in the
background while the next one optimises (job.run_groups): results equal to rows run alone with
the same threads, a killed process costs only its row, a preemption pauses every process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import soundfile as sf
import torch

import batch_ast
from batch_ast.backends import get_backend
from batch_ast.cli import main
from batch_ast.config import load_config
from batch_ast.dispatch import job_parameters, submit_arrays
from batch_ast.job import TransferJob
from batch_ast.loop import run_groups, run_rows
from batch_ast.manifest import load_manifest
from batch_ast.options import DispatchError, SubmitOptions, load_profile
from batch_ast.plan import make_plan
from batch_ast.pool import mps_pipe_directory, threads_per_process
from batch_ast.record import columns, record_dict
from batch_ast.runopts import RunOptions
from batch_ast.store import ResultsRoot

from .conftest import tiny_columns, write_manifest

HOUR = 3600  # safety bound of every wait on a state (a loaded machine is slow, never wrong)


def plan(folder: Path, results: ResultsRoot, seeds: range, **extra):
    head, vals = tiny_columns(**extra)
    m = write_manifest(
        folder, [f"content.wav,style.wav,{vals},{s}" for s in seeds], header=f"content,style,{head},seed"
    )
    return make_plan(load_manifest(m, load_config()), results, m).to_run


def wait_for(condition, what: str, while_alive=lambda: True) -> None:
    deadline = time.monotonic() + HOUR
    while not condition():
        assert while_alive() and time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture
def one_thread_each(monkeypatch):
    """Two processes on 2 CPUs get 1 thread each; the rows run alone get the same one thread."""
    monkeypatch.setenv("BATCH_AST_THREADS", "2")
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def outputs(results: ResultsRoot, records) -> dict[str, tuple]:
    return {r["id"]: (r["final_total"], r["iterations_run"], sf.read(results.root / r["output"])[0].tobytes())
            for r in records}


def test_rows_in_two_processes_equal_the_same_rows_run_alone(audio_dir, tmp_path, one_thread_each, capfd):
    alone_root, pooled_root = ResultsRoot(tmp_path / "alone"), ResultsRoot(tmp_path / "pooled")
    specs = plan(audio_dir, alone_root, range(4), iterations=25)
    torch.set_num_threads(1)
    alone = [r for s in specs for r in run_rows([s], alone_root)]
    capfd.readouterr()
    summaries = TransferJob(processes=2)([s.to_dict() for s in specs], pooled_root)
    assert [s["status"] for s in summaries] == ["ok"] * 4 and {s["id"] for s in summaries} == {
        s.id for s in specs
    }
    pooled = [record_dict(pooled_root, s.id) for s in specs]
    assert outputs(pooled_root, pooled) == outputs(
        alone_root, alone
    )  # bit for bit: same device, same threads
    log = capfd.readouterr()
    assert "[job] 2 row processes, 1 thread(s) each" in log.out
    pids = set(re.findall(r"start \(manifest row \d+, pid (\d+)\)", log.err))
    assert len(pids) == 2 and str(os.getpid()) not in pids  # two processes, neither of them the job's


def test_finishing_in_the_background_changes_no_result_and_a_failure_there_costs_only_its_row(
        audio_dir, tmp_path, monkeypatch):
    """A row's files, figures and metrics made while the next row optimises: the same records
    (times aside), and an error while finishing one row fails that row alone."""
    roots = [ResultsRoot(tmp_path / name) for name in ("here", "background")]
    specs = plan(audio_dir, roots[0], range(3), iterations=10)
    here = run_groups([[s] for s in specs], roots[0], lambda: False, RunOptions(), finish_in_background=False)
    background = run_groups(
        [[s] for s in specs], roots[1], lambda: False, RunOptions(), finish_in_background=True
    )
    assert here == background and [s["status"] for s in here] == ["ok"] * 3
    timing = {k for k in record_dict(roots[0], specs[0].id) if k.startswith("time_") or k.endswith("_at")}
    timing |= {*columns("cost"), "usage_scope"}  # measured, like the times: and shared with the next row
    for spec in specs:
        a, b = (record_dict(root, spec.id) for root in roots)
        assert {k: v for k, v in a.items() if k not in timing} == {
            k: v for k, v in b.items() if k not in timing
        }
        assert (roots[0].root / a["output"]).read_bytes() == (roots[1].root / b["output"]).read_bytes()
    # one row at a time, each alone in the process; finished in the background, they overlapped
    scopes = [[record_dict(root, s.id)["usage_scope"] for s in specs] for root in roots]
    assert scopes[0] == ["row"] * 3 and "shared" in scopes[1], scopes

    from batch_ast import row as row_module

    real = row_module.output_metrics

    def broken_for_the_second(audio, content, style, params, *args, **kwargs):
        if params.seed == 1:
            raise RuntimeError("metrics broke")
        return real(audio, content, style, params, *args, **kwargs)

    monkeypatch.setattr(row_module, "output_metrics", broken_for_the_second)
    third = ResultsRoot(tmp_path / "third")
    out = run_groups([[s] for s in specs], third, lambda: False, RunOptions(), finish_in_background=True)
    assert [s["status"] for s in out] == ["ok", "failed", "ok"]
    assert "metrics broke" in record_dict(third, specs[1].id)["error"]


def test_a_pause_waits_for_the_rows_being_finished(audio_dir, tmp_path):
    """Row 1 is being finished in the background when row 2 pauses at its first iteration: row
    1's record is published before the pause goes on to submitit, row 2 keeps its checkpoint."""
    from batch_ast.runopts import Paused

    results = ResultsRoot(tmp_path / "results")
    first, second = plan(audio_dir, results, range(2), iterations=20, patience=100000)
    second_prepared = lambda: results.run_dir(second.id).exists()  # noqa: E731 - made by its prepare
    with pytest.raises(Paused) as paused:
        run_groups([[first], [second]], results, second_prepared, RunOptions(), finish_in_background=True)
    assert [r.spec.id for r in paused.value.runs] == [second.id]
    assert record_dict(results, first.id)["status"] == "ok"
    assert results.checkpoint_path(second.id).exists() and record_dict(results, second.id) is None


def local_job_log(job) -> Path:
    return Path(job.paths.stderr)


def test_a_killed_row_process_costs_only_its_row_and_retry_resumes_it(audio_dir, tmp_path):
    """The OOM killer's SIGKILL on one row process: that row gets a failed, retryable record with
    its checkpoint kept, a new process takes the other rows, and --retry-failed finishes the row."""
    results = ResultsRoot(tmp_path / "results")
    specs = plan(audio_dir, results, range(4), iterations=30)
    victim = plan(audio_dir, results, range(4, 5), iterations=100000, patience=100000)[0]
    rows = [victim, *specs]
    job = TransferJob(RunOptions(checkpoint_every_s=0.2), processes=2)
    _, (local_job,) = submit_arrays(
        rows, results, get_backend("local"), audio_dir / "m.csv", rows_per_job=5, job=job
    )
    log = local_job_log(local_job)
    found: list[str] = []

    def victim_started() -> bool:
        text = log.read_text(errors="replace") if log.exists() else ""
        found[:] = re.findall(rf"\[row {victim.id}\] start \(manifest row \d+, pid (\d+)\)", text)
        return bool(found) and results.checkpoint_path(victim.id).exists()

    wait_for(victim_started, "the long row never checkpointed", lambda: not local_job.done())
    os.kill(int(found[0]), signal.SIGKILL)
    summaries = local_job.result()
    by_id = {s["id"]: s for s in summaries}
    assert [by_id[s.id]["status"] for s in specs] == ["ok"] * 4
    record = record_dict(results, victim.id)
    assert record["status"] == "failed" and record["retryable"]
    assert "WorkerDiedError" in record["error"] and "SIGKILL" in record["error"]
    assert results.checkpoint_path(victim.id).exists()


def test_a_preempted_job_pauses_every_row_process_and_resumes_them(audio_dir, tmp_path):
    """USR2 (what SLURM sends before preemption, the local controller at timeout) reaches the
    job's process only; both row processes checkpoint, the job requeues, and the resumed rows end
    as they would have."""
    results = ResultsRoot(tmp_path / "results")
    specs = plan(audio_dir, results, range(2), iterations=1000, patience=100000, n_filters=128)
    job = TransferJob(RunOptions(checkpoint_every_s=0.2), processes=2)
    _, (local_job,) = submit_arrays(
        specs, results, get_backend("local"), audio_dir / "m.csv", rows_per_job=2, job=job
    )
    wait_for(
        lambda: all(results.checkpoint_path(s.id).exists() for s in specs),
        "the rows never checkpointed",
        lambda: not local_job.done(),
    )
    signalled = datetime.now(timezone.utc).isoformat(timespec="seconds")
    children = subprocess.run(["pgrep", "-P", str(local_job.job_id)], capture_output=True, text=True)
    for pid in children.stdout.split():
        os.kill(int(pid), signal.SIGUSR2)
    local_job.result()
    records = [record_dict(results, s.id) for s in specs]
    assert all(r["status"] == "ok" and r["iterations_run"] == 1000 for r in records)
    assert not any(results.checkpoint_path(s.id).exists() for s in specs)
    # every row still running when the signal came paused and resumed (on a loaded machine the
    # second process may start late enough for the first row to end before the signal)
    running = [r for r in records if r["finished_at"] > signalled]
    assert running and all(r["resumes"] == 1 and r["resumed_from_iteration"] > 0 for r in running)


def test_processes_per_job_is_an_option_a_profile_key_and_packs_slurm_tasks(tmp_path, audio_dir, capsys):
    profile = tmp_path / "p.yaml"
    profile.write_text("processes_per_job: 3\nfinish_in_background: true\n")
    _, packing, _ = job_parameters(load_profile(profile))
    assert packing.processes_per_job == 3 and packing.finish_in_background is True
    _, packing, _ = job_parameters(
        load_profile(profile), SubmitOptions(processes_per_job=2, finish_in_background=False)
    )
    assert packing.processes_per_job == 2 and packing.finish_in_background is False
    assert job_parameters({})[1].finish_in_background is None  # auto: on where rows run on a GPU
    profile.write_text("processes_per_job: 0\n")
    with pytest.raises(DispatchError, match="processes_per_job must be an integer >= 1"):
        load_profile(profile)
    profile.write_text("finish_in_background: sometimes\n")
    with pytest.raises(DispatchError, match="finish_in_background must be true, false or auto"):
        load_profile(profile)
    assert get_backend("slurm").rows_per_job(40, 1, 1) == 1  # one row per array task, as before
    assert get_backend("slurm").rows_per_job(40, 1, 4) == 8  # two rows per process of each array task
    assert get_backend("local").rows_per_job(40, 2, 4) == 20  # locally: split over the workers
    with pytest.raises(DispatchError, match="processes_per_job must be an integer >= 1, not 0"):
        batch_ast.prepare(audio_dir / "none.csv", tmp_path / "r", processes_per_job=0)
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{vals}"] * 1, header=f"content,style,{head}")
    assert main(["submit", str(m), "--results", str(tmp_path / "r"), "--executor", "local", "--dry-run",
                 "--processes-per-job", "2", "--no-finish-in-background"]) == 0
    assert "2 row processes per job" in capsys.readouterr().out
    job = batch_ast.prepare(m, tmp_path / "r", "local", processes_per_job=2, finish_in_background=True).job
    assert (job.processes, job.finish_in_background) == (2, True)
    restored = type(job).__new__(type(job))
    restored.__setstate__(job.__getstate__())
    assert (restored.processes, restored.finish_in_background) == (2, True)
    old = job.__getstate__()
    del old["processes"], old["finish_in_background"]  # pickled by 0.2: requeued across the upgrade
    restored.__setstate__(old)
    assert (restored.processes, restored.finish_in_background) == (1, None)


def test_threads_are_shared_and_mps_is_only_detected(tmp_path, monkeypatch):
    assert (
        threads_per_process(2, 8) == 4 and threads_per_process(3, 2) == 1 and threads_per_process(1, 6) == 6
    )
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert mps_pipe_directory() is None
    os.mkfifo(tmp_path / "control")
    assert mps_pipe_directory() == tmp_path


def test_a_job_whose_row_processes_cannot_start_runs_its_rows_itself(audio_dir, tmp_path, monkeypatch, capfd):
    from batch_ast import pool

    def no_start(self):
        raise pool.WorkerStartError("a row process did not start (exit status 1)")

    monkeypatch.setattr(pool.RowProcesses, "_start", no_start)
    results = ResultsRoot(tmp_path / "results")
    specs = plan(audio_dir, results, range(2), iterations=5)
    summaries = TransferJob(processes=2)([s.to_dict() for s in specs], results)
    assert [s["status"] for s in summaries] == ["ok", "ok"]
    assert "warning: a row process did not start" in capfd.readouterr().out


def test_row_processes_end_with_their_job(audio_dir, tmp_path, capfd):
    """No row process outlives its job."""
    results = ResultsRoot(tmp_path / "results")
    specs = plan(audio_dir, results, range(2), iterations=3)
    summaries = TransferJob(processes=2)([s.to_dict() for s in specs], results)
    assert [s["status"] for s in summaries] == ["ok", "ok"]
    pids = set(re.findall(r"start \(manifest row \d+, pid (\d+)\)", capfd.readouterr().err))
    assert len(pids) == 2 and not [p for p in pids if Path(f"/proc/{p}").exists()]


def test_local_workers_share_the_cores_instead_of_each_taking_all(audio_dir, tmp_path, monkeypatch):
    """--workers N: each local job gets 1/N of the CPUs as torch threads (the record says how many),
    unless BATCH_AST_THREADS or a scheduler says otherwise."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    local = get_backend("local")
    assert local.thread_share(1) is None and local.thread_share(2) == 4 and local.thread_share(16) == 1
    assert get_backend("slurm").thread_share(4) is None  # SLURM_CPUS_PER_TASK decides there
    head, vals = tiny_columns(iterations=3)
    m = write_manifest(
        audio_dir,
        [f"content.wav,style.wav,{vals},{s}" for s in range(2)],
        header=f"content,style,{head},seed",
    )
    prepared = batch_ast.prepare(m, tmp_path / "r", "local", workers=2)
    assert prepared.job.threads == 4 and prepared.rows_per_job == 1
    monkeypatch.undo()
    before = torch.get_num_threads()
    try:
        records = TransferJob(threads=1)([s.to_dict() for s in prepared.plan.to_run], tmp_path / "r")
    finally:
        torch.set_num_threads(before)
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert {
        record_dict(ResultsRoot(tmp_path / "r"), s.id)["torch_threads"] for s in prepared.plan.to_run
    } == {1}


def test_a_pause_before_any_row_started_still_requeues_the_job(audio_dir, tmp_path):
    """The preemption signal came while the row processes were starting: no row ran, so none
    paused, but the job must still requeue (Paused) rather than end with its rows never run."""
    from batch_ast.pool import RowProcesses
    from batch_ast.runopts import Paused

    results = ResultsRoot(tmp_path / "results")
    specs = plan(audio_dir, results, range(2), iterations=3)
    with pytest.raises(Paused, match="0 row\\(s\\) paused .* 2 group\\(s\\) not started") as paused:
        RowProcesses(2, results, RunOptions()).run([[s] for s in specs], lambda: True)
    assert paused.value.runs == [] and all(record_dict(results, s.id) is None for s in specs)


def test_finishing_overlap_is_auto_on_a_gpu_and_never_with_a_tf32_row(audio_dir, tmp_path, monkeypatch):
    from batch_ast import loop as loop_module

    specs = plan(audio_dir, ResultsRoot(tmp_path / "r"), range(2), iterations=3)
    tf32 = plan(audio_dir, ResultsRoot(tmp_path / "r"), range(1), iterations=3, precision="tf32")
    assert loop_module.finishing_overlap(True, specs) and not loop_module.finishing_overlap(False, specs)
    assert not loop_module.finishing_overlap(True, specs + tf32) and not loop_module.finishing_overlap(
        True, []
    )
    monkeypatch.setattr(loop_module, "runs_on_gpu", lambda spec: True)
    assert loop_module.finishing_overlap(None, specs)
    monkeypatch.setattr(loop_module, "runs_on_gpu", lambda spec: False)
    assert not loop_module.finishing_overlap(None, specs)


def test_the_jobs_process_hands_rows_to_row_processes_without_importing_torch(audio_dir, tmp_path):
    """With --processes-per-job K the job's own process only hands groups of rows out (grouping by
    ``Params.network_key``, no torch): the row processes import torch, the job's never does."""
    import json
    import subprocess
    import sys

    results = ResultsRoot(tmp_path / "results")
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps([s.to_dict() for s in plan(audio_dir, results, range(2), iterations=3)]))
    code = ("import json, sys; from batch_ast.job import TransferJob; "
            f"out = TransferJob(processes=2)(json.load(open({str(specs)!r})), {str(results.root)!r}); "
            "print(json.dumps([[r['status'] for r in out], 'torch' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HOUR)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [["ok", "ok"], False]
