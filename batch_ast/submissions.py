"""Submission stage, the record: what a submission was, saved as ``submissions/<id>.json`` in the
results root so that later commands (status, cancel, collect, the next submit's claims) find it.

A submission file is anyone's words (the root may be group-writable): ``SubmissionRecord.from_json``
checks every field, ``read_submissions`` bounds how much is read and lists a bad file instead of
failing, and "latest" is never a file dated in the future.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .backends import BACKENDS
from .manifest import MAX_ROWS_ENV, max_rows
from .private import SUBMISSION_ID, is_private_submitit_folder
from .store import ROW_ID, ResultsRoot, load_json
from .text import describe_os_error, short_path


@dataclass
class SubmissionRecord:
    """What was submitted, saved under results/submissions/ so later commands find it."""

    submission_id: str
    executor: str
    created_at: str
    manifest: str
    root: str
    submitit_folder: str
    jobs: list[dict[str, Any]] = field(default_factory=list)  # job_id, rows (ids), log
    rows: dict[str, int] = field(default_factory=dict)  # row id -> manifest row
    # row id -> what the row is (inputs, name, hyperparameters), so the index can list rows that
    # never wrote a record (pending, lost, cancelled) with their settings
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # row id -> reason
    parameters: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False
    # the host `submit` ran on ("": before 0.3): a local executor's jobs are its processes, which
    # only that host can see or signal
    host: str = ""
    # who owns the submission's file (read from the file system, never saved in it; -1: made by
    # this process, not read)
    owner_uid: int = field(default=-1, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "owner_uid"}

    @property
    def mine(self) -> bool:
        """Whether this user submitted it: its file is the user's and its submitit folder is the
        user's private folder of this submission (a file in a shared root is anyone's words)."""
        return self.owner_uid in (-1, os.geteuid()) and is_private_submitit_folder(
            self.submitit_folder, self.submission_id
        )

    @property
    def created_in_future(self) -> bool:
        """Whether the id's time lies more than an hour ahead of this host's clock (planted, or a
        clock far off): such a submission is never taken for the latest."""
        try:
            made = datetime.strptime(self.submission_id[:15], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
        except ValueError:
            return True
        return (made - datetime.now(timezone.utc)).total_seconds() > 3600

    @classmethod
    def from_json(cls, data: Any, file_name: str = "") -> SubmissionRecord:
        """A submission read from the root, every field checked (``SubmissionError`` says which):
        its id (the file's name), a known executor, job ids of that executor's form, row ids,
        jobs that run only the submission's rows. A submission file is anyone's words."""
        if not isinstance(data, dict):
            raise SubmissionError(f"not a submission (a JSON {type(data).__name__})")
        texts = {
            k: data.get(k)
            for k in ("submission_id", "executor", "created_at", "manifest", "root", "submitit_folder")
        }
        bad = [k for k, v in texts.items() if not isinstance(v, str) or len(v) > 4096]
        if bad:
            raise SubmissionError(f"{', '.join(bad)} must be text")
        sid = texts["submission_id"]
        if not SUBMISSION_ID.fullmatch(sid) or (file_name and file_name != f"{sid}.json"):
            raise SubmissionError(f"submission_id {sid[:80]!r} is not a submission id or not the file's name")
        backend = BACKENDS.get(texts["executor"])
        if backend is None:
            raise SubmissionError(f"unknown executor {texts['executor'][:40]!r}")
        rows, specs, skipped = (data.get(k, {}) for k in ("rows", "specs", "skipped"))
        if isinstance(rows, dict) and len(rows) > max_rows():
            raise SubmissionError(f"{len(rows)} rows, more than the {max_rows()} a submission may have "
                                  f"(${MAX_ROWS_ENV} raises it)")
        if not isinstance(rows, dict) or not all(
                ROW_ID.fullmatch(str(k)) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for k, v in rows.items()):
            raise SubmissionError("rows must map row ids to manifest rows")
        if not isinstance(skipped, dict) or not all(ROW_ID.fullmatch(str(k)) and isinstance(v, str)
                                                    for k, v in skipped.items()):
            raise SubmissionError("skipped must map row ids to reasons")
        if not isinstance(specs, dict) or not all(
            k in rows and isinstance(v, dict) for k, v in specs.items()
        ):
            raise SubmissionError("specs must map the submission's row ids to row settings")
        jobs = data.get("jobs", [])
        if not isinstance(jobs, list):
            raise SubmissionError("jobs must be a list")
        checked_jobs = []
        for job in jobs:
            if not isinstance(job, dict) or not isinstance(job.get("job_id"), str) \
                    or not backend.job_id_pattern.fullmatch(job["job_id"]):
                raise SubmissionError(f"a job without a valid {backend.name} job id")
            if not isinstance(job.get("rows"), list) or not all(
                isinstance(r, str) and r in rows for r in job["rows"]
            ):
                raise SubmissionError(f"job {job['job_id']} must list rows of the submission")
            checked_jobs.append(
                {"job_id": job["job_id"], "rows": list(job["rows"]), "log": str(job.get("log", ""))}
            )
        parameters = data.get("parameters", {})
        cancelled = data.get("cancelled", False)
        if not isinstance(parameters, dict) or not isinstance(cancelled, bool):
            raise SubmissionError("parameters must be a mapping and cancelled true or false")
        host = data.get("host", "")
        if not isinstance(host, str) or len(host) > 300:
            raise SubmissionError("host must be a host name")
        return cls(**texts, jobs=checked_jobs, rows=dict(rows), specs=dict(specs), skipped=dict(skipped),
                   parameters={k: v for k, v in parameters.items() if isinstance(v, (str, int, float, bool))},
                   cancelled=cancelled, host=host)

    @property
    def array_job_id(self) -> str:
        ids = {str(j["job_id"]).split("_")[0] for j in self.jobs}
        return ",".join(sorted(ids))

    def job_log(self, results: ResultsRoot, job_id: str) -> tuple[Path, Path] | None:
        """(log path, the folder it must be read within) of one of this submission's jobs, or None
        when its folder is neither this user's private folder of the submission nor the root's own
        ``submitit/`` (where versions before 0.2 kept it). Never the ``log`` a file names: a planted
        submission would make status read, and the index publish, any file the user can read."""
        if not any(job["job_id"] == job_id for job in self.jobs):
            return None
        folder = Path(self.submitit_folder)
        legacy = results.submitit_dir
        if folder == legacy:
            return legacy / job_id / f"{job_id}_0_log.err", results.root
        if is_private_submitit_folder(folder, self.submission_id):
            return folder / job_id / f"{job_id}_0_log.err", folder
        return None


class SubmissionError(ValueError):
    """A submission file that is not a valid submission."""


def new_submission_id() -> str:
    """Sortable by time (UTC, to the microsecond), unique by a random suffix. Whole seconds were
    not enough: a ``--force`` rerun submitted within the second of the run it replaces took that
    run's records for its own (``status.finishes``). The older form (no fraction) sorts before
    every id of the same second in this one ('-' < '.')."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%f") + "-" + uuid.uuid4().hex[:6]


