"""A running row's heartbeat: ``runs/<id>/progress.json``, rewritten by the row at most every
HEARTBEAT_EVERY_S, so that `status` can say where each running row is and when it will end — a
SLURM job log shows no progress bar, and a row may optimise for many minutes.

The job writes it (``Heartbeat``); status reads it back as a stranger's file (``Progress.from_json``:
types and ranges checked, size bounded by the reader) and shows it. Nothing here knows SLURM or
spectrograms.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from .store import ResultsRoot, load_json

HEARTBEAT_EVERY_S = 30.0  # progress.json at most this often
MIN_RATE_ITERATIONS = 5  # a speed (and so an ETA) only once measured over this many iterations
STAGES = ("starting", "optimising")  # loading inputs and building the network; iterating
LOG_EVERY_S = 60.0  # a progress line in the job log at most this often
MAX_PROGRESS_BYTES = 4096


@dataclass(frozen=True)
class Progress:
    """Where a running row is: starting, or its iteration of how many, its latest loss, its speed
    since its first iteration in this process (None until measured over MIN_RATE_ITERATIONS), and
    when it was written (time.time()). A row writes one as it starts, so `status` counts as
    running only the rows that have begun, not every row of a running job."""

    iteration: int
    iterations: int
    loss: float | None
    iterations_per_s: float | None
    updated: float
    host: str = ""
    submission_id: str = ""
    stage: str = "optimising"

    @classmethod
    def starting(cls, iterations: int, host: str, submission_id: str, wall: Any = time.time) -> Progress:
        """The heartbeat of a row that has begun but not yet iterated."""
        return cls(0, iterations, None, None, wall(), host, submission_id, "starting")

    @property
    def eta_s(self) -> float | None:
        """Seconds to the last iteration at the current speed: an upper bound, as the stopping rule
        may end the row sooner."""
        if not self.iterations_per_s:
            return None
        eta = max(0, self.iterations - self.iteration) / self.iterations_per_s
        return eta if math.isfinite(eta) else None  # a planted 5e-324 it/s

    def describe(self, now: float | None = None) -> str:
        """One line: "iteration 1200/4000 (30%), loss 123.4, 35.1 it/s, ETA ≤ 1m20s" (+ its age)."""
        share = f" ({100 * self.iteration / self.iterations:.0f}%)" if self.iterations else ""
        parts = (["starting (loading its inputs, building its network)"] if self.stage == "starting"
                 else [f"iteration {self.iteration}/{self.iterations}{share}"])
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.iterations_per_s:
            parts.append(f"{self.iterations_per_s:.3g} it/s")
        if (eta := self.eta_s) is not None:
            parts.append(f"ETA ≤ {duration(eta)}")
        line = ", ".join(parts)
        if now is not None:
            age = now - self.updated
            line += (
                f" ({duration(age)} ago)"
                if age > -60
                else " (dated in the future: clock skew, or not a heartbeat)"
            )
        return line

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Progress:
        """A heartbeat read from the root; ValueError when it is not one (wrong types, negative
        counts, a time or speed that is not a finite number)."""
        if not isinstance(data, dict):
            raise ValueError(f"not a heartbeat (a {type(data).__name__})")
        iteration, iterations = data.get("iteration"), data.get("iterations")
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**40 for v in (iteration, iterations)
        ):
            raise ValueError("iteration and iterations must be counts")
        numbers = {k: data.get(k) for k in ("loss", "iterations_per_s", "updated")}
        for key, value in numbers.items():
            if value is None and key != "updated":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number")
        if numbers["iterations_per_s"] is not None and numbers["iterations_per_s"] < 0:
            raise ValueError("iterations_per_s must not be negative")
        stage = data.get("stage", "optimising")
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}")
        host, submission = data.get("host", ""), data.get("submission_id", "")
        if (
            not isinstance(host, str)
            or not isinstance(submission, str)
            or len(host) > 300
            or len(submission) > 200
        ):
            raise ValueError("host and submission_id must be short text")
        return cls(
            iteration,
            iterations,
            numbers["loss"],
            numbers["iterations_per_s"],
            float(numbers["updated"]),
            host,
            submission,
            stage,
        )


def duration(seconds: float) -> str:
    """3s, 1m20s, 2h05m: short, for status lines (any float: a planted one too)."""
    if not math.isfinite(seconds) or seconds >= 100 * 86400:
        return "over 100 days"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Heartbeat:
    """The job's side: ``beat(iteration, loss)`` after each iteration returns a ``Progress`` when
    one is due (the first iteration, then every HEARTBEAT_EVERY_S), and ``log_due`` says whether
    the job log should get a line (every LOG_EVERY_S). Speed counts only this process's iterations
    (a resumed row's earlier ones ran elsewhere), from its first: the first iteration carries the
    optimiser's warm-up (an ETA from it said "≤ 15m56s" of a row that took under two minutes)."""

    def __init__(self, start_iteration: int, iterations: int, host: str, submission_id: str,
                 clock: Any = time.monotonic, wall: Any = time.time) -> None:
        self.start_iteration, self.iterations = start_iteration, iterations
        self.host, self.submission_id = host, submission_id
        self.clock, self.wall = clock, wall
        self.started = clock()
        self.last_beat: float | None = None
        self.last_log = self.started
        self.first: tuple[float, int] | None = None  # (clock, iteration) at the first iteration

    def beat(self, iteration: int, loss: float) -> Progress | None:
        now = self.clock()
        if self.first is None:
            self.first = now, iteration
        if self.last_beat is not None and now - self.last_beat < HEARTBEAT_EVERY_S:
            return None
        self.last_beat = now
        elapsed, done = now - self.first[0], iteration - self.first[1]
        rate = done / elapsed if elapsed > 0 and done >= MIN_RATE_ITERATIONS else None
        return Progress(iteration, self.iterations, loss if math.isfinite(loss) else None, rate, self.wall(),
                        self.host, self.submission_id)

    def log_due(self) -> bool:
        now = self.clock()
        if now - self.last_log < LOG_EVERY_S:
            return False
        self.last_log = now
        return True


def read_progress(results: ResultsRoot, row_id: str) -> Progress | None:
    """The running row's last heartbeat, or None when it has none or it is not a valid one
    (a stranger's file: read as a bounded regular file, then checked)."""
    try:
        return Progress.from_json(load_json(results.progress_path(row_id), results.root, MAX_PROGRESS_BYTES))
    except (OSError, ValueError):
        return None
