"""Status of submissions: records on disk first, then ONE queue query for what is not finished.

Works without SLURM accounting: a row is done/failed when its record says so; otherwise the queue
(squeue for SLURM, the worker pid for the local executor) says pending/running; a row whose job
left the queue without a record is ``lost`` (killed, out of memory, node failure) and its job log
is shown.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .backends import get_backend
from .config import flatten_record
from .progress import read_progress
from .record import Record, RecordError, error_type_of, read_record
from .store import ResultsRoot, open_regular
from .submissions import SubmissionRecord, valid_submissions
from .text import inert

STATES = ("pending", "running", "ok", "failed", "invalid", "cancelled", "lost", "skipped")


@dataclass
class RowState:
    id: str
    row: int
    state: str
    job_id: str = ""
    log: tuple[Path, Path] | None = None  # (job log, the folder it must be read within)
    error: str = ""


@dataclass
class SubmissionStatus:
    submission: SubmissionRecord
    rows: list[RowState] = field(default_factory=list)
    queue_known: bool = True  # False when the queue could not be asked
    jobs_elsewhere: str = ""  # the host whose processes the jobs are, when that is not this one
    finished: list[dict] = field(default_factory=list)  # the records (flattened) that finish its rows

    @property
    def counts(self) -> Counter:
        return Counter(r.state for r in self.rows)

    @property
    def active(self) -> bool:
        return any(r.state in ("pending", "running") for r in self.rows)


WAITING = "waiting for its turn in its running job"  # a pending row's note: its job runs, it has not begun
ROW_START = re.compile(r"^\[row ([0-9a-f]+)\] start")
MAX_LOG_BYTES = 1 << 20  # the tail of a log is what status shows: read at most its last MiB


def read_log(path: Path, within: Path) -> str:
    """The text of a job log (its last MAX_LOG_BYTES), read only as a regular file reached
    without a symlink below ``within``; '' when there is none or it cannot be read so."""
    try:
        with open_regular(path, within) as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - MAX_LOG_BYTES))
            return fh.read(MAX_LOG_BYTES).decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return ""


def log_tail(path: str | Path | tuple[Path, Path] | None, lines: int = 5, row_id: str = "") -> str:
    """Last lines of a job log (submitit's stderr file), '' when there is none. ``path`` is
    (log, folder it must lie in) as ``SubmissionRecord.job_log`` gives it, or a plain path (the
    user's own). With ``row_id``, only that row's part of a log shared by a job's rows: from its
    last ``[row <id>] start`` line (job.py writes one per row) to the next row's start."""
    if not path:
        return ""
    log, within = path if isinstance(path, tuple) else (Path(path), None)
    text = read_log(log, within)
    all_lines = text.rstrip().splitlines()
    if row_id:
        starts = [(i, m.group(1)) for i, line in enumerate(all_lines) if (m := ROW_START.match(line))]
        mine = [i for i, rid in starts if rid == row_id]
        if not mine:
            return ""
        after = [i for i, rid in starts if i > mine[-1] and rid != row_id]
        all_lines = all_lines[mine[-1] : after[0] if after else None]
    return "\n".join(all_lines[-lines:])


def finishes(record: dict, submission: SubmissionRecord) -> bool:
    """Whether ``record`` finishes ``submission``'s row: written by it or by a later submission.
    A record from an *earlier* submission is the result that ``--force`` or ``--retry-failed`` is
    replacing, so progress, ``--wait`` and exit codes must not count it. Submission ids start with
    their UTC time (``new_submission_id``); records without one (older versions) count."""
    if record.get("status") not in ("ok", "failed"):
        return False
    written_by = str(record.get("submission_id") or "")
    return not written_by or written_by.split("-")[0] >= submission.submission_id.split("-")[0]


def unfinished_jobs(submission: SubmissionRecord, records: dict[str, dict]) -> list[str]:
    """Jobs of the submission with a row that ``records`` do not show finished by it: the only
    ones whose queue state matters."""
    return [job["job_id"] for job in submission.jobs
            if any(not finishes(records.get(rid) or {}, submission) for rid in job["rows"])]


def submission_status(
    submission: SubmissionRecord, records: dict[str, dict], queue: dict[str, str] | None,
    logs: dict[str, tuple[Path, Path]] | None = None, invalid: dict[str, str] | None = None,
    begun: set[str] | None = None,
) -> SubmissionStatus:
    """Each row's state, from its record where that finishes the row, else from ``queue`` (the
    backend's {job id: pending|running} of ``unfinished_jobs``; None when it could not be asked):
    queued or running; unknown (shown pending); cancelled; or ``lost`` (its job left the queue
    without a record, with the tail of its log: ``logs`` maps job ids to ``job_log``'s answer).
    With ``begun`` (the rows whose heartbeat says they started), a row of a running job is running
    only if it has begun, else pending (``WAITING``): a job runs its rows one or K at a time.
    Pure but for reading those logs: no queue."""
    job_of_row = {rid: job for job in submission.jobs for rid in job["rows"]}
    status = SubmissionStatus(submission=submission, queue_known=queue is not None)
    queue = queue or {}
    for rid, row in submission.rows.items():
        record = records.get(rid) or {}
        job = job_of_row.get(rid, {})
        job_id = str(job.get("job_id", ""))
        log = logs.get(job_id) if logs else None
        if finishes(record, submission):
            status.rows.append(RowState(rid, row, record["status"], job_id, log, record.get("error", "")))
            status.finished.append(flatten_record(record))
            continue
        in_queue = queue.get(job_id)  # squeue -r lists every array task as "<array>_<task>"
        if in_queue == "running" and begun is not None and rid not in begun:
            status.rows.append(RowState(rid, row, "pending", job_id, log, WAITING))
        elif in_queue:
            status.rows.append(RowState(rid, row, in_queue, job_id, log))
        elif invalid and rid in invalid:  # its record file is not a valid record: its own problem
            status.rows.append(RowState(rid, row, "invalid", job_id, log, invalid[rid]))
        elif not status.queue_known:
            status.rows.append(RowState(rid, row, "pending", job_id, log, "queue state unknown"))
        elif submission.cancelled:
            status.rows.append(RowState(rid, row, "cancelled", job_id, log))
        else:
            shared = len(job.get("rows", ())) > 1
            status.rows.append(
                RowState(rid, row, "lost", job_id, log, log_tail(log, row_id=rid if shared else ""))
            )
    for rid, reason in submission.skipped.items():
        status.rows.append(RowState(rid, 0, "skipped", error=reason))
    return status


def query_status(results: ResultsRoot, submission: SubmissionRecord) -> SubmissionStatus:
    """``submission_status`` from the records on disk and ONE query of the submission's queue."""
    loaded = {rid: read_record(results, rid) for rid in submission.rows}
    records = {rid: record.to_dict() if record else {} for rid, (record, _) in loaded.items()}
    invalid = {rid: problem for rid, (record, problem) in loaded.items() if problem}
    elsewhere = jobs_elsewhere(submission)
    queue = None if elsewhere else get_backend(submission.executor).queue_states(
        unfinished_jobs(submission, records), submission.submitit_folder)
    logs = {
        job["job_id"]: log for job in submission.jobs if (log := submission.job_log(results, job["job_id"]))
    }
    begun = begun_rows(results, submission, queue)
    status = submission_status(submission, records, queue, logs, invalid, begun)
    status.jobs_elsewhere = elsewhere
    return status


def begun_rows(results: ResultsRoot, submission: SubmissionRecord, queue: dict[str, str] | None) -> set[str]:
    """The rows of the submission's running jobs whose heartbeat (this submission's, or one of an
    older version that names none) says they have started: a small file read per such row."""
    begun: set[str] = set()
    for job in submission.jobs:
        if (queue or {}).get(str(job.get("job_id", ""))) != "running":
            continue
        for rid in job["rows"]:
            progress = read_progress(results, rid)
            if progress is not None and progress.submission_id in ("", submission.submission_id):
                begun.add(rid)
    return begun


def jobs_elsewhere(submission: SubmissionRecord) -> str:
    """The host whose processes a submission's jobs are, when this is another host ("" where
    this host can see them: a queue, or local jobs started here). A local job's id is a pid of
    the host that submitted it: asked here it would name another process, or none, and its rows
    would read as lost, their claims as free, while they still run there."""
    if get_backend(submission.executor).jobs_local_to_host and submission.host \
            and submission.host != socket.gethostname():
        return submission.host
    return ""


def spec_row(row_id: str, spec: dict, row: int) -> dict:
    """The index row of a submitted row without a record, from the submission's copy of its spec
    (checked like a record: the submission file is anyone's words)."""
    try:
        return flatten_record(Record.from_json({**spec, "id": row_id, "status": "running"}, row_id).to_dict())
    except RecordError:
        return {"id": row_id, "row": row}


def unrecorded_rows(results: ResultsRoot, recorded: set[str]) -> list[dict]:
    """Index rows for submitted rows that have no record: their settings from the submission that
    last submitted them, their state (pending, running, lost, cancelled) from its queue. Only rows
    of this user's own submissions, or whose row folder exists (every submit makes it)."""
    latest: dict[str, SubmissionRecord] = {}
    # a row that batch-ast submitted has a folder (its claim was made there): a submission file
    # listing 150,000 rows that nobody ran must not put 150,000 phantom rows into the index
    made = results.row_folders()
    for sub in valid_submissions(results):  # oldest first: later submissions win
        mine = sub.mine
        for rid in sub.rows:
            if rid not in recorded and (mine or rid in made):
                latest[rid] = sub
    rows = []
    for sub in {id(s): s for s in latest.values()}.values():
        status = query_status(results, sub)
        backend = get_backend(sub.executor)
        for state in status.rows:
            if latest.get(state.id) is not sub or state.state in ("ok", "failed", "invalid", "skipped"):
                continue
            rows.append({
                **spec_row(state.id, sub.specs.get(state.id, {}), state.row),
                "status": state.state,
                "error": state.error.splitlines()[-1][:500] if state.error else "",
                "submission_id": sub.submission_id,
                "slurm_job_id": backend.index_job_id(state.job_id),
            })
    return rows


MAX_RUNNING_SHOWN = 10  # running rows listed with their progress; more are counted


def failure_kind(row: RowState) -> str:
    """What a failure is grouped by: the exception's class for a failed row, else its state."""
    if row.state == "failed":
        return error_type_of(row.error) or "failed"
    return {"lost": "lost (its job left the queue without a record)", "invalid": "invalid record"}.get(
        row.state, row.state
    )


def format_status(status: SubmissionStatus, details: bool = True, every_failure: bool = False,
                  results: ResultsRoot | None = None) -> str:
    """The submission's status: its counts; with ``details``, failures grouped by kind (a count
    and one example each, with its log's path and tail; ``every_failure``: each row instead) and,
    given ``results``, the running rows' progress from their heartbeats."""
    s = status.submission
    counts = status.counts
    lines = [
        f"submission {s.submission_id}  executor={s.executor}  job ids={s.array_job_id or '-'}  "
        f"created={s.created_at}",
        "  " + "  ".join(f"{state}={counts.get(state, 0)}" for state in STATES),
    ]
    if status.jobs_elsewhere:
        lines.append(f"  (its local jobs run on host {status.jobs_elsewhere}, which alone can see them; "
                     "unfinished rows shown as pending)")
    elif not status.queue_known:
        lines.append("  (the queue could not be asked; unfinished rows shown as pending)")
    if not details:
        return "\n".join(map(inert, lines))
    if results is not None:
        lines += _running_lines(status, results)
    job_rows = {rid: job["rows"] for job in s.jobs for rid in job["rows"]}
    failures = sorted(
        (r for r in status.rows if r.state in ("failed", "lost", "invalid")), key=lambda r: r.row
    )
    groups: dict[str, list[RowState]] = {}
    for r in failures:
        groups.setdefault(failure_kind(r), []).append(r)
    if groups and not every_failure:
        lines.append("  failures by kind (one example each; status --rows lists every row):")
    for kind, rows in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        if not every_failure:
            lines.append(f"    {kind}: {len(rows)} row(s)")
        indent = "    " if every_failure else "        "
        for r in rows if every_failure else rows[:1]:
            last = r.error.splitlines()[-1] if r.error else ""
            lines.append(
                f"{'  ' if every_failure else '      e.g. '}row {r.row} [{r.id}] {r.state} job {r.job_id}: "
                f"{last}"
            )
            if r.log:
                lines.append(f"{indent}log: {r.log[0]}")
                shared = len(job_rows.get(r.id, ())) > 1
                tail = log_tail(r.log, 3, row_id=r.id if shared else "")
                if tail:
                    lines.extend(f"{indent}| " + t for t in tail.splitlines())
    return "\n".join(map(inert, lines))  # every line carries words of the root


def _running_lines(status: SubmissionStatus, results: ResultsRoot) -> list[str]:
    """A line per running row (at most MAX_RUNNING_SHOWN): starting, or its iteration, loss, speed,
    ETA, and how old that news is; the rows of running jobs that wait their turn are counted."""
    running = sorted((r for r in status.rows if r.state == "running"), key=lambda r: r.row)
    now, lines, silent = time.time(), [], 0
    for r in running:
        progress = read_progress(results, r.id)
        if progress is None or progress.submission_id not in ("", status.submission.submission_id):
            silent += 1  # its heartbeat went between two reads: it is finishing
        elif len(lines) < MAX_RUNNING_SHOWN:
            where = f" on {progress.host}" if progress.host else ""
            lines.append(f"  running row {r.row} [{r.id}] job {r.job_id}{where}: {progress.describe(now)}")
    shown_more = len(running) - silent - len(lines)
    if shown_more:
        lines.append(f"  … and {shown_more} more running row(s)")
    if silent:
        lines.append(f"  {silent} running row(s) finishing (no heartbeat)")
    waiting = sum(1 for r in status.rows if r.state == "pending" and r.error == WAITING)
    if waiting:
        lines.append(f"  {waiting} pending row(s) waiting for their turn in running jobs")
    return lines
