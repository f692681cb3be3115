"""The Python API: submit a manifest or a study, follow it, cancel it, read its index.

The ``batch-ast`` command line is a thin layer over these functions, so a notebook or a larger
pipeline does the same thing the CLI does without shelling out::

    import batch_ast
    sub = batch_ast.submit("manifests/demo.csv", results="results")
    sub.wait()
    df = sub.index()

``prepare`` does everything up to the queue (validate, hash, plan, pick a backend and its
parameters) and returns a ``Prepared`` whose ``launch`` claims the rows and submits them; the CLI
prints the plan between the two (``--dry-run`` stops there).
"""

from __future__ import annotations

import os
import re
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import submitit

from .audio import probe_audio
from .backends import EXECUTORS, Backend, BackendError, choose_backend, get_backend
from .claims import release_claim, release_claims
from .config import load_config
from .costing import JobNeed, job_need, row_need
from .dispatch import Packing, job_parameters, resource_groups, submit_arrays, with_resources
from .freshness import stamp
from .index import CollectReport, load_index, update_index
from .job import DEFAULTS, TransferJob
from .liveness import claim_unless_live
from .options import SubmitOptions, find_profile, load_profile, merged
from .plan import HASH_CACHE, Plan, RowSpec, make_plan
from .private import check_job_files, make_private_dir, state_dir
from .record import record_dict
from .status import SubmissionStatus, query_status, unrecorded_rows
from .store import ResultsError, ResultsRoot, check_shared_root
from .study import load_rows
from .submissions import (
    SubmissionRecord,
    cancelled_since,
    latest_submission,
    new_submission_id,
    read_submissions,
    save_submission,
    submission_path,
    valid_submissions,
)
from .text import short_path

FINISHED_STATES = ("ok", "failed", "invalid", "lost", "cancelled")


