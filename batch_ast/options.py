"""Submission stage, the options: every knob of a submission declared once, and the cluster
profiles that set them.

Each ``Option`` says its one name (the API keyword, the profile key, ``--name-with-dashes`` on the
command line), its kind and range, its default, its help, where it may be given (command line and
API, cluster profile) and the submitit parameter it becomes. Everything else is derived from the
table: ``SubmitOptions`` (the API's value), the ``submit`` command's arguments (``add_arguments``),
a profile's keys and their checks (``profile_problems``), and the merge of profile and options into
submitit parameters (``dispatch.job_parameters``). After submitit's ``_equivalence_dict`` (one map
of its executors' parameter names) and dora's ``RunGridArgs`` (one dataclass for CLI and API).

Older names stay readable in profiles already written (``aliases``: ``gpus_per_node``,
``max_num_timeout``) and on the command line (``--checkpoint-every``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, load_config_file
from .manifest import DEFAULT_MAX_ROWS, MAX_ROWS_ENV
from .runopts import DEFAULTS
from .text import short_path, short_repr

CLI, PROFILE = "cli", "profile"  # where an option may be given (CLI: the command line and the API)


class DispatchError(RuntimeError):
    """The submission cannot be made (bad option or profile, no cluster where one was asked for...)."""


@dataclass(frozen=True)
class Option:
    """One knob of a submission (see the module's docstring)."""

    name: str
    kind: str  # flag | auto | int | seconds | gb | text | lines | mapping
    help: str
    where: frozenset[str] = frozenset({CLI, PROFILE})
    low: float = 0  # smallest value of a number
    default: Any = None  # what applies when neither the options nor the profile say (None: decided later)
    submitit: str = ""  # the submitit parameter it becomes ("": batch-ast's own)
    aliases: tuple[str, ...] = ()  # older profile keys read as this one
    flags: tuple[str, ...] = ()  # older command-line spellings
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value: Any, source: str = PROFILE) -> str:
        """'' when ``value`` is of this option's kind and range, else what is wrong (a profile is
        YAML and an API call Python: ``mem_gb: lots`` is refused here, never by sbatch)."""
        shown = short_repr(value)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind == "flag":
            ok, want = isinstance(value, bool), "True or False"
        elif self.kind == "auto":
            ok = value in (True, False, None) or (source == PROFILE and value == "auto")
            want = "true, false or auto" if source == PROFILE else "True, False or None"
        elif self.kind == "int":
            ok, want = number and isinstance(value, int) and value >= self.low, f"an integer >= {self.low:g}"
        elif self.kind == "seconds":
            ok, want = (
                number and math.isfinite(value) and value >= self.low,
                f"a number of seconds >= {self.low:g}",
            )
        elif self.kind == "gb":
            ok, want = number and 0 < value < 1e6, "a number of GB > 0"
        elif self.kind == "lines":
            ok, want = (
                isinstance(value, list) and all(isinstance(v, str) for v in value),
                "a list of shell lines",
            )
        elif self.kind == "mapping":
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in value.items()
            )
            want = "a mapping of sbatch option to value"
        else:
            ok, want = isinstance(value, str) and bool(value.strip()), "text"
        return "" if ok else f"{self.name} must be {want}, not {shown}"


def _profile_only(name: str, kind: str, help: str, submitit: str | None = None, **more: Any) -> Option:
    """A cluster setting only a profile gives; submitit's parameter is ``slurm_<name>`` unless said."""
    return Option(
        name,
        kind,
        help,
        frozenset({PROFILE}),
        submitit=f"slurm_{name}" if submitit is None else submitit,
        **more,
    )


