"""Dispatch stage: choose an executor, submit packs of rows through submitit, record the submission.

This is the only module that knows SLURM (sbatch, squeue, scancel, profiles); it knows nothing of
spectrograms. Job states come from one ``squeue`` call per query, never from ``sacct`` (absent
where accounting is off) and never one call per job.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit

from .config import ConfigError, read_config_file
from .job import TransferJob
from .plan import RowSpec, chunk
from .store import ResultsRoot, write_json_atomic

EXECUTORS = ("auto", "local", "slurm", "debug")

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
LOCAL_DEFAULTS = {"timeout_min": 24 * 60}  # submitit's local default (2 min) would kill real rows
SLURM_DEFAULTS = {"timeout_min": 60, "cpus_per_task": 2, "mem_gb": 8, "slurm_signal_delay_s": 60}


class DispatchError(RuntimeError):
    """The submission cannot be made (bad profile, no cluster where one was asked for...)."""


def slurm_available(timeout_s: float = 10.0) -> bool:
    """True when sbatch is on PATH and a controller answers ``sinfo``."""
    if not (shutil.which("sbatch") and shutil.which("sinfo")):
        return False
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout_s
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


def choose_executor(requested: str) -> tuple[str, str]:
    """Resolve ``auto``; returns (executor, why) so the CLI can say what it picked and why."""
    if requested == "auto":
        if slurm_available():
            return "slurm", "auto: sbatch found and the SLURM controller answers"
        return "local", "auto: no SLURM cluster answers (sbatch/sinfo), using submitit's local executor"
    if requested == "slurm" and not slurm_available():
        raise DispatchError("--executor slurm: no SLURM controller answers (is sbatch on PATH? sinfo?)")
    return requested, f"--executor {requested}"


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


@dataclass
class Submission:
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


def _make_executor(kind: str, folder: Path, params: dict[str, Any]) -> submitit.Executor:
    params = dict(params)
    max_timeouts = params.pop("slurm_max_num_timeout", None)
    python = params.pop("python", None)
    if kind == "local":
        # submitit's LocalExecutor itself, not through AutoExecutor: only it takes ``visible_gpus``
        local = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        if "gpus_per_node" not in local:
            local.update(local_gpu_passthrough(os.environ.get("CUDA_VISIBLE_DEVICES")))
        ctor_args = {"max_num_timeout": max_timeouts, "python": python}
        executor = submitit.LocalExecutor(folder=folder, **{k: v for k, v in ctor_args.items() if v is not None})
        executor.update_parameters(**{**LOCAL_DEFAULTS, **local})
        return executor
    ctor = {f"{kind}_max_num_timeout": max_timeouts} if max_timeouts is not None and kind != "debug" else {}
    if python is not None and kind == "slurm":
        ctor["slurm_python"] = python
    executor = submitit.AutoExecutor(folder=folder, cluster=kind, **ctor)
    if kind == "slurm":
        executor.update_parameters(**{**SLURM_DEFAULTS, **params})
    return executor


def local_gpu_passthrough(visible: str | None) -> dict[str, Any]:
    """The local executor's GPU request that lets a job see the submitter's GPUs.

    submitit's local executor sets each job's CUDA_VISIBLE_DEVICES from ``gpus_per_node`` (0 by
    default: an empty string, so a job on a GPU workstation silently ran on the CPU). Without a
    ``gpus_per_node`` of the user's, ask for what the submitter sees: the indices of its
    CUDA_VISIBLE_DEVICES, or every GPU when that is unset. Entries that are not indices (GPU UUIDs,
    MIG names) cannot be passed through submitit's integer list: then no GPU, with a warning."""
    if visible is None:
        import torch  # counts devices through NVML where it can, without starting CUDA here

        count = torch.cuda.device_count()
        return {"gpus_per_node": count} if count else {}
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if not all(e.isdigit() for e in entries):
        warnings.warn(f"CUDA_VISIBLE_DEVICES={visible!r} names GPUs by UUID or MIG name, which the local "
                      "executor cannot pass to its jobs: they run without a GPU (set gpus_per_node in a "
                      "profile, with integer CUDA_VISIBLE_DEVICES)", stacklevel=2)
        return {}
    gpus = [int(e) for e in entries]
    return {"gpus_per_node": len(gpus), "visible_gpus": tuple(gpus)} if gpus else {}


