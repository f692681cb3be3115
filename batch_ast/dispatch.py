"""Dispatch stage: cluster profiles, packing rows into job arrays, submitting them through a
backend's submitit executor, and the submission file that later commands read.

It knows nothing of spectrograms; what differs between SLURM, local and debug lives in
backends.py. A profile's keys are mapped to submitit's parameter names here.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit

from .backends import Backend
from .config import ConfigError, read_config_file
from .job import DEFAULTS, TransferJob
from .plan import RowSpec, chunk
from .store import ResultsRoot, write_json_atomic

# Profile keys users write -> submitit parameter names.
PROFILE_KEYS = {
    "partition": "slurm_partition",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "timeout_min": "timeout_min",
    "array_parallelism": "slurm_array_parallelism",
    "signal_delay_s": "slurm_signal_delay_s",
    "max_num_timeout": "slurm_max_num_timeout",
    "setup": "slurm_setup",
    "additional_parameters": "slurm_additional_parameters",
    "job_name": "name",
    "gres": "slurm_gres",
    "exclude": "slurm_exclude",
    "nodelist": "slurm_nodelist",
    "mail_type": "slurm_mail_type",
    "mail_user": "slurm_mail_user",
    # how a job starts Python, e.g. "apptainer exec image.sif python" (submitit's executor argument)
    "python": "python",
}
PROFILE_ENV = "BATCH_AST_PROFILE"
# Profile keys batch-ast handles itself (not submitit parameters).
NON_SUBMITIT_KEYS = ("rows_per_job", "max_array_size", "batch_rows")
# Many sites cap job arrays (MaxArraySize, often 1001); submitit does not split: we do.
DEFAULT_MAX_ARRAY_SIZE = 1000


class DispatchError(RuntimeError):
    """The submission cannot be made (bad profile, no cluster where one was asked for...)."""


def user_profile_path() -> Path:
    """The user's default profile: $XDG_CONFIG_HOME/batch-ast/profile.yaml (~/.config by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "batch-ast" / "profile.yaml"


def find_profile(explicit: str | Path | None, site_defaults: bool = True) -> tuple[Path | None, str]:
    """The profile a submit uses and where it came from: ``--profile``; else the file named by
    $BATCH_AST_PROFILE (a site sets it for everyone, e.g. in a module file); else the user's own
    default; else none. ``site_defaults=False`` (``--no-profile``) ignores the last two."""
    if explicit:
        return Path(explicit), "--profile"
    if not site_defaults:
        return None, ""
    named = os.environ.get(PROFILE_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise DispatchError(f"${PROFILE_ENV} names {named!r}, which is not a file (unset it or use --no-profile)")
        return path, f"${PROFILE_ENV}"
    path = user_profile_path()
    try:
        found = path.is_file()
    except OSError:  # a config folder this user may not search (EACCES): no default profile
        found = False
    return (path, "the user's default profile") if found else (None, "")


def load_profile(path: str | Path | None) -> dict[str, Any]:
    """Read a cluster profile YAML (see slurm/profile.example.yaml) into submitit parameters."""
    if path is None:
        return {}
    try:
        data = read_config_file(path, "profile")
    except ConfigError as exc:
        raise DispatchError(str(exc)) from None
    unknown = sorted(set(data) - set(PROFILE_KEYS) - set(NON_SUBMITIT_KEYS))
    if unknown:
        raise DispatchError(f"{path}: unknown profile key(s) {unknown}; known: {sorted([*PROFILE_KEYS, *NON_SUBMITIT_KEYS])}")
    timeout = data.get("timeout_min")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1):
        raise DispatchError(f"{path}: timeout_min must be an integer >= 1 (minutes), not {str(timeout)[:40]!r}")
    return {PROFILE_KEYS.get(k, k): v for k, v in data.items()}


@dataclass(frozen=True)
class Packing:
    """How rows become jobs: rows per job (None: the backend's default), the largest array a
    site allows, and how many rows of a job are optimised together (batched.py)."""

    rows_per_job: int | None = None
    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE
    batch_rows: int = 1


def job_parameters(
    profile: dict[str, Any],
    *,
    rows_per_job: int | None = None,
    max_array_size: int | None = None,
    batch_rows: int | None = None,
    timeout_min: int | None = None,
    gpus: int | None = None,
    array_parallelism: int | None = None,
    max_retries: int | None = None,
) -> tuple[dict[str, Any], Packing, int]:
    """(submitit parameters, packing, resume limit) of a submission: the profile's (``load_profile``)
    with the caller's options on top. The resume limit bounds both batch-ast's resumes of a row and
    submitit's time-limit requeues (its max_num_timeout). DispatchError lists every bad value."""
    params = dict(profile)
    packing = {key: value if value is not None else params.get(key)
               for key, value in (("rows_per_job", rows_per_job), ("max_array_size", max_array_size),
                                  ("batch_rows", batch_rows))}
    for key in NON_SUBMITIT_KEYS:
        params.pop(key, None)
    bad = [f"{k} must be an integer >= 1, not {v!r}" for k, v in packing.items()
           if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1)]
    for name, value, low in (("timeout_min", timeout_min, 1), ("max_retries", max_retries, 0),
                             ("array_parallelism", array_parallelism, 1)):
        if value is not None and value < low:
            bad.append(f"--{name.replace('_', '-')} must be >= {low}, not {value}")
    if bad:
        raise DispatchError("; ".join(bad))
    if array_parallelism:
        params["slurm_array_parallelism"] = array_parallelism
    if timeout_min:
        params["timeout_min"] = timeout_min
    if gpus is not None:
        params["gpus_per_node"] = gpus
    limit = max_retries if max_retries is not None else params.get("slurm_max_num_timeout")
    limit = DEFAULTS.max_resumes if limit is None else int(limit)
    params["slurm_max_num_timeout"] = limit
    return params, Packing(packing["rows_per_job"], packing["max_array_size"] or DEFAULT_MAX_ARRAY_SIZE,
                           packing["batch_rows"] or 1), limit


