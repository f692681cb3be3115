"""Job stage: the callable submitit runs on a node, for one pack of manifest rows.

It owns what concerns the pack as a whole: the deferred preemption signal, which rows are already
done, grouping rows that share a network (built once per group and handed to each row), decoding
the next group's audio while this one optimises, and handing a pause to submitit for the requeue.
One row's life (prepare, optimise, reconstruct, publish) is row.py's.

This module stays free of torch at import time: the CLI imports it to pickle ``TransferJob``, and
``batch-ast status`` should not pay for torch. The row machinery is imported when a job runs.
"""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import submitit

from .backends import job_threads, preemption_signal
from .plan import RowSpec
from .store import ResultsRoot

if TYPE_CHECKING:
    from .row import RowRun


@dataclass(frozen=True)
class RunOptions:
    """How a job runs its rows (the defaults live here, once): which submission it works for,
    how often a row's state is saved, and how often a row may be resumed (also submitit's cap on
    time-limit requeues, so the help text and the job log count the same thing)."""

    submission_id: str = ""
    checkpoint_every_s: float = 300.0
    max_resumes: int = 10
    # The job's time limit and how long before it the warning signal comes (0: not known), so that
    # a warning far from the limit counts as a preemption, not as a time-limit requeue.
    time_limit_s: float = 0.0
    limit_warning_s: float = 0.0


DEFAULTS = RunOptions()


def configure_threads(share: int | None = None) -> None:
    """Use the CPUs the scheduler gave us (not the whole node's count) for torch's intra-op pool,
    else ``BATCH_AST_THREADS``, else the job's ``share`` of the machine (local workers)."""
    import torch

    threads = job_threads() or share
    if threads:
        torch.set_num_threads(threads)


class Paused(Exception):
    """The row was interrupted at an iteration boundary and its state checkpointed; ``runs`` are
    the rows that paused (``row.RowRun``s, to be failed if no requeue follows), ``finishing`` the
    records still being finished in the background (a pause waits for them). Defined here, not in
    row.py, so a job's process that only hands rows to row processes never imports torch."""

    def __init__(self, message: str, runs: list[Any] | None = None, finishing: list[Future] | None = None):
        super().__init__(message)
        self.runs = runs or []
        self.finishing = finishing or []


def _group_weights(specs: Sequence[RowSpec]) -> Callable[[Any], Any]:
    """``weights(device)``: the network of a group of rows (equal ``batched.group_key``), built once,
    when the first row that has passed its input and memory checks asks for it: a row refused by
    its ``max_memory_gb`` budget must be refused before the network is allocated."""
    from .features import Network

    return functools.cache(Network.of(specs[0].params).weights)


def run_rows(
    specs: list[RowSpec],
    results: ResultsRoot,
    should_pause: Callable[[], bool] = lambda: False,
    options: RunOptions | None = None,
    inputs: list[Future] | None = None,
    finisher: Executor | None = None,
) -> list[dict[str, Any] | Future]:
    """Run rows that share a network (``batched.group_key``) as one batched optimisation; a single
    row runs on its own in this thread. Returns their records — or, with a ``finisher`` pool, a
    future of the record for each row that reached its finishing: its Griffin-Lim runs here, on
    the device, and its files, figures, metrics and record in the pool while the caller goes on
    to the next rows. Raises ``Paused`` (after every row has saved its state, published its
    record or handed its finishing to the pool) when ``should_pause()`` interrupted any of them."""
    from .batched import run_together
    from .row import RowRun

    runs = [RowRun(s, results, options or DEFAULTS) for s in specs]
    records: list[dict[str, Any] | Future | None] = [None] * len(runs)
    weights = _group_weights(specs)
    for i, (run, row_inputs) in enumerate(zip(runs, inputs or [None] * len(runs), strict=True)):
        try:
            run.prepare(row_inputs, weights)
        except Exception as exc:  # one bad row must never stop the batch
            records[i] = run.fail(exc)
    ready = [i for i, r in enumerate(records) if r is None]

    def finish(i: int) -> None:
        records[i] = runs[i].finish(finisher)

    errors: list[BaseException | None] = []
    if len(ready) == 1:  # alone: in this thread, no rendezvous
        try:
            runs[ready[0]].optimize(should_pause)
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - Paused included: handled with the batched rows'
            errors.append(exc)
        if errors[0] is None:
            finish(ready[0])
    elif ready:
        errors = run_together(
            [runs[i].transfer for i in ready],
            lambda k: runs[ready[k]].optimize(should_pause, bar_position=k),
            lambda k: finish(ready[k]),
        )
    paused = [exc for exc in errors if isinstance(exc, Paused)]
    for k, exc in enumerate(errors):
        if exc is not None and not isinstance(exc, Paused):
            records[ready[k]] = runs[ready[k]].fail(exc)
    if paused:
        raise Paused(str(paused[0]), [runs[ready[k]] for k, exc in enumerate(errors) if isinstance(exc, Paused)],
                     [r for r in records if isinstance(r, Future)])
    return [r for r in records if r is not None]


