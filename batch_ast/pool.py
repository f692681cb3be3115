"""Job stage, k processes: one job's rows shared among k row processes on its one allocation.

A SLURM array task (or a local job) holds one allocation — n CPUs, perhaps one GPU. One row at a
time leaves most of it idle: a small row cannot fill a GPU, and on the CPU a row's 2-thread
kernels scale poorly. Here the job's process hands its groups of rows (``plan.group_for_batching``)
one at a time to k worker processes that share the allocation: on the CPU each gets n/k threads,
on a GPU they share the device (through MPS when the site runs its daemon: every CUDA process
joins it by itself; we only detect it and say so, never start it).

What stays as with one process: every row is prepared, optimised, checkpointed, finished and
published by ``loop.run_groups`` exactly as in a single-process job, so a row's result equals a run
of it alone with the same device and thread count. A preemption signal reaches the job's process
(the workers ignore it); it asks every worker to checkpoint at its next iteration boundary, waits
for them, then hands the paused rows to submitit for the requeue. A worker that dies (killed by
the OOM killer, a segfault) costs only the rows it was running: they get a failed, retryable
record (their checkpoints stay, so ``--retry-failed`` resumes them), a new worker takes its place
and the other rows go on.

Written by hand because no library isolates a worker's death to its own task:
``concurrent.futures.ProcessPoolExecutor`` marks the whole pool broken and fails every pending
row, ``multiprocessing.Pool`` waits forever for a dead worker's task.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from .backends import job_threads, preemption_signal
from .plan import RowSpec
from .record import record_dict
from .runopts import Paused, RunOptions, summary
from .store import ResultsRoot

POLL_S = 1.0  # how often an idle worker checks that its job's process still lives


class WorkerStartError(RuntimeError):
    """A row process could not start; the job runs its rows with fewer processes (or in itself)."""


class WorkerDiedError(RuntimeError):
    """The process running the row died (killed by a signal: the kernel's OOM killer, a crash):
    retryable — the row resumes from its last checkpoint with --retry-failed."""


def threads_per_process(processes: int, threads: int | None = None) -> int:
    """Each of ``processes`` row processes gets an equal share of the job's ``threads`` (else the
    CPUs this process may run on), at least one."""
    total = threads or len(os.sched_getaffinity(0))
    return max(1, total // max(1, processes))


def mps_pipe_directory() -> Path | None:
    """The CUDA MPS daemon's pipe folder when one runs for this user (its ``control`` pipe
    exists), else None. CUDA processes then share the GPU through it without being asked."""
    folder = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps")
    return folder if (folder / "control").exists() else None


# --- the worker side ------------------------------------------------------------------------------

def _worker(conn: Connection, root: str, options: dict[str, Any], threads: int, parent: int) -> None:
    """A row process: runs the groups it is sent until told to stop or its job's process is gone.
    A pause comes as a message on the same pipe, polled at every iteration boundary."""
    import torch  # import cost: torch in the row process only, never in the job's process

    from .loop import run_groups  # import cost: torch (the row machinery), as above

    # The scheduler signals every process of the job: only the job's process decides (it asks us
    # through ``pause``); a cancel ends us with SIGKILL after the job's process, as before.
    for sig in {preemption_signal(), signal.SIGTERM, signal.SIGINT}:
        signal.signal(sig, signal.SIG_IGN)
    torch.set_num_threads(threads)
    results, run_options = ResultsRoot.of(root), RunOptions(**options)

    asked = False

    def should_pause() -> bool:
        nonlocal asked
        if not asked and conn.poll():
            asked = conn.recv()[0] == "pause"
        return asked or os.getppid() != parent

    conn.send(("ready", None, None))
    while os.getppid() == parent:
        if not conn.poll(POLL_S):
            continue
        message = conn.recv()
        if message[0] == "stop":
            return
        if message[0] == "pause":  # arrived after the group ended: nothing to pause
            continue
        _, unit, raw = message
        group = [RowSpec.from_dict(r) for r in raw]
        try:  # finishing inline: the other row processes keep the device busy meanwhile
            conn.send(("done", unit, run_groups([group], results, should_pause, run_options)))
        except Paused as paused:
            conn.send(("paused", unit, [run.spec.id for run in paused.runs]))


# --- the job's side -------------------------------------------------------------------------------

@dataclass
class _Worker:
    process: Any
    conn: Connection
    unit: int | None = None  # the group it is running
    before: dict[str, str] = field(default_factory=dict)  # row id -> its record's finished_at at dispatch


class RowProcesses:
    """k row processes for one job's groups of rows (see the module's docstring)."""

    def __init__(self, processes: int, results: ResultsRoot, options: RunOptions,
                 finish_in_background: bool | None = None, threads: int | None = None):
        self.processes = processes
        self.results = results
        self.options = options
        self.finish_in_background = finish_in_background  # only if the rows end up running in this process
        self.job_threads = job_threads() or threads  # the allocation's (None: every CPU here)
        self.threads = threads_per_process(processes, self.job_threads)
        self._context = multiprocessing.get_context("spawn")  # fork would copy torch's threads and CUDA state

    def run(self, groups: list[list[RowSpec]], should_pause: Any) -> list[dict[str, str]]:
        """Run every group in the worker processes; the rows' summaries in the order they ended.
        Raises ``runopts.Paused`` after every worker has paused or finished when ``should_pause()``
        said so (the rows not started are left for the requeued job)."""
        mps = mps_pipe_directory()
        print(f"[job] {self.processes} row processes, {self.threads} thread(s) each"
              + (f", sharing the GPU through MPS ({mps})" if mps else ""), flush=True)
        todo = deque(range(len(groups)))
        summaries: list[dict[str, str]] = []
        paused: list[str] = []
        pausing, left = False, 0  # left: groups not started when the pause came, for the requeued job
        workers: list[_Worker] = []
        try:
            while todo or any(w.unit is not None for w in workers):
                if should_pause() and not pausing:
                    pausing, left = True, len(todo)
                    print(f"[job] pausing: {left} group(s) of rows left for the requeued job", flush=True)
                    todo.clear()
                    for worker in workers:
                        if worker.unit is not None:
                            worker.conn.send(("pause",))
                while todo and len(workers) < self.processes:
                    try:
                        workers.append(self._start())
                    except WorkerStartError as exc:
                        print(f"[job] warning: {exc}", flush=True)
                        break
                if todo and not workers:  # not one process would start: run the rows here instead
                    from .loop import run_in_this_process  # import cost: torch, only in this fallback

                    summaries += run_in_this_process(
                        [groups[i] for i in todo],
                        self.results,
                        should_pause,
                        self.options,
                        self.finish_in_background,
                        self.job_threads,
                    )
                    todo.clear()
                    break
                for worker in workers:
                    if worker.unit is None and todo:
                        self._dispatch(worker, todo.popleft(), groups)
                busy = [w for w in workers if w.unit is not None]
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=POLL_S)
                for worker in busy:
                    if worker.conn in ready or worker.process.sentinel in ready:
                        self._collect(worker, groups, summaries, paused)
                workers = [w for w in workers if w.process.is_alive() or w.unit is not None]
        except BaseException:
            for worker in workers:  # interrupted (e.g. a cancel): the rows keep their checkpoints
                worker.process.kill()
            raise
        finally:
            self._stop(workers)
        if paused or left:
            from .row import RowRun  # import cost: torch, only to fail rows a refused requeue leaves

            by_id = {s.id: s for g in groups for s in g}
            runs = [RowRun(by_id[i], self.results, self.options) for i in paused]
            raise Paused(f"{len(paused)} row(s) paused in {self.processes} row processes, {left} group(s) "
                         "not started", runs)
        return summaries

    def _start(self) -> _Worker:
        mine, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_worker, name="batch-ast-row", daemon=True,
            args=(theirs, str(self.results.root), asdict(self.options), self.threads, os.getpid()),
        )
        # Started with the preemption signal blocked: what starts now inherits the mask, and that
        # includes multiprocessing's resource-tracker helper (started with the first process),
        # which SLURM's USR2 to every process of the job would otherwise kill. A USR2 arriving
        # meanwhile waits, blocked, and reaches this process's handler at the unblock.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {preemption_signal()})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        theirs.close()
        wait([mine, process.sentinel])  # until it is ready (torch imported) or dead
        try:
            mine.recv()
        except (EOFError, OSError):
            process.join()
            mine.close()
            raise WorkerStartError(
                f"a row process did not start (exit status {process.exitcode}; a script that starts "
                "jobs in-process needs an `if __name__ == \"__main__\":` guard, see Python's multiprocessing)"
            ) from None
        return _Worker(process, mine)

    def _dispatch(self, worker: _Worker, unit: int, groups: list[list[RowSpec]]) -> None:
        worker.unit = unit
        worker.before = {s.id: self._finished_at(s.id) for s in groups[unit]}
        worker.conn.send(("run", unit, [s.to_dict() for s in groups[unit]]))

    def _finished_at(self, row_id: str) -> str:
        record = record_dict(self.results, row_id)
        return str(record.get("finished_at", "")) if record else ""

    def _collect(self, worker: _Worker, groups: list[list[RowSpec]], summaries: list[dict[str, str]],
                 paused: list[str]) -> None:
        """Take the worker's answer for its group; if it died instead, fail the group's rows that
        it had not published."""
        try:
            kind, unit, payload = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join()
            summaries.extend(self._died(worker, groups[worker.unit]))
            worker.unit = None
            return
        assert unit == worker.unit
        if kind == "done":
            summaries.extend(payload)
        else:
            paused.extend(payload)
        worker.unit = None

    def _died(self, worker: _Worker, group: list[RowSpec]) -> list[dict[str, str]]:
        from .row import RowRun  # import cost: torch, only to fail the rows of a process that died

        code = worker.process.exitcode
        how = (
            f"killed by {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exit status {code}"
        )
        out = []
        for spec in group:
            if self._finished_at(spec.id) != worker.before.get(spec.id, ""):
                continue  # published before the process died
            error = WorkerDiedError(
                f"the process running this row died ({how}; out of memory?); its checkpoint "
                "stays, --retry-failed resumes it"
            )
            out.append(summary(RowRun(spec, self.results, self.options).fail(error)))
        return out

    def _stop(self, workers: list[_Worker]) -> None:
        for worker in workers:
            try:
                worker.conn.send(("stop",))
            except (OSError, ValueError):
                pass
        for worker in workers:
            worker.process.join()
            worker.conn.close()