@dataclass
class SubmissionRecord:
    """What was submitted, saved under results/submissions/ so later commands find it."""

    submission_id: str
    executor: str
    created_at: str
    manifest: str
    root: str
    submitit_folder: str
    jobs: list[dict[str, Any]] = field(default_factory=list)  # job_id, rows (ids)
    rows: dict[str, int] = field(default_factory=dict)  # row id -> manifest row
    # row id -> what the row is (inputs, name, hyperparameters), so the index can list rows that
    # never wrote a record (pending, lost, cancelled) with their settings
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # row id -> reason
    parameters: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def array_job_id(self) -> str:
        ids = {str(j["job_id"]).split("_")[0] for j in self.jobs}
        return ",".join(sorted(ids))


def new_submission_id() -> str:
    """Sortable by time (UTC, to the microsecond), unique by a random suffix. Whole seconds were
    not enough: a ``--force`` rerun submitted within the second of the run it replaces took that
    run's records for its own (``status.finishes``). The older form (no fraction) sorts before
    every id of the same second in this one ('-' < '.')."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%f") + "-" + uuid.uuid4().hex[:6]


RESOURCE_TO_PARAM = {"timeout_min": "timeout_min", "gpus": "gpus_per_node", "mem_gb": "mem_gb", "cpus": "cpus_per_task"}


def _group_by_resources(specs: list[RowSpec]) -> list[tuple[dict[str, Any], list[RowSpec]]]:
    """Rows with equal per-row resources share one job array (an array has one resource request)."""
    groups: dict[tuple, list[RowSpec]] = {}
    for spec in specs:
        groups.setdefault(tuple(sorted(spec.resources.items())), []).append(spec)
    return [(dict(key), rows) for key, rows in groups.items()]


def submit(
    specs: list[RowSpec],
    results: ResultsRoot,
    backend: Backend,
    manifest: Path,
    rows_per_job: int,
    params: dict[str, Any] | None = None,
    skipped: dict[str, str] | None = None,
    job: TransferJob | None = None,
    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE,
    submission_id: str = "",
) -> tuple[SubmissionRecord, list[submitit.Job]]:
    """Submit the rows as job arrays (packs of ``rows_per_job`` rows; one array per distinct
    per-row resource request, split so no array has more than ``max_array_size`` tasks) and
    record the submission under the results root."""
    params = dict(params or {})
    created = datetime.now(timezone.utc)
    submission_id = submission_id or new_submission_id()
    job = (job or TransferJob()).for_submission(submission_id)
    folder = results.submitit_dir / "%j"
    all_jobs: list[submitit.Job] = []
    job_entries: list[dict[str, Any]] = []
    for resources, group in _group_by_resources(specs):
        group_params = {**params, **{RESOURCE_TO_PARAM[k]: v for k, v in resources.items()}}
        executor = backend.make_executor(folder, group_params)
        all_packs = chunk(group, rows_per_job)
        array_size = max(1, max_array_size)
        for start in range(0, len(all_packs), array_size):
            packs = all_packs[start : start + array_size]
            payloads = [[s.to_dict() for s in pack] for pack in packs]
            jobs = executor.map_array(job, payloads, [results] * len(payloads))
            all_jobs.extend(jobs)
            job_entries.extend(
                {"job_id": str(j.job_id), "rows": [s.id for s in pack], "log": str(j.paths.stderr)}
                for j, pack in zip(jobs, packs, strict=True)
            )
    submission = SubmissionRecord(
        submission_id=submission_id,
        executor=backend.name,
        created_at=created.isoformat(timespec="seconds"),
        manifest=str(manifest.resolve()),
        root=str(results.root),
        submitit_folder=str(results.submitit_dir),
        jobs=job_entries,
        rows={s.id: s.row for s in specs},
        specs={s.id: {k: v for k, v in s.to_dict().items() if k != "resources"} for s in specs},
        skipped=dict(skipped or {}),
        parameters={k: v for k, v in params.items() if isinstance(v, (str, int, float, bool))},
    )
    save_submission(results, submission)
    return submission, all_jobs


def save_submission(results: ResultsRoot, submission: SubmissionRecord) -> Path:
    path = results.submissions_dir / f"{submission.submission_id}.json"
    write_json_atomic(path, submission.to_dict())
    return path


def load_submissions(results: ResultsRoot) -> list[SubmissionRecord]:
    """All recorded submissions, oldest first; unreadable files are skipped."""
    import json

    out = []
    folder = results.submissions_dir
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(SubmissionRecord(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            continue
    return out
