"""Job stage, the vocabulary: what a job tells its rows and what a row raises back.

``RunOptions`` travels from the submitter (pickled inside ``job.TransferJob``) to every row
process; ``Paused`` and ``TimeLimitError`` travel back up. They live in a module of their own,
free of torch and of every other stage, so that the pickled job (``job.py``), the loop over a
job's rows (``loop.py``), the row processes (``pool.py``) and one row's life (``row.py``) all
import it without importing each other.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunOptions:
    """How a job runs its rows (the defaults live here, once): which submission it works for,
    how often a row's state is saved, and how often a row may be resumed (also submitit's cap on
    time-limit requeues, ``max_retries`` on the command line and in the help text)."""

    submission_id: str = ""
    checkpoint_every_s: float = 300.0
    max_retries: int = 10
    # The job's time limit and how long before it the warning signal comes (0: not known), so that
    # a warning far from the limit counts as a preemption, not as a time-limit requeue.
    time_limit_s: float = 0.0
    limit_warning_s: float = 0.0
    # Row processes sharing the job's allocation (its accounting says how many shared the grant).
    processes_per_job: int = 1


DEFAULTS = RunOptions()


class Paused(Exception):
    """The row was interrupted at an iteration boundary and its state checkpointed; ``runs`` are
    the rows that paused (``row.RowRun``s, to be failed if no requeue follows), ``finishing`` the
    records still being finished in the background (a pause waits for them)."""

    def __init__(self, message: str, runs: list[Any] | None = None, finishing: list[Future] | None = None):
        super().__init__(message)
        self.runs = runs or []
        self.finishing = finishing or []


class TimeLimitError(RuntimeError):
    """The row hit its job's time limit more often than requeues allow (retryable: resumes from its
    checkpoint with --retry-failed, ideally with a larger timeout_min)."""


def summary(record: dict[str, Any]) -> dict[str, str]:
    """What a job returns of a row (submitit pickles it back to the submitter)."""
    return {"id": record["id"], "status": record["status"], "error": record["error"]}