def summary(record: dict[str, Any]) -> dict[str, str]:
    """What a job returns of a row (submitit pickles it back to the submitter)."""
    return {"id": record["id"], "status": record["status"], "error": record["error"]}


def run_groups(
    groups: list[list[RowSpec]],
    results: ResultsRoot,
    should_pause: Callable[[], bool],
    options: RunOptions,
    finish_in_background: bool = False,
) -> list[dict[str, str]]:
    """Run groups of rows (``run_rows`` each) one after another in this process: one thread
    decodes the next group's audio while this one optimises and, with ``finish_in_background``,
    one thread finishes each row (files, figures, metrics, record) while the next optimises.
    Returns the rows' summaries; on a pause, waits for the rows being finished, then raises
    ``Paused``."""
    from .row import load_inputs

    done: list[dict[str, Any] | Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as decoder, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="finish") as finisher:
        def decode(group: list[RowSpec]) -> list[Future]:
            return [decoder.submit(load_inputs, s) for s in group]

        upcoming = decode(groups[0]) if groups else []
        for k, group in enumerate(groups):
            inputs, upcoming = upcoming, decode(groups[k + 1]) if k + 1 < len(groups) else []
            try:
                done += run_rows(group, results, should_pause, options, inputs,
                                 finisher if finish_in_background else None)
            except Paused as paused:
                for future in upcoming:
                    future.cancel()
                for record in [*done, *paused.finishing]:  # a pause waits for the rows being finished
                    if isinstance(record, Future):
                        record.result()
                raise
    return [summary(r.result() if isinstance(r, Future) else r) for r in done]


def run_row(spec: RowSpec, results: ResultsRoot, should_pause: Callable[[], bool] = lambda: False,
            options: RunOptions | None = None) -> dict[str, Any]:
    """Run one row end to end; never raises except ``Paused`` (state saved for a later resume)."""
    return run_rows([spec], results, should_pause, options)[0]


def run_in_this_process(groups: list[list[RowSpec]], results: ResultsRoot, should_pause: Callable[[], bool],
                        options: RunOptions, finish_in_background: bool | None, threads: int | None) -> list[dict[str, str]]:
    """A job's groups run here, one process: torch gets the job's threads (``configure_threads``)
    and rows finish in the background where ``finishing_overlap`` says. What a single-process
    job does, and a job whose row processes would not start."""
    configure_threads(threads)
    background = finishing_overlap(finish_in_background, [s for g in groups for s in g])
    return run_groups(groups, results, should_pause, options, background)


def finishing_overlap(setting: bool | None, specs: list[RowSpec]) -> bool:
    """Whether a job finishes its rows in the background: as asked (None: where its rows run on a
    GPU, which would otherwise wait on that CPU work) — but never when a row computes in TF32:
    that switch is process-wide, and the finishing thread's metrics set IEEE float32 while the
    next row optimises."""
    if not specs or any(s.params.precision == "tf32" for s in specs):
        return False
    return runs_on_gpu(specs[0]) if setting is None else setting


def runs_on_gpu(spec: RowSpec) -> bool:
    from .features import TransferError, pick_device

    try:
        return pick_device(spec.params.device).type == "cuda"
    except TransferError:
        return False


LIMIT_SLACK_S = 120.0  # job start to this process's start, and SLURM's limit checks every ~30 s


def is_time_limit_warning(elapsed_s: float, time_limit_s: float, warning_s: float) -> bool | None:
    """Whether a warning signal ``elapsed_s`` into the job is the time limit's (it comes
    ``warning_s`` before the limit) rather than a preemption; None when the limit is not known.
    A preemption within the last ``warning_s`` + LIMIT_SLACK_S of the limit counts as the limit's
    (the safe side: it spends one of the limit's requeues, as submitit would)."""
    if time_limit_s <= 0:
        return None
    return elapsed_s >= time_limit_s - warning_s - LIMIT_SLACK_S