OPTIONS: tuple[Option, ...] = (
    # what runs
    Option("force", "flag", "redo rows that are already done", frozenset({CLI}), default=False),
    Option(
        "retry_failed",
        "flag",
        "rerun rows whose record says failed (transiently)",
        frozenset({CLI}),
        default=False,
    ),
    Option(
        "max_rows",
        "int",
        f"refuse a manifest or study of more than N rows (default {DEFAULT_MAX_ROWS}, or ${MAX_ROWS_ENV})",
        frozenset({CLI}),
        low=1,
        metavar="N",
    ),
    # how rows become jobs
    Option(
        "rows_per_job",
        "int",
        "pack N rows into one job/array task (default: the executor's packing)",
        low=1,
        metavar="N",
    ),
    Option(
        "batch_rows",
        "int",
        "optimise up to N rows of a job that share a network together, one batched conv (keeps a GPU busy)",
        low=1,
        default=1,
        metavar="N",
    ),
    Option(
        "processes_per_job",
        "int",
        "row processes sharing each job's allocation (its CPUs, split K ways, "
        "or its GPU); on SLURM an array task then takes 2K rows unless rows_per_job says otherwise",
        low=1,
        default=1,
        metavar="K",
    ),
    Option(
        "finish_in_background",
        "auto",
        "write a row's files, figures and metrics while the next row "
        "optimises (default: on where rows run on a GPU; never in row processes or with a tf32 row)",
    ),
    Option(
        "max_array_size",
        "int",
        "SLURM: split into arrays of at most N tasks (the site's MaxArraySize)",
        low=1,
        default=1000,
        metavar="N",
    ),
    Option(
        "workers",
        "int",
        "local executor: jobs run at once on this machine, each with its share of the rows and of the CPUs",
        frozenset({CLI}),
        low=1,
        default=1,
        metavar="N",
    ),
    # what each job asks for
    Option(
        "timeout_min", "int", "time limit per job in minutes", low=1, submitit="timeout_min", metavar="MIN"
    ),
    Option(
        "gpus",
        "int",
        "GPUs per job",
        low=0,
        submitit="gpus_per_node",
        aliases=("gpus_per_node",),
        metavar="N",
    ),
    Option(
        "array_parallelism",
        "int",
        "SLURM: at most N array tasks at once",
        low=1,
        submitit="slurm_array_parallelism",
        metavar="N",
    ),
    # how rows survive interruptions
    Option(
        "max_retries",
        "int",
        "resume a row at most N times after timeouts, preemption or requeues; "
        "also submitit's cap on time-limit requeues",
        low=0,
        default=DEFAULTS.max_retries,
        submitit="slurm_max_num_timeout",
        aliases=("max_num_timeout",),
        metavar="N",
    ),
    Option(
        "checkpoint_every_s",
        "seconds",
        "save each row's optimisation state this often",
        default=DEFAULTS.checkpoint_every_s,
        flags=("--checkpoint-every",),
        metavar="SECONDS",
    ),
    # the cluster's own settings: profile only
    _profile_only("partition", "text", "sbatch --partition"),
    _profile_only("account", "text", "sbatch --account"),
    _profile_only("qos", "text", "sbatch --qos"),
    _profile_only("constraint", "text", "sbatch --constraint (node features)"),
    _profile_only("gres", "text", "sbatch --gres"),
    _profile_only("exclude", "text", "sbatch --exclude"),
    _profile_only("nodelist", "text", "sbatch --nodelist"),
    _profile_only("mail_type", "text", "sbatch --mail-type"),
    _profile_only("mail_user", "text", "sbatch --mail-user"),
    _profile_only(
        "cpus_per_task", "int", "CPUs per job (also torch's threads)", submitit="cpus_per_task", low=1
    ),
    _profile_only("mem_gb", "gb", "memory per job in GB", submitit="mem_gb"),
    _profile_only(
        "signal_delay_s", "int", "how long before the time limit SLURM warns (to checkpoint)", low=0
    ),
    _profile_only("setup", "lines", "shell lines run before the job (modules, conda...)"),
    _profile_only("additional_parameters", "mapping", "anything else sbatch takes"),
    _profile_only("job_name", "text", "the jobs' name", submitit="name"),
    _profile_only(
        "python", "text", 'how a job starts Python, e.g. "apptainer exec image.sif python"', submitit="python"
    ),
    _profile_only(
        "state_dir", "text", "the user's private state folder (submitit's files, caches)", submitit=""
    ),  # batch-ast's own, read by api.prepare
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
ALIASES: dict[str, str] = {alias: o.name for o in OPTIONS for alias in o.aliases}
API_OPTIONS = tuple(o for o in OPTIONS if CLI in o.where)
PROFILE_OPTIONS = tuple(o for o in OPTIONS if PROFILE in o.where)


def _check(self: Any) -> Any:
    """Self, when every option has its type and range; else DispatchError naming each bad one."""
    bad = [p for o in API_OPTIONS if (v := getattr(self, o.name)) is not None and (p := o.problem(v, CLI))]
    if bad:
        raise DispatchError("; ".join(bad))
    return self


_ANNOTATIONS = {"flag": "bool", "auto": "bool | None", "int": "int | None", "seconds": "float | None"}
SubmitOptions = dataclasses.make_dataclass(
    "SubmitOptions",
    [(o.name, _ANNOTATIONS[o.kind], dataclasses.field(default=False if o.kind == "flag" else None))
     for o in API_OPTIONS],
    frozen=True,
    namespace={"check": _check, "__doc__": (
        "How a manifest is submitted: every option ``batch-ast submit`` and ``batch_ast.submit`` share "
        "(``options.OPTIONS`` declares them), checked in one place (``check``) so a wrong type is a "
        "clear message, not a TypeError deep inside submitit. None: the profile's value, else the "
        "option's default.")},
)
SubmitOptions.__module__ = __name__  # pickles and reprs name this module, not dataclasses'


def profile_problems(data: Mapping[Any, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the profile's values by option name, what is wrong with it): unknown keys, an option given
    under two names, values of the wrong kind. None values are left out (YAML's empty value)."""
    values: dict[str, Any] = {}
    problems = []
    unknown = sorted(str(k)[:40] for k in data if _profile_option(k) is None)
    if unknown:
        problems.append(
            f"unknown profile key(s) {unknown[:20]}; known: {sorted(o.name for o in PROFILE_OPTIONS)}"
        )
    for key, value in data.items():
        option = _profile_option(key)
        if value is None or option is None:
            continue
        if option.name in values:
            problems.append(f"{option.name} is given twice (as {option.name} and {option.aliases})")
        elif problem := option.problem(value):
            problems.append(problem)
        else:
            values[option.name] = value
    return values, problems


def _profile_option(key: Any) -> Option | None:
    """The option a profile key (its name or an older one) sets; None for a key no profile takes."""
    option = BY_NAME.get(ALIASES.get(key, key)) if isinstance(key, str) else None
    return option if option is not None and PROFILE in option.where else None


def merged(profile: Mapping[str, Any], options: Any) -> dict[str, Any]:
    """Every option's value for a submission: the options' (``SubmitOptions``) where set, else the
    profile's, else the option's default ("auto" in a profile is None, the default)."""
    out = {}
    for o in OPTIONS:
        value = getattr(options, o.name, None) if CLI in o.where else None
        if value is None:
            value = profile.get(o.name)
        out[o.name] = o.default if value is None or value == "auto" else value
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``submit`` command's arguments for every option of the command line; their default is
    None (a flag's False), so that a profile's value shows through."""
    for o in API_OPTIONS:
        if o.kind == "flag":
            parser.add_argument(o.flag, *o.flags, dest=o.name, action="store_true", help=o.help)
        elif o.kind == "auto":
            group = parser.add_mutually_exclusive_group()
            group.add_argument(o.flag, *o.flags, dest=o.name, action="store_true", default=None, help=o.help)
            group.add_argument("--no-" + o.flag[2:], dest=o.name, action="store_false")
        else:
            shown = "" if o.default is None else f" (default {o.default:g})"
            parser.add_argument(o.flag, *o.flags, dest=o.name, type=int if o.kind == "int" else float,
                                metavar=o.metavar, help=o.help + shown)


def from_arguments(args: argparse.Namespace) -> Any:
    """The parsed command line as ``SubmitOptions``."""
    return SubmitOptions(**{o.name: getattr(args, o.name) for o in API_OPTIONS})


# --- profiles ------------------------------------------------------------------------------------

PROFILE_ENV = "BATCH_AST_PROFILE"


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
            raise DispatchError(
                f"${PROFILE_ENV} names {short_path(named)!r}, which is not a file (unset it or use "
                "--no-profile)"
            )
        return path, f"${PROFILE_ENV}"
    path = user_profile_path()
    try:
        found = path.is_file()
    except OSError:  # a config folder this user may not search (EACCES): no default profile
        found = False
    return (path, "the user's default profile") if found else (None, "")


def load_profile(path: str | Path | None) -> dict[str, Any]:
    """Read a cluster profile YAML (see slurm/profile.example.yaml): its values by option name
    (``options.OPTIONS``; older key names read as their option), every key and value checked."""
    if path is None:
        return {}
    try:
        data = load_config_file(path, "profile")
    except ConfigError as exc:
        raise DispatchError(str(exc)) from None
    values, problems = profile_problems(data)
    if problems:
        raise DispatchError(f"{short_path(path)}: " + "; ".join(problems))
    return values