def error_line(exc: BaseException) -> str:
    """The line that says what went wrong: the last ``SomeError: ...`` line of the remote
    traceback submitit wraps in its FailedJobError, else the message's first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", line)]
    return raised[-1] if raised else (lines[0] if lines else repr(exc))


@dataclass
class Submission:
    """A submission made from here (or found again by ``find_submission``): its rows' states,
    waiting for them, cancelling them, and their part of the index.

    ``record`` is None when nothing needed to run (every row done, failed before, or in flight in
    another submission); ``status()`` then reports only skipped rows."""

    results: ResultsRoot
    record: SubmissionRecord | None
    plan: Plan | None = None
    jobs: list[submitit.Job] = field(default_factory=list)
    busy: dict[str, str] = field(default_factory=dict)  # row id -> why another submission has it
    # row id -> its error, for rows of the manifest that failed in an earlier submission and were
    # not rerun (the CLI exits 1 for them; --retry-failed or --force reruns them)
    failed_before: dict[str, str] = field(default_factory=dict)
    job_errors: list[str] = field(default_factory=list)  # whole jobs that crashed (local, debug)
    last_cancel: Cancelled | None = None  # what the last ``cancel()`` did
    # the submission file's stamp when ``status()`` last read it for a cancel made elsewhere
    file_seen: list[int] | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.record.submission_id if self.record else ""

    def __repr__(self) -> str:
        """One line, without asking the queue: the dataclass's own repr printed every job object,
        whose repr asks SLURM accounting (sacct) for its state, and dumped the whole plan."""
        if self.record is None:
            root, busy = str(self.results.root), len(self.busy)
            return f"Submission(nothing submitted, root={root!r}, in flight elsewhere={busy})"
        r = self.record
        return (
            f"Submission(id={r.submission_id!r}, executor={r.executor!r}, rows={len(r.rows)}, "
            f"jobs={len(r.jobs)}, "
            f"job ids={r.array_job_id or '-'!r}, root={str(self.results.root)!r})"
        )

    @property
    def backend(self) -> Backend | None:
        return get_backend(self.record.executor) if self.record else None

    def row_ids(self) -> list[str]:
        """Every row of the manifest this submission was made from (run, skipped or busy)."""
        if self.plan is None:
            return list(self.record.rows) + list(self.record.skipped) if self.record else []
        return [s.id for s in (*self.plan.to_run, *self.plan.done, *self.plan.failed_before)]

    def status(self) -> SubmissionStatus:
        """Each row's state now: records first, then one query of the queue."""
        if self.record is None:
            empty = SubmissionRecord("", "", "", "", str(self.results.root), "",
                                     skipped=dict(self.busy))
            return SubmissionStatus(submission=empty)
        if not self.record.cancelled:  # cancelled by another process? Read again only when the file
            # changed: ``wait`` asks at every poll, and a large study's file is megabytes
            seen = stamp(submission_path(self.results, self.record.submission_id))
            if seen != self.file_seen:
                self.file_seen = seen
                self.record.cancelled = cancelled_since(self.results, self.record)
        return query_status(self.results, self.record)

    def wait(self, on_progress: Callable[[SubmissionStatus], None] | None = None,
             poll_s: float | None = None) -> SubmissionStatus:
        """Block until no row is pending or running; ``on_progress(status)`` after each poll
        (every ``poll_s`` seconds, the backend's interval by default). Returns the final status;
        jobs that crashed as a whole are listed in ``job_errors``."""
        backend = self.backend
        if backend is None:
            return self.status()
        if backend.runs_in_process:  # the jobs run here, now, inside job.result()
            self._collect_job_errors()
        while True:
            status = self.status()
            if on_progress is not None:
                on_progress(status)
            if not status.active and not backend.jobs_running(self.jobs):
                break
            time.sleep(poll_s if poll_s is not None else backend.poll_interval_s)
        if not backend.runs_in_process:  # asked once: a debug job asked again would run again
            self._collect_job_errors()
        return status

    def _collect_job_errors(self) -> None:
        errors = []
        for job in self.jobs:  # per-row errors are in the records; these are whole-job crashes
            try:
                if not self.backend.runs_in_process:  # a result pickle is code: only ever the user's own
                    if not job.paths.result_pickle.exists():
                        # the job left the queue without one (killed, or it refused its pickle):
                        # submitit's result() would wait on the queue's word for it (sacct)
                        errors.append(f"job {job.job_id} ended without a result (log: {job.paths.stderr})")
                        continue
                    check_job_files(job.paths.folder, [job.paths.result_pickle])
                job.result()
            except Exception as exc:  # noqa: BLE001 - reported, the batch goes on
                errors.append(
                    f"job {job.job_id} ended abnormally: {error_line(exc)} (log: {job.paths.stderr})"
                )
        self.job_errors = errors

    def cancel(self) -> list[str]:
        """Cancel the jobs still queued or running; returns their ids (empty: nothing to cancel).
        ``last_cancel`` says more: the rows' claims released, the rows that were running."""
        if self.record is None:
            return []
        self.last_cancel = cancel(self.results, self.record)
        return self.last_cancel.job_ids

    def index(self, collect_first: bool = True) -> pd.DataFrame:
        """This submission's rows of the results index (collected first unless told not to)."""
        if collect_first:
            collect(self.results.root)
        frame = load_index(self.results.root)
        return frame[frame["id"].isin(self.row_ids())].reset_index(drop=True)