class TransferJob(submitit.helpers.Checkpointable):
    """The callable submitit pickles: runs a pack of rows in order, skipping rows already finished.

    On preemption or timeout submitit calls ``checkpoint()``; the requeued job re-runs this same
    call, which skips finished rows and resumes the interrupted one from its checkpoint file.
    The preemption signal is deferred to the next iteration boundary so the saved state is always
    consistent.
    """

    def __init__(self, options: RunOptions | None = None, force: bool = False, batch_rows: int = 1,
                 processes: int = 1, finish_in_background: bool | None = None, threads: int | None = None) -> None:
        self.options = options or DEFAULTS
        self.force = force  # redo rows finished by earlier submissions
        self.batch_rows = batch_rows  # rows of a pack optimised together (batched.py)
        self.processes = processes  # row processes sharing the job's CPUs/GPU (pool.py)
        self.finish_in_background = finish_in_background  # finish a row while the next optimises (None: on a GPU)
        self.threads = threads  # the job's share of the machine's CPUs (local workers), unless the scheduler says
        self._pause_requested = False

    def for_submission(self, submission_id: str) -> TransferJob:
        """This job, working for ``submission_id`` (the id goes in every record and checkpoint)."""
        return type(self)(replace(self.options, submission_id=submission_id), self.force, self.batch_rows,
                          self.processes, self.finish_in_background, self.threads)

    def _already_done(self, record: dict[str, Any] | None) -> bool:
        if not record or record.get("status") != "ok":
            return False
        return not self.force or record.get("submission_id") == self.options.submission_id

    def __call__(self, specs: list[dict[str, Any]], root: ResultsRoot | str) -> list[dict[str, str]]:
        from .batched import group_for_batching

        results = ResultsRoot.of(root)
        self._install_deferred_signal_handler()
        rows = [RowSpec.from_dict(raw) for raw in specs]
        finished = {s.id: {"id": s.id, "status": "ok", "error": ""} for s in rows
                    if self._already_done(results.read_record(s.id))}
        todo = [s for s in rows if s.id not in finished]
        groups = [[todo[i] for i in g] for g in group_for_batching([s.params for s in todo], self.batch_rows)]
        should_pause = lambda: self._pause_requested  # noqa: E731 - read at every iteration boundary
        try:
            if self.processes > 1 and len(groups) > 1:  # this process only hands groups out: no torch here
                from .pool import RowProcesses

                pool = RowProcesses(self.processes, results, self.options, self.finish_in_background, self.threads)
                summaries = pool.run(groups, should_pause)
            else:
                summaries = run_in_this_process(groups, results, should_pause, self.options, self.finish_in_background,
                                                self.threads)
        except Paused as paused:
            self._hand_signal_to_submitit(paused.runs)
            raise
        finished.update({r["id"]: r for r in summaries})
        return [finished[s.id] for s in rows if s.id in finished]

    def _install_deferred_signal_handler(self) -> None:
        """Replace submitit's preemption handler by one that only raises a flag; the loop checks
        the flag between iterations, saves the state, then calls submitit's handler to requeue."""
        self._pause_requested = False
        self._started = time.monotonic()
        self._signal = preemption_signal()
        self._submitit_handler = signal.getsignal(self._signal)
        if not callable(self._submitit_handler):
            return  # not under submitit (e.g. called directly): nothing to defer

        def request_pause(signum: int, frame: Any) -> None:
            self._pause_requested = True

        signal.signal(self._signal, request_pause)

    def _hand_signal_to_submitit(self, paused: list[RowRun]) -> None:
        """submitit's handler requeues and exits; when it refuses (time limit reached more often
        than max_num_timeout) the paused rows get a failed record first, so no row is left without
        one. Their checkpoints stay: --retry-failed resumes them."""
        from .row import TimeLimitError  # a pause of row processes reaches here without torch: imported now

        handler = getattr(self, "_submitit_handler", None)
        if not callable(handler):
            return
        judge = getattr(handler, "__self__", None)  # submitit's SignalHandler
        elapsed = time.monotonic() - getattr(self, "_started", time.monotonic())
        timed_out = is_time_limit_warning(elapsed, self.options.time_limit_s, self.options.limit_warning_s)
        if judge is not None and hasattr(judge, "has_timed_out") and timed_out is not None:
            # submitit counts a signal as a time-limit requeue from 10 minutes before the limit
            # (from the start for limits up to 10 minutes): a preemption then used up
            # max_num_timeout, and a packed job was refused its requeue, with no limit reached.
            judge.has_timed_out = lambda: timed_out
            print(f"batch-ast: warning signal after {elapsed:.0f} s of a {self.options.time_limit_s:.0f} s limit: "
                  + ("the time limit" if timed_out else "a preemption (not a time-limit requeue)"), flush=True)
        try:
            handler(self._signal, None)  # checkpoints (requeue) and exits the process
        except submitit.core.utils.UncompletedJobError as exc:
            for run in paused:
                run.fail(TimeLimitError(
                    f"time limit reached more often than max_retries={self.options.max_resumes} requeues "
                    f"allow ({exc}); raise timeout_min or --max-retries, then --retry-failed resumes the row"
                ))
            raise

    def __getstate__(self) -> dict[str, Any]:
        # nothing of a running job (flags, signal handlers) belongs in the requeue pickle
        return {"options": asdict(self.options), "force": self.force, "batch_rows": self.batch_rows,
                "processes": self.processes, "finish_in_background": self.finish_in_background,
                "threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "options" not in state:  # pickled by batch-ast before RunOptions: a job requeued across an upgrade
            state = {"options": {k: state[k] for k in ("submission_id", "checkpoint_every_s", "max_resumes")},
                     "force": state["force"], "batch_rows": state.get("batch_rows", 1)}
        self.__init__(RunOptions(**state["options"]), state["force"], state["batch_rows"],
                      state.get("processes", 1), state.get("finish_in_background"), state.get("threads"))
