"""Executor backends: everything that differs between SLURM, the local executor and debug mode.

One ``Backend`` per submitit executor: whether it can be used here, how to build its executor,
how to ask its queue (one query for all jobs), how to cancel, how often to poll, and what a job
learns of its environment. Nothing outside this module branches on an executor's name: the rest of
batch-ast asks ``get_backend(name)``. This is the only module that runs SLURM commands (sbatch via
submitit, sinfo, squeue, scancel); it knows nothing of spectrograms.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import submitit

EXECUTORS = ("auto", "local", "slurm", "debug")
QUEUE_STATES = ("pending", "running")
LOCAL_DEFAULTS = {"timeout_min": 24 * 60}  # submitit's local default (2 min) would kill real rows
SLURM_DEFAULTS = {"timeout_min": 60, "cpus_per_task": 2, "mem_gb": 8, "slurm_signal_delay_s": 60}
SLURM_PENDING = ("PENDING", "CONFIGURING", "REQUEUED", "SUSPENDED")


class BackendError(RuntimeError):
    """An executor that cannot be used here, or a queue command that failed."""


class Backend:
    """One submitit executor as batch-ast uses it. Subclasses set the class attributes and
    override what differs; the defaults fit an executor without a queue (debug)."""

    name: ClassVar[str] = ""
    poll_interval_s: ClassVar[float] = 1.0  # how often --wait asks for states
    waits_by_default: ClassVar[bool] = True  # submit follows the rows unless --no-wait
    runs_in_process: ClassVar[bool] = False  # jobs run inside submit (results via job.result())
    jobs_local_to_host: ClassVar[bool] = False  # its jobs are processes of the submitting host only
    job_id_pattern: ClassVar[re.Pattern[str]] = re.compile(r"DEBUG_[0-9]{1,30}")  # what its job ids look like

    def available(self) -> bool:
        """Whether this executor can run jobs from here."""
        return True

    def make_executor(self, folder: Path, params: dict[str, Any]) -> submitit.Executor:
        """A submitit executor writing under ``folder`` with ``params`` (submitit's names)."""
        return submitit.AutoExecutor(folder=folder, cluster=self.name)  # debug takes no parameters

    def check_parameters(self, params: dict[str, Any]) -> None:
        """Refuse, before anything is submitted, parameters this executor cannot honour here."""

    def time_limit_warning(self, params: dict[str, Any]) -> tuple[float, float]:
        """(time limit, seconds before it that the warning signal comes) of a job with ``params``,
        so that a job can tell a time-limit warning from a preemption; (0, 0) where this executor
        sends no warning before a limit."""
        return 0.0, 0.0

    def requested(self, params: dict[str, Any]) -> tuple[float | None, float | None]:
        """(memory bytes, time limit s) a job with ``params`` asks for; None where this executor
        takes no such request (right-sizing compares them with what earlier rows needed)."""
        timeout = params.get("timeout_min")
        return None, 60.0 * float(timeout) if timeout else None

    def rows_per_job(self, n_rows: int, workers: int, processes: int = 1) -> int:
        """Rows packed into one job when the user does not say: split over ``workers`` processes
        (the local executor starts every job at once; 2 cores do not want 32 torch processes)."""
        return max(1, -(-n_rows // max(1, workers)))

    def thread_share(self, workers: int) -> int | None:
        """The torch threads of each job when the user does not say (None: the scheduler's grant,
        else torch's default of every core)."""
        return None

    def queue_states(self, job_ids: Sequence[str], folder: str = "") -> dict[str, str] | None:
        """{job id: "pending" | "running"} for the given jobs still queued or running, from one
        query; jobs absent have left the queue. None when the queue cannot be asked. Only jobs
        that are provably this submission's count (their sbatch script or controller is in its
        submitit ``folder``): job ids come from a file anyone with write access could plant."""
        return {}

    def cancel(self, job_ids: Sequence[str], folder: str = "") -> None:
        """Cancel those of the given jobs that are this submission's (see ``queue_states``)
        (raise BackendError when the queue refuses)."""

    def jobs_running(self, jobs: Sequence[submitit.Job]) -> bool:
        """Whether any of this submission's job objects is still running (beyond its rows)."""
        return False

    def index_job_id(self, job_id: str) -> str:
        """The job id the index shows for a row (the cluster's array id; '' where none)."""
        return ""

    def job_fields(self, environment: submitit.JobEnvironment) -> dict[str, Any]:
        """What a running job records of where it runs (``Record`` fields)."""
        return {}

    def job_threads(self) -> int | None:
        """CPUs granted to a running job, when the executor says."""
        return None


class SlurmBackend(Backend):
    name = "slurm"
    poll_interval_s = 5.0
    waits_by_default = False
    job_id_pattern = re.compile(r"[0-9]{1,20}(_[0-9]{1,10})?")

    def available(self, timeout_s: float = 10.0) -> bool:
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

    def make_executor(self, folder: Path, params: dict[str, Any]) -> submitit.Executor:
        params = dict(params)
        ctor: dict[str, Any] = {}
        if (max_timeouts := params.pop("slurm_max_num_timeout", None)) is not None:
            ctor["slurm_max_num_timeout"] = max_timeouts
        if (python := params.pop("python", None)) is not None:
            ctor["slurm_python"] = python
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", **ctor)
        # AutoExecutor builds it; only the command differs
        executor._executor.__class__ = GuardedSlurmExecutor
        executor.update_parameters(**{**SLURM_DEFAULTS, **params})
        return executor

    def time_limit_warning(self, params: dict[str, Any]) -> tuple[float, float]:
        merged = {**SLURM_DEFAULTS, **params}
        return 60.0 * float(merged["timeout_min"]), float(merged["slurm_signal_delay_s"])

    def requested(self, params: dict[str, Any]) -> tuple[float | None, float | None]:
        merged = {**SLURM_DEFAULTS, **params}
        return float(merged["mem_gb"]) * 2**30, 60.0 * float(merged["timeout_min"])

    def rows_per_job(self, n_rows: int, workers: int, processes: int = 1) -> int:
        """One row per array task: the scheduler spreads them. With K row processes per task, two
        rows per process: a process's start-up (Python, torch: ~3 s) is then paid once per two
        rows (8 `quick` rows, K = 2: 1.58x one row per task, against 1.20x with one row per process;
        benchmarks/RESULTS.md)."""
        return 1 if processes <= 1 else 2 * processes

    def queue_states(self, job_ids: Sequence[str], folder: str = "") -> dict[str, str] | None:
        """One ``squeue -r`` for every array (never ``sacct``: absent without accounting); a job
        counts only when its sbatch script lies in the submission's submitit folder."""
        raw = squeue_states([j for j in job_ids if self.job_id_pattern.fullmatch(j)])
        if raw is None:
            return None
        return {
            jid: "pending" if state in SLURM_PENDING else "running"
            for jid, (state, command) in raw.items()
            if _inside(command, folder)
        }

    def cancel(self, job_ids: Sequence[str], folder: str = "") -> None:
        mine = sorted(set(self.queue_states(job_ids, folder) or {}))
        if not mine:
            return
        done = subprocess.run(["scancel", *mine], capture_output=True, text=True)
        if done.returncode != 0:
            raise BackendError(f"scancel failed: {done.stderr.strip()}")

    def index_job_id(self, job_id: str) -> str:
        return job_id.split("_")[0]

    def job_fields(self, environment: submitit.JobEnvironment) -> dict[str, Any]:
        return {
            "slurm_job_id": environment.array_job_id or environment.raw_job_id,
            "slurm_array_task_id": environment.array_task_id or "",
            # submitit's JobEnvironment does not expose how often SLURM restarted the job
            "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            **slurm_allocation(os.environ),
        }

    def job_threads(self) -> int | None:
        return _positive_int_env("SLURM_CPUS_PER_TASK")


class LocalBackend(Backend):
    name = "local"
    jobs_local_to_host = True
    job_id_pattern = re.compile(r"[0-9]{1,10}")

    def thread_share(self, workers: int) -> int | None:
        """``--workers N`` jobs run at once on this machine: each gets 1/N of its CPUs. Every job
        taking all of them (torch's default) put N spinning OpenMP teams on the same cores:
        measured 0.24× the rows per hour of one worker with 2 workers on 2 cores."""
        return max(1, len(os.sched_getaffinity(0)) // workers) if workers > 1 else None

    def make_executor(self, folder: Path, params: dict[str, Any]) -> submitit.Executor:
        # submitit's LocalExecutor itself, not through AutoExecutor: only it takes ``visible_gpus``
        params = dict(params)
        ctor = {
            "max_num_timeout": params.pop("slurm_max_num_timeout", None),
            "python": params.pop("python", None),
        }
        local = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        if "gpus_per_node" not in local:
            local.update(local_gpu_passthrough(os.environ.get("CUDA_VISIBLE_DEVICES")))
        executor = GuardedLocalExecutor(folder=folder, **{k: v for k, v in ctor.items() if v is not None})
        executor.update_parameters(**{**LOCAL_DEFAULTS, **local})
        return executor

    def check_parameters(self, params: dict[str, Any]) -> None:
        """A profile's ``python`` must start here (a job that cannot start Python writes no
        record and no useful log: its rows would be ``lost`` with no reason)."""
        python = params.get("python")
        if python is None:
            return
        try:
            program = shlex.split(str(python))[0]
        except (ValueError, IndexError):
            program = ""
        if not program or not shutil.which(program):
            raise BackendError(
                f"profile python {str(python)[:80]!r}: {program[:80] or 'nothing'} is not a program "
                "this machine can start"
            )

    def queue_states(self, job_ids: Sequence[str], folder: str = "") -> dict[str, str] | None:
        """A local job's id is its controller's pid: running while that process lives and is
        submitit's controller of a job in the submission's folder."""
        return {j: "running" for j in job_ids if local_controller(j, folder)}

    def cancel(self, job_ids: Sequence[str], folder: str = "") -> None:
        """A local job id is the pid of submitit's controller, whose tasks run the rows. A running
        task ignores SIGTERM (submitit's job environment bypasses it, as SLURM follows it with
        SIGKILL) and SIGINT may be ignored too (a shell's background jobs inherit that), so the
        tasks are killed, as scancel ends on a cluster, and so is the controller. It is stopped
        first: a controller that had set its SIGTERM handler (which only forwards the signal to its
        tasks) but not yet started them shrugged the signal off and then ran its rows to the end.
        Only a process that is this user's controller of a job in the submission's folder is
        signalled: a planted submission naming any pid must not kill it."""
        for job_id in job_ids:
            if not local_controller(job_id, folder, owned=True):
                continue
            controller = int(job_id)
            _kill(controller, signal.SIGSTOP)  # a stopped controller starts no task after the listing
            for pid in child_pids(controller):
                _kill(pid, signal.SIGKILL)
            _kill(controller, signal.SIGKILL)

    def jobs_running(self, jobs: Sequence[submitit.Job]) -> bool:
        return not all(job.done() for job in jobs)


def _guarded_command(executor: Any) -> str:
    """submitit's job command with ``batch_ast.job_entry`` in place of ``submitit.core._submit``:
    it refuses a job folder or pickle that anyone but the user could have written, then runs
    submitit's own loader."""
    return " ".join([executor.python, "-u -m batch_ast.job_entry", shlex.quote(str(executor.folder))])


class GuardedLocalExecutor(submitit.LocalExecutor):
    _submitit_command_str = property(_guarded_command)


class GuardedSlurmExecutor(submitit.SlurmExecutor):
    _submitit_command_str = property(_guarded_command)


class DebugBackend(Backend):
    name = "debug"
    runs_in_process = True


BACKENDS: dict[str, Backend] = {b.name: b for b in (SlurmBackend(), LocalBackend(), DebugBackend())}


def get_backend(name: str) -> Backend:
    """The backend of an executor name (as stored in a submission)."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown executor {name!r} (known: {', '.join(BACKENDS)})") from None


def choose_backend(requested: str) -> tuple[Backend, str]:
    """Resolve ``auto`` (SLURM when a controller answers, else local); returns (backend, why) so
    the user is told what was picked and why."""
    if requested == "auto":
        if BACKENDS["slurm"].available():
            return BACKENDS["slurm"], "auto: sbatch found and the SLURM controller answers"
        return BACKENDS[
            "local"
        ], "auto: no SLURM cluster answers (sbatch/sinfo), using submitit's local executor"
    backend = get_backend(requested)
    if not backend.available():
        raise BackendError(
            f"--executor {requested}: no SLURM controller answers (is sbatch on PATH? sinfo?); "
            "--executor local runs the rows on this machine"
        )
    return backend, f"--executor {requested}"


# --- inside a running job ------------------------------------------------------------------------

def _running_job() -> tuple[Backend | None, submitit.JobEnvironment | None]:
    """The backend and submitit environment of the job this process runs, (None, None) outside one."""
    try:
        environment = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (a direct call)
        return None, None
    return BACKENDS.get(environment.cluster), environment


def slurm_allocation(env: Mapping[str, str]) -> dict[str, Any]:
    """What SLURM granted the running job, from the variables it sets in the job (``Record``'s
    ``alloc_*`` fields; None where the job's environment does not say). Memory is given in MiB,
    per node or per CPU; the time limit only by SLURM 23.02+ (SLURM_JOB_START_TIME/END_TIME; the
    row falls back to the limit the job was submitted with)."""

    def number(name: str) -> int | None:
        value = env.get(name, "")
        return int(value) if value.isdigit() else None

    cpus = number("SLURM_CPUS_ON_NODE") or number("SLURM_CPUS_PER_TASK")
    mem_mib, per_cpu = number("SLURM_MEM_PER_NODE"), number("SLURM_MEM_PER_CPU")
    if mem_mib is None and per_cpu is not None and cpus:
        mem_mib = per_cpu * cpus
    gpus = number("SLURM_GPUS_ON_NODE")
    if gpus is None:
        listed = env.get("SLURM_JOB_GPUS") or env.get("SLURM_STEP_GPUS") or ""
        gpus = len([g for g in listed.split(",") if g.strip()])
    start, end = number("SLURM_JOB_START_TIME"), number("SLURM_JOB_END_TIME")
    return {
        "alloc_cpus": cpus,
        "alloc_mem_bytes": mem_mib * 2**20 if mem_mib else None,  # 0: "all of the node's"
        "alloc_gpus": gpus,
        "alloc_time_limit_s": float(end - start) if start and end and end > start else None,
    }


def _positive_int_env(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def job_environment() -> dict[str, Any]:
    """What a row records of where it runs: the host, and the scheduler's ids where there is one
    (from submitit's ``JobEnvironment``); empty ids elsewhere (local, debug, a direct call)."""
    fields: dict[str, Any] = {"hostname": socket.gethostname(), "slurm_job_id": "", "slurm_array_task_id": "",
                              "slurm_restart_count": 0}
    backend, environment = _running_job()
    return {**fields, **(backend.job_fields(environment) if backend else {})}


def job_threads() -> int | None:
    """CPUs a running job may use: the scheduler's grant, else ``BATCH_AST_THREADS``; None when
    nothing says (torch then takes the machine's count)."""
    backend, _ = _running_job()
    return (backend.job_threads() if backend else None) or _positive_int_env("BATCH_AST_THREADS")


def preemption_signal() -> signal.Signals:
    """The signal submitit sends before a time limit or preemption (USR2 unless
    $SUBMITIT_PREEMPT_SIGNAL says otherwise); the job defers it to an iteration boundary."""
    try:
        return submitit.JobEnvironment._usr_sig()  # the one submitit installs its handler for
    except (AttributeError, RuntimeError):
        return signal.SIGUSR2


# --- helpers of the backends --------------------------------------------------------------------

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


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies in ``folder`` (textually: both absolute, as submitit writes them)."""
    return bool(folder) and os.path.normpath(path).startswith(os.path.normpath(folder).rstrip("/") + "/")


def squeue_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """SLURM state and command (the sbatch script's path) of every queued/running task of the
    given (array) jobs in ONE squeue call: {"<array>_<task>" or "<job>": (STATE, command)}. None
    when squeue cannot be asked (no SLURM here)."""
    if not job_ids:
        return {}
    if not shutil.which("squeue"):
        return None
    base = sorted({j.split("_")[0] for j in job_ids})
    try:
        done = subprocess.run(
            ["squeue", "-h", "-r", "-j", ",".join(base), "-o", "%i|%T|%o"],
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
        if line.count("|") >= 2:
            jid, state, command = line.strip().split("|", 2)
            states[jid] = (state, command)
    return states


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _stat_fields(stat_file: Path) -> list[str]:
    """The fields of a /proc/<pid>/stat file after the command name: state, ppid, …"""
    return stat_file.read_text().rsplit(")", 1)[1].split()


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid``: from /proc where there is one (Linux), else pgrep."""
    proc = Path("/proc")
    if proc.is_dir():
        children = []
        for stat in proc.glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_stat_fields(stat)[1]) == pid:
                    children.append(int(stat.parent.name))
        return children
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in found.stdout.split()]


def local_controller(job_id: str, folder: str, owned: bool = False) -> bool:
    """Whether ``job_id`` is the pid of a live submitit local controller of a job in ``folder``
    (its command line is ``python -m submitit.local._local <folder>/%j``), and with ``owned``,
    one of this user's processes."""
    if not LocalBackend.job_id_pattern.fullmatch(job_id) or not local_job_alive(job_id):
        return False
    proc = Path(f"/proc/{int(job_id)}")
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        uid = proc.stat().st_uid
    except OSError:
        return False
    args = [a.decode("utf-8", "replace") for a in argv if a]
    if owned and uid != os.geteuid():
        return False
    return ("submitit.local._local" in args and bool(args) and _inside(args[-1], folder))


def local_job_alive(job_id: str) -> bool:
    """For the local executor the job id is the worker's pid."""
    try:
        os.kill(int(job_id), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    try:  # an exited child not yet reaped by its parent (a zombie) still answers kill(0)
        return _stat_fields(Path(f"/proc/{int(job_id)}/stat"))[0] != "Z"
    except (OSError, IndexError):
        return True