@dataclass
class Prepared:
    """A submission planned but not yet queued: what ``--dry-run`` shows."""

    plan: Plan
    results: ResultsRoot
    manifest: Path
    backend: Backend
    why: str  # why this backend (``auto`` resolved, or the caller's choice)
    parameters: dict[str, Any]  # submitit parameters (profile and options)
    packing: Packing
    rows_per_job: int
    job: TransferJob
    profile: Path | None = None
    profile_source: str = ""
    state: Path | None = None  # the user's private state folder (submitit's files, the hash cache)

    def failed_before(self) -> list[tuple[RowSpec, dict[str, Any]]]:
        """Rows of the manifest that failed in an earlier submission and are not rerun, with
        their records."""
        return [(spec, record_dict(self.results, spec.id) or {}) for spec in self.plan.failed_before]

    def sizing(self) -> tuple[list[JobNeed], list[str]]:
        """(what each preset's jobs will probably need, presets without enough history): from the
        finished rows of this root's index with the same preset and a content length within
        ``costing.SIMILAR_LENGTH`` of the planned rows' median (``costing.row_need``), at this plan's
        packing, beside what the jobs ask for (the profile, or the rows' own resource columns: one
        line per group of rows that share a request, as they share a job array)."""
        history = _history(self.results)
        by_preset: dict[str, list[RowSpec]] = {}
        for spec in self.plan.to_run:
            by_preset.setdefault(spec.params.preset, []).append(spec)
        needs, unknown = [], []
        lengths: dict[str, float | None] = {}
        for preset, specs in sorted(by_preset.items()):
            seconds = [s for spec in specs if (s := _content_seconds(spec, lengths)) is not None]
            need = row_need(history, preset, statistics.median(seconds) if seconds else None)
            if need is None:
                unknown.append(preset)
                continue
            for resources, _ in resource_groups(specs):
                own = "".join(f", {k}={v}" for k, v in sorted(resources.items()))
                label = f"preset {preset or '(none)'}{own}"
                requested = self.backend.requested(with_resources(self.parameters, resources))
                needs.append(job_need(label, need, self.rows_per_job, self.packing.processes_per_job,
                                      *requested))
        return needs, unknown

    def launch(self) -> Submission:
        """Claim the rows (rows in flight in another submission are skipped) and submit the rest."""
        submission_id = new_submission_id()
        failed = {spec.id: str(record.get("error", "")) for spec, record in self.failed_before()}
        to_run, busy = claim_unless_live(self.results, self.plan.to_run, submission_id, force=self.job.force)
        if not to_run:
            return Submission(self.results, None, self.plan, busy=busy, failed_before=failed)
        skipped = {s.id: "already done" for s in self.plan.done}
        skipped.update({s.id: "failed before" for s in self.plan.failed_before})
        skipped.update(busy)
        try:
            record, jobs = submit_arrays(
                to_run,
                self.results,
                self.backend,
                self.manifest,
                self.rows_per_job,
                self.parameters,
                skipped,
                self.job,
                self.packing.max_array_size,
                submission_id=submission_id,
                state=self.state,
            )
        except BaseException:
            release_claims(self.results, to_run, submission_id)
            raise
        return Submission(self.results, record, self.plan, jobs, busy, failed_before=failed)


def _history(results: ResultsRoot) -> pd.DataFrame:
    """The root's index as last collected (a dry run writes nothing, so it does not collect);
    empty where there is none or it cannot be read."""
    try:
        return load_index(results.root)
    except (ResultsError, OSError, ValueError):
        return pd.DataFrame()


def _content_seconds(spec: RowSpec, cache: dict[str, float | None]) -> float | None:
    """The length of a planned row's content as the row will use it (at most max_seconds), from
    the file's header; None where the header says nothing."""
    if spec.content not in cache:
        info = probe_audio(spec.content)
        cache[spec.content] = info.seconds if info is not None else None
    seconds = cache[spec.content]
    return min(seconds, spec.params.max_seconds) if seconds is not None else None


def _path_argument(value: Any, name: str, optional: bool = False) -> Path | None:
    """A path argument of the API, or a clear TypeError (``submit(123)``, ``results=None``)."""
    if value is None and optional:
        return None
    if isinstance(value, (str, os.PathLike)) and str(value):
        return Path(value)
    raise TypeError(f"{name} must be a path (str or os.PathLike), not {type(value).__name__}")