def submission_path(results: ResultsRoot, submission_id: str) -> Path:
    return results.submissions_dir / f"{submission_id}.json"


def save_submission(results: ResultsRoot, submission: SubmissionRecord) -> Path:
    path = submission_path(results, submission.submission_id)
    results.write_json(path, submission.to_dict())
    return path


MAX_SUBMISSION_BYTES = 256 << 20  # ~1 KB a row: the 100,000 rows of the default row cap, and room
MAX_SUBMISSIONS = 5000  # submission files read from one root, the newest; older ones are listed as not read


def read_submissions(results: ResultsRoot) -> tuple[list[SubmissionRecord], list[str]]:
    """(valid submissions oldest first, "file: why" for each submission file that is not one).
    A bad file is listed, never fatal: status shows it, the others are used."""
    out, problems = [], []
    folder = results.submissions_dir
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if len(paths) > MAX_SUBMISSIONS:
        problems.append(
            f"{short_path(folder)}: {len(paths)} submission files; only the newest {MAX_SUBMISSIONS} "
            "are read (move older ones elsewhere)"
        )
        paths = paths[-MAX_SUBMISSIONS:]
    for path in paths:
        try:
            out.append(read_submission_file(results, path))
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(describe_os_error(exc))
        except ValueError as exc:  # SubmissionError, bad JSON
            problems.append(f"{path}: {exc}")
    return out, problems


def read_submission_file(results: ResultsRoot, path: Path) -> SubmissionRecord:
    """One submission file, validated, with its owner (raises OSError or ValueError)."""
    record = SubmissionRecord.from_json(load_json(path, results.root, MAX_SUBMISSION_BYTES), path.name)
    record.owner_uid = os.lstat(path).st_uid
    return record


def cancelled_since(results: ResultsRoot, submission: SubmissionRecord) -> bool:
    """Whether the submission's own file now says it was cancelled (by ``batch-ast cancel`` in
    another process, say). Only the user's own file counts: in a shared root anyone may have
    replaced it."""
    try:
        saved = read_submission_file(results, submission_path(results, submission.submission_id))
    except (OSError, ValueError):
        return False
    return saved.submission_id == submission.submission_id and saved.mine and saved.cancelled


def latest_submission(submissions: list[SubmissionRecord]) -> SubmissionRecord | None:
    """The submission that status, cancel and ``find_submission`` mean by default: this user's own
    newest; where the user has none here (a colleague's root), the newest; never one dated in the
    future (a planted id would stay "latest" for ever)."""
    current = [s for s in submissions if not s.created_in_future]
    mine = [s for s in current if s.mine]
    return (mine or current or [None])[-1]


def valid_submissions(results: ResultsRoot) -> list[SubmissionRecord]:
    """All valid recorded submissions, oldest first (``read_submissions`` says which were not)."""
    return read_submissions(results)[0]
