"""Dispatch stage: packing rows into job arrays and submitting them through a backend's submitit
executor (the options and profiles that shape them are ``options.py``'s, the submission file
later commands read is ``submissions.py``'s).

It knows nothing of spectrograms; what differs between SLURM, local and debug lives in
backends.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit

from .backends import Backend
from .job import TransferJob
from .options import BY_NAME, OPTIONS, merged
from .plan import RowSpec, chunk
from .private import state_dir, submitit_folder
from .store import ResultsRoot
from .submissions import SubmissionRecord, new_submission_id, save_submission


@dataclass(frozen=True)
class Packing:
    """How rows become jobs: rows per job (None: the backend's default), the largest array a
    site allows, how many rows of a job are optimised together (batched.py), how many row
    processes share a job's allocation (pool.py), and whether a row's files, figures and metrics
    are made while the next row optimises (None: where rows run on a GPU)."""

    rows_per_job: int | None = None
    max_array_size: int = BY_NAME["max_array_size"].default
    batch_rows: int = 1
    processes_per_job: int = 1
    finish_in_background: bool | None = None


def job_parameters(profile: dict[str, Any], options: Any = None) -> tuple[dict[str, Any], Packing, int]:
    """(submitit parameters, packing, retry limit) of a submission: the profile's values
    (``load_profile``) with the options (``SubmitOptions``, already checked) on top. The retry
    limit bounds both batch-ast's resumes of a row and submitit's time-limit requeues."""
    values = merged(profile, options)
    params = {o.submitit: values[o.name] for o in OPTIONS if o.submitit and values[o.name] is not None}
    packing = Packing(values["rows_per_job"], values["max_array_size"], values["batch_rows"],
                      values["processes_per_job"], values["finish_in_background"])
    return params, packing, values["max_retries"]


# A manifest's per-row resource columns -> the option each is (its submitit parameter comes from there)
RESOURCE_TO_PARAM = {
    column: BY_NAME[option].submitit
    for column, option in (("timeout_min", "timeout_min"), ("gpus", "gpus"), ("mem_gb", "mem_gb"),
                           ("cpus", "cpus_per_task"))
}


def resource_groups(specs: list[RowSpec]) -> list[tuple[dict[str, Any], list[RowSpec]]]:
    """Rows with equal per-row resources share one job array (an array has one resource request)."""
    groups: dict[tuple, list[RowSpec]] = {}
    for spec in specs:
        groups.setdefault(tuple(sorted(spec.resources.items())), []).append(spec)
    return [(dict(key), rows) for key, rows in groups.items()]


def with_resources(params: dict[str, Any], resources: dict[str, Any]) -> dict[str, Any]:
    """The submitit parameters of a job whose rows carry ``resources`` (their manifest columns
    override the profile's and the options' request)."""
    return {**params, **{RESOURCE_TO_PARAM[k]: v for k, v in resources.items()}}


@contextlib.contextmanager
def safe_job_start(private: Path) -> Iterator[None]:
    """While jobs are handed to submitit: the working folder is the submission's private folder and
    ``PYTHONSAFEPATH=1`` is set, both inherited by every process of the job (the local executor's
    controller, sbatch's job script, the job, its row processes). ``python -m`` puts the working
    folder first on ``sys.path``: a ``submitit/`` or ``batch_ast/`` planted where the user stands
    (a shared results root) would otherwise be imported before the real one, as the user."""
    cwd, old = os.getcwd(), os.environ.get("PYTHONSAFEPATH")
    os.chdir(private)
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        os.chdir(cwd)
        if old is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = old


def submit_arrays(
    specs: list[RowSpec],
    results: ResultsRoot,
    backend: Backend,
    manifest: Path,
    rows_per_job: int,
    params: dict[str, Any] | None = None,
    skipped: dict[str, str] | None = None,
    job: TransferJob | None = None,
    max_array_size: int = BY_NAME["max_array_size"].default,
    submission_id: str = "",
    state: Path | None = None,
) -> tuple[SubmissionRecord, list[submitit.Job]]:
    """Submit the rows as job arrays (packs of ``rows_per_job`` rows; one array per distinct
    per-row resource request, split so no array has more than ``max_array_size`` tasks) and
    record the submission under the results root. submitit's files (pickles, logs) go to the
    user's private state folder ``state`` (private.py), never into the shared root."""
    params = dict(params or {})
    created = datetime.now(timezone.utc)
    submission_id = submission_id or new_submission_id()
    job = (job or TransferJob()).for_submission(submission_id)
    private = submitit_folder(state or state_dir(), submission_id)
    folder = private / "%j"
    all_jobs: list[submitit.Job] = []
    job_entries: list[dict[str, Any]] = []
    for resources, group in resource_groups(specs):
        executor = backend.make_executor(folder, with_resources(params, resources))
        all_packs = chunk(group, rows_per_job)
        array_size = max(1, max_array_size)
        for start in range(0, len(all_packs), array_size):
            packs = all_packs[start : start + array_size]
            payloads = [[s.to_dict() for s in pack] for pack in packs]
            with safe_job_start(private):
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
        submitit_folder=str(private),
        jobs=job_entries,
        rows={s.id: s.row for s in specs},
        specs={s.id: {k: v for k, v in s.to_dict().items() if k != "resources"} for s in specs},
        skipped=dict(skipped or {}),
        parameters={k: v for k, v in params.items() if isinstance(v, (str, int, float, bool))},
        host=socket.gethostname(),
    )
    save_submission(results, submission)
    return submission, all_jobs