def _submit_options(options: SubmitOptions | None, values: dict[str, Any]) -> SubmitOptions:
    """``options`` with ``values`` (keywords of ``prepare``) on top, checked; TypeError for a
    keyword that is no option."""
    unknown = sorted(set(values) - set(SubmitOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown}; options are: {', '.join(SubmitOptions.__dataclass_fields__)}"
        )
    return replace(options or SubmitOptions(), **values).check()


def prepare(
    manifest: str | Path,
    results: str | Path = "results",
    executor: str = "auto",
    profile: str | Path | None = None,
    *,
    config: str | Path | None = None,
    site_profile: bool = True,
    options: SubmitOptions | None = None,
    dry_run: bool = False,
    progress: bool = False,
    **option_values: Any,
) -> Prepared:
    """Validate the manifest (CSV or study YAML), hash its inputs, plan its rows and choose the
    backend and its parameters; nothing is queued. ``options`` (or its fields as keywords:
    ``force=True, timeout_min=30``...) say how. Raises ManifestError, ConfigError, DispatchError,
    BackendError or ResultsError with a message for the user, TypeError for an argument of the
    wrong type."""
    manifest = _path_argument(manifest, "manifest")
    results = results if isinstance(results, ResultsRoot) else _path_argument(results, "results")
    profile = _path_argument(profile, "profile", optional=True)
    config = _path_argument(config, "config", optional=True)
    if not isinstance(executor, str):
        raise TypeError(f"executor must be one of {', '.join(EXECUTORS)}, not {type(executor).__name__}")
    opts = _submit_options(options, option_values)
    if executor != "auto":
        get_backend(executor)  # a bad name is refused before any file is read
    cfg = load_config(config)
    rows = load_rows(manifest, cfg, max_rows=opts.max_rows)
    profile_path, source = find_profile(profile, site_defaults=site_profile)
    profile_values = load_profile(profile_path)
    parameters, packing, max_retries = job_parameters(profile_values, opts)
    backend, why = choose_backend(executor)  # a bad executor is refused before any input is hashed
    backend.check_parameters(parameters)
    state = state_dir(profile_values.get("state_dir"))
    root = ResultsRoot.of(results)
    if not dry_run:
        root.require_writable()  # before hashing thousands of files or submitting anything
        if problem := check_shared_root(root.root):
            warnings.warn(problem, stacklevel=2)
        make_private_dir(state, state)
    plan = make_plan(
        rows,
        root,
        Path(manifest),
        force=opts.force,
        retry_failed=opts.retry_failed,
        progress=progress,
        save_cache=not dry_run,
        hash_cache=state / HASH_CACHE,
    )  # a dry run writes nothing
    every = merged(profile_values, opts)["checkpoint_every_s"]
    limit_s, warning_s = backend.time_limit_warning(parameters)
    run_options = replace(DEFAULTS, max_retries=max_retries, checkpoint_every_s=every, time_limit_s=limit_s,
                          limit_warning_s=warning_s, processes_per_job=packing.processes_per_job)
    job = TransferJob(run_options, force=opts.force, batch_rows=packing.batch_rows,
                      processes=packing.processes_per_job, finish_in_background=packing.finish_in_background,
                      threads=backend.thread_share(opts.workers or 1))
    return Prepared(
        plan=plan,
        results=root,
        manifest=Path(manifest),
        backend=backend,
        why=why,
        parameters=parameters,
        packing=packing,
        rows_per_job=packing.rows_per_job
        or backend.rows_per_job(len(plan.to_run), opts.workers or 1, packing.processes_per_job),
        job=job,
        profile=profile_path,
        profile_source=source,
        state=state,
    )


def submit(
    manifest: str | Path,
    results: str | Path = "results",
    executor: str = "auto",
    profile: str | Path | None = None,
    wait: bool = False,
    **options: Any,
) -> Submission:
    """Validate, plan and submit a manifest CSV or a study YAML; with ``wait=True`` block until
    every row has finished and collect the index. ``options`` are ``prepare``'s (``config``,
    ``force``, ``retry_failed``, ``rows_per_job``, ``batch_rows``, ``processes_per_job``,
    ``timeout_min``, ``gpus``..., or ``options=SubmitOptions(...)``)."""
    submission = prepare(manifest, results, executor, profile, **options).launch()
    if wait:
        submission.wait()
        collect(submission.results.root)
    return submission


