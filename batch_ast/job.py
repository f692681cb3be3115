"""Job stage, the pickled callable: what submitit runs on a node, for one pack of manifest rows.

``TransferJob`` owns what concerns the job as a process: the deferred preemption signal, which
rows are already done, the choice between running the rows here (``loop.py``) or in k row
processes (``pool.py``), and handing a pause to submitit for the requeue. Jobs already queued
unpickle ``batch_ast.job.TransferJob``: its name and its pickled state stay readable.

This module stays free of torch at import time: the CLI imports it to pickle ``TransferJob``, and
``batch-ast status`` should not pay for torch. The loop and the row processes are imported when a
job runs.
"""

from __future__ import annotations

import signal
import time
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import submitit

from .backends import preemption_signal
from .plan import RowSpec, group_for_batching
from .pool import RowProcesses
from .record import record_dict
from .runopts import DEFAULTS, Paused, RunOptions, TimeLimitError
from .store import ResultsRoot

if TYPE_CHECKING:
    from .row import RowRun

__all__ = ["DEFAULTS", "Paused", "RunOptions", "TransferJob", "is_time_limit_warning"]


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

    def __init__(
        self,
        options: RunOptions | None = None,
        force: bool = False,
        batch_rows: int = 1,
        processes: int = 1,
        finish_in_background: bool | None = None,
        threads: int | None = None,
    ) -> None:
        self.options = options or DEFAULTS
        self.force = force  # redo rows finished by earlier submissions
        self.batch_rows = batch_rows  # rows of a pack optimised together (batched.py)
        self.processes = processes  # row processes sharing the job's CPUs/GPU (pool.py)
        # finish a row while the next optimises (None: where the rows run on a GPU)
        self.finish_in_background = finish_in_background
        # the job's share of the machine's CPUs (local workers), unless the scheduler says
        self.threads = threads
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
        results = ResultsRoot.of(root)
        self._install_deferred_signal_handler()
        rows = [RowSpec.from_dict(raw) for raw in specs]
        finished = {s.id: {"id": s.id, "status": "ok", "error": ""} for s in rows
                    if self._already_done(record_dict(results, s.id))}
        todo = [s for s in rows if s.id not in finished]
        groups = [[todo[i] for i in g] for g in group_for_batching([s.params for s in todo], self.batch_rows)]
        should_pause = lambda: self._pause_requested  # noqa: E731 - read at every iteration boundary
        try:
            if self.processes > 1 and len(groups) > 1:  # this process only hands groups out: no torch here
                pool = RowProcesses(
                    self.processes, results, self.options, self.finish_in_background, self.threads
                )
                summaries = pool.run(groups, should_pause)
            else:
                from .loop import run_in_this_process  # import cost: torch, paid only by a running job

                summaries = run_in_this_process(
                    groups, results, should_pause, self.options, self.finish_in_background, self.threads
                )
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
            print(
                f"batch-ast: warning signal after {elapsed:.0f} s of a {self.options.time_limit_s:.0f} s "
                "limit: "
                + ("the time limit" if timed_out else "a preemption (not a time-limit requeue)"),
                flush=True,
            )
        try:
            handler(self._signal, None)  # checkpoints (requeue) and exits the process
        except submitit.core.utils.UncompletedJobError as exc:
            for run in paused:
                run.fail(TimeLimitError(
                    f"time limit reached more often than max_retries={self.options.max_retries} requeues "
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
        options = dict(state["options"])
        if "max_resumes" in options:  # the name before 0.4 (one name per knob since: max_retries)
            options["max_retries"] = options.pop("max_resumes")
        self.__init__(RunOptions(**options), state["force"], state["batch_rows"],
                      state.get("processes", 1), state.get("finish_in_background"), state.get("threads"))
