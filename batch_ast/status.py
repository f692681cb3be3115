"""Status of submissions: records on disk first, then ONE queue query for what is not finished.

Works without SLURM accounting: a row is done/failed when its record says so; otherwise the queue
(squeue for SLURM, the worker pid for the local executor) says pending/running; a row whose job
left the queue without a record is ``lost`` (killed, out of memory, node failure) and its job log
is shown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .dispatch import Submission, load_submissions, local_job_alive, squeue_states
from .store import ResultsRoot

STATES = ("pending", "running", "ok", "failed", "cancelled", "lost", "skipped")


@dataclass
class RowState:
    id: str
    row: int
    state: str
    job_id: str = ""
    log: str = ""
    error: str = ""


@dataclass
class SubmissionStatus:
    submission: Submission
    rows: list[RowState] = field(default_factory=list)
    queue_known: bool = True  # False when the queue could not be asked

    @property
    def counts(self) -> Counter:
        return Counter(r.state for r in self.rows)

    @property
    def active(self) -> bool:
        return any(r.state in ("pending", "running") for r in self.rows)


def _queue_state(slurm_state: str) -> str:
    return "pending" if slurm_state in ("PENDING", "CONFIGURING", "REQUEUED", "SUSPENDED") else "running"


def log_tail(path: str, lines: int = 5) -> str:
    """Last lines of a job log (submitit's stderr file), '' when there is none."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def submission_status(results: ResultsRoot, submission: Submission) -> SubmissionStatus:
    job_of_row = {rid: job for job in submission.jobs for rid in job["rows"]}
    records = {rid: results.read_record(rid) or {} for rid in submission.rows}
    finished = {rid for rid, record in records.items() if record.get("status") in ("ok", "failed")}
    pending_jobs = [
        job["job_id"] for job in submission.jobs if any(rid not in finished for rid in job["rows"])
    ]
    queue: dict[str, str] | None
    if submission.executor == "slurm":
        queue = squeue_states(pending_jobs)
    elif submission.executor == "local":
        queue = {j: "RUNNING" for j in pending_jobs if local_job_alive(j)}
    else:
        queue = {}
    status = SubmissionStatus(submission=submission, queue_known=queue is not None)
    queue = queue or {}
    for rid, row in submission.rows.items():
        job = job_of_row.get(rid, {})
        job_id, log = str(job.get("job_id", "")), str(job.get("log", ""))
        if rid in finished:
            record = records[rid]
            status.rows.append(RowState(rid, row, record["status"], job_id, log, record.get("error", "")))
            continue
        in_queue = queue.get(job_id)  # squeue -r lists every array task as "<array>_<task>"
        if in_queue:
            status.rows.append(RowState(rid, row, _queue_state(in_queue), job_id, log))
        elif not status.queue_known:
            status.rows.append(RowState(rid, row, "pending", job_id, log, "queue state unknown"))
        elif submission.cancelled:
            status.rows.append(RowState(rid, row, "cancelled", job_id, log))
        else:
            status.rows.append(RowState(rid, row, "lost", job_id, log, log_tail(log)))
    for rid, reason in submission.skipped.items():
        status.rows.append(RowState(rid, 0, "skipped", error=reason))
    return status


def all_status(results: ResultsRoot) -> list[SubmissionStatus]:
    return [submission_status(results, s) for s in load_submissions(results)]


def format_status(status: SubmissionStatus, details: bool = True) -> str:
    s = status.submission
    counts = status.counts
    lines = [
        f"submission {s.submission_id}  executor={s.executor}  jobs={s.array_job_id or '-'}  "
        f"created={s.created_at}",
        "  " + "  ".join(f"{state}={counts.get(state, 0)}" for state in STATES),
    ]
    if not status.queue_known:
        lines.append("  (the queue could not be asked; unfinished rows shown as pending)")
    if details:
        for r in sorted(status.rows, key=lambda r: r.row):
            if r.state in ("failed", "lost"):
                last = r.error.splitlines()[-1] if r.error else ""
                lines.append(f"  row {r.row} [{r.id}] {r.state} job {r.job_id}: {last}")
                if r.log:
                    lines.append(f"    log: {r.log}")
                    tail = log_tail(r.log, 3)
                    if tail:
                        lines.extend("    | " + t for t in tail.splitlines())
    return "\n".join(lines)