def find_submission(results: str | Path = "results", submission_id: str | None = None) -> Submission | None:
    """A recorded submission (the latest by default) as a ``Submission``; None if there is none."""
    root = ResultsRoot.of(results)
    root.require_results_root()
    submissions = valid_submissions(root)
    if submission_id is None:
        latest = latest_submission(submissions)
        return Submission(root, latest) if latest else None
    found = [s for s in submissions if s.submission_id == submission_id]
    return Submission(root, found[-1]) if found else None


@dataclass(frozen=True)
class RootStatus:
    """What ``batch-ast status`` shows of a results root: the latest submission's status (or every
    submission's), how many older ones were not asked about, and the submission files that are
    not valid submissions (each "file: why")."""

    statuses: list[SubmissionStatus]
    older: int
    problems: list[str]

    @property
    def any_failed(self) -> bool:
        return any(st.counts.get(k, 0) for st in self.statuses for k in ("failed", "lost", "invalid"))


def root_status(results: str | Path = "results", every: bool = False) -> RootStatus:
    """The status of the latest submission under ``results`` (``every``: of each one, oldest
    first); the queue is asked only about the submissions shown."""
    root = ResultsRoot.of(results)
    root.require_results_root()
    submissions, problems = read_submissions(root)
    if every or not submissions:
        shown = submissions
    else:
        shown = [latest_submission(submissions) or submissions[-1]]
    return RootStatus([query_status(root, s) for s in shown], len(submissions) - len(shown), problems)


def collect(root: str | Path = "results", progress: bool = False) -> CollectReport:
    """Gather the records and traces under ``root`` into index.parquet and traces.parquet,
    with the submitted rows that have no record yet (their state from the queue) and the figures
    of ok rows redrawn where they are missing. See ``index.update_index`` for what it returns and raises."""
    return update_index(root, progress, unrecorded=unrecorded_rows, repair_figures=_redraw_figures)


def _redraw_figures(results: ResultsRoot, record: dict[str, Any]) -> dict[str, Any]:
    from .row import regenerate_figures  # import cost: torch and matplotlib, only when a figure is redrawn

    return regenerate_figures(results, record)


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did: the jobs (array tasks) it cancelled, the claims it released (rows that had
    not begun: another submission may run them at once), and the rows that were running (their
    claims hold while their jobs leave the queue, then lapse: ``liveness.claim_liveness``)."""

    job_ids: list[str]
    released: int = 0
    running: int = 0


def cancel(results: ResultsRoot, record: SubmissionRecord) -> Cancelled:
    """Cancel a recorded submission's queued and running jobs through its backend, mark it
    cancelled and release the claims of its rows that had not begun. Only jobs that are provably
    the submission's are signalled (``Backend.cancel``)."""
    if not record.mine:
        raise BackendError(
            f"submission {record.submission_id} is not yours to cancel: its file or its submitit folder "
            f"({short_path(record.submitit_folder)}) is not your own"
        )
    status = query_status(results, record)
    if status.jobs_elsewhere:
        raise BackendError(
            f"submission {record.submission_id} runs local jobs on host {status.jobs_elsewhere}: "
            "cancel it there"
        )
    active = sorted({r.job_id for r in status.rows if r.state in ("pending", "running")})
    if not active:
        return Cancelled([])
    get_backend(record.executor).cancel(active, record.submitit_folder)
    record.cancelled = True
    save_submission(results, record)
    # Released only once their jobs are cancelled, so that no job of ours begins them after.
    unbegun = [r.id for r in status.rows if r.state == "pending"]
    for rid in unbegun:
        release_claim(results, rid, record.submission_id)
    return Cancelled(active, len(unbegun), sum(r.state == "running" for r in status.rows))