def new_submission_id() -> str:
    """Sortable by time (UTC), unique by a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def default_rows_per_job(kind: str, n_rows: int, workers: int) -> int:
    """SLURM: one row per array task. Local: split the rows over ``workers`` processes, because
    submitit's local executor starts every job at once and 2 cores do not want 32 torch processes."""
    if kind == "slurm":
        return 1
    return max(1, math.ceil(n_rows / max(1, workers)))


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
    kind: str,
    manifest: Path,
    rows_per_job: int,
    params: dict[str, Any] | None = None,
    skipped: dict[str, str] | None = None,
    job: TransferJob | None = None,
    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE,
    submission_id: str = "",
) -> tuple[Submission, list[submitit.Job]]:
    """Submit the rows as job arrays (packs of ``rows_per_job`` rows; one array per distinct
    per-row resource request, split so no array has more than ``max_array_size`` tasks) and
    record the submission under the results root."""
    params = dict(params or {})
    created = datetime.now(timezone.utc)
    submission_id = submission_id or new_submission_id()
    job = job or TransferJob()
    job.submission_id = submission_id
    folder = results.submitit_dir / "%j"
    all_jobs: list[submitit.Job] = []
    job_entries: list[dict[str, Any]] = []
    for resources, group in _group_by_resources(specs):
        group_params = {**params, **{RESOURCE_TO_PARAM[k]: v for k, v in resources.items()}}
        executor = _make_executor(kind, folder, group_params)
        all_packs = chunk(group, rows_per_job)
        array_size = max(1, max_array_size)
        for start in range(0, len(all_packs), array_size):
            packs = all_packs[start : start + array_size]
            payloads = [[s.to_dict() for s in pack] for pack in packs]
            jobs = executor.map_array(job, payloads, [str(results.root)] * len(payloads))
            all_jobs.extend(jobs)
            job_entries.extend(
                {"job_id": str(j.job_id), "rows": [s.id for s in pack], "log": str(j.paths.stderr)}
                for j, pack in zip(jobs, packs, strict=True)
            )
    submission = Submission(
        submission_id=submission_id,
        executor=kind,
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


def save_submission(results: ResultsRoot, submission: Submission) -> Path:
    path = results.submissions_dir / f"{submission.submission_id}.json"
    write_json_atomic(path, submission.to_dict())
    return path


def load_submissions(results: ResultsRoot) -> list[Submission]:
    """All recorded submissions, oldest first; unreadable files are skipped."""
    import json

    out = []
    folder = results.submissions_dir
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(Submission(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            continue
    return out


def squeue_states(job_ids: list[str]) -> dict[str, str] | None:
    """State of every queued/running task of the given (array) jobs in ONE squeue call.

    Returns {"<array>_<task>" or "<job>": STATE}; jobs absent from the result have left the queue.
    None when squeue cannot be asked (no SLURM here)."""
    if not job_ids:
        return {}
    if not shutil.which("squeue"):
        return None
    base = sorted({j.split("_")[0] for j in job_ids})
    try:
        done = subprocess.run(
            ["squeue", "-h", "-r", "-j", ",".join(base), "-o", "%i|%T"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        # squeue errors for ids the controller already forgot: treat as "nothing queued"
        return {} if "Invalid job id" in done.stderr else None
    states = {}
    for line in done.stdout.splitlines():
        if "|" in line:
            jid, state = line.strip().split("|", 1)
            states[jid] = state
    return states


def cancel_jobs(job_ids: list[str]) -> subprocess.CompletedProcess:
    """scancel every given job (array ids cancel the whole array) in one call."""
    return subprocess.run(["scancel", *sorted(set(job_ids))], capture_output=True, text=True)


def local_job_alive(job_id: str) -> bool:
    """For the local executor the job id is the worker's pid."""
    try:
        os.kill(int(job_id), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    try:  # an exited child not yet reaped by its parent (a zombie) still answers kill(0)
        return Path(f"/proc/{int(job_id)}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
