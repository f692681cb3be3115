"""People stage, export: a study into the experiment trackers researchers already keep (MLflow,
TensorBoard, Aim, W&B), one run per row, so a batch-ast study sits next to their other runs.

This module knows the results root and no tracker: it reads each row's validated record (never the
index, which may be stale or another user's), decides what a run holds (``ExportRow``: typed
hyperparameters, metrics, tags; ``Payload``: trace, audio and files, read only for the rows being
written, one row at a time, so memory does not grow with the study), and hands rows to a target
(``export_mlflow``, ``export_tensorboard``, ``export_aim``, ``export_wandb``; each imports its own
library only when asked for).

Runs are keyed by the row id, and each says which record it was made from (``digest``): an export
again skips rows whose run is complete and current, replaces the runs of rows whose record changed
(``--retry-failed`` reran them, say) and the runs an interrupted export left half-written, and
adds new rows. Every file read from the root is read confined to it (``store.open_regular``): a
symlink or a planted device costs only its own file.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import math
import operator
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Protocol

from .config import flatten_record
from .record import Record, columns, read_record
from .store import RECORD, ResultsRoot, UnsafeFileError, load_regular
from .text import describe_os_error, short_path

EXPORT_FORMAT = 1  # what a run holds; a new format re-exports every row
# target name -> (its module, the library it needs, the extra that installs it)
TARGETS: dict[str, tuple[str, str, str]] = {
    "mlflow": ("export_mlflow", "mlflow", "mlflow"),
    "tensorboard": ("export_tensorboard", "google_crc32c", "tensorboard"),
    "aim": ("export_aim", "aim", "aim"),
    "wandb": ("export_wandb", "wandb", "wandb"),
}

MAX_OUTPUT_BYTES = 1 << 30  # a row's WAV: 10 minutes of 48 kHz float32 stereo is ~230 MB
MAX_FIGURE_BYTES = 64 << 20
# Final figures of a row a run holds as metrics (besides every metric column).
RUN_METRICS = ("final_total", "final_content", "final_style", "spectral_convergence", *columns("metric"),
               "iterations_run", "evaluations", "time_total_s", "cpu_s", "wall_s", "peak_rss_bytes")
# Record fields a run holds as tags (text), besides the ones ``run_tags`` derives.
RUN_TAGS = ("id", "name", "status", "error_type", "stop_reason", "hostname", "device_used",
            "slurm_job_id", "slurm_array_task_id", "torch_version", "batch_ast_version",
            "python_version", "submission_id", "content", "style", "content_sha256", "style_sha256",
            "manifest", "started_at", "finished_at", "usage_scope", "warning")
MAX_TAG = 5000  # MLflow keeps at most 8,000 characters of a tag; an error's first lines say enough


class ExportError(RuntimeError):
    """The export cannot be made as asked (unknown target, library missing, destination unusable)."""


def writable_folder(dest: Path, what: str) -> Path:
    """``dest``, made if need be, once a file could be written in it; else ExportError saying so."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=dest, prefix=".probe.").close()
    except OSError as exc:
        raise ExportError(f"cannot write {what} {short_path(dest)}: {exc.strerror or exc}") from None
    return dest


def _option(help: str, flag: str = "", metavar: str | None = None, **more: Any) -> Any:
    default = more.pop("default", None)
    return field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar, **more})


@dataclass(frozen=True)
class ExportOptions:
    """What ``batch-ast export`` and ``batch_ast.export`` share: each field is one option, declared
    once here (its help, flag and kind); the command line is made from these fields."""

    to: str = _option("the tracker: " + ", ".join(TARGETS), choices=tuple(TARGETS), required=True)
    dir: str | None = _option(
        "where the export is written: a TensorBoard logdir, an Aim repository, MLflow's store "
        "(mlflow.db and artifacts/) or W&B's offline runs (DEST/wandb) (default: ROOT/exports/TO)",
        metavar="DEST")
    uri: str | None = _option(
        "MLflow: a tracking URI (http://host:5000, sqlite:///path.db) in place of --dir", metavar="URI")
    experiment: str | None = _option(
        "MLflow's or Aim's experiment, W&B's project (default: 'batch-ast ' and the root's path)",
        metavar="NAME")
    filter: tuple[str, ...] = _option(
        "export only rows where COLUMN OP VALUE holds (OP one of == != < <= > >=; any index column: "
        "preset==quick, content_weight>=1, status==ok); repeat to AND several", metavar="EXPR",
        default=(), repeat=True)
    skip_failed: bool = _option("leave failed rows out (they are exported with their error by default)",
                                default=False)
    workers: int | None = _option(
        "processes writing runs at once where the tracker takes several writers (TensorBoard, Aim, W&B; "
        "default: the CPUs this process may use, at most 4)",
        metavar="N", type=int)

    def check(self) -> ExportOptions:
        """Self when every option fits; else ExportError saying which does not and why."""
        if self.to not in TARGETS:
            raise ExportError(f"--to must be one of {', '.join(TARGETS)}, not {self.to!r}")
        if self.uri is not None and self.to != "mlflow":
            raise ExportError(f"--uri is MLflow's tracking URI; {self.to} takes --dir")
        if self.uri is not None and self.dir is not None:
            raise ExportError("give --uri or --dir, not both")
        for name in ("dir", "uri", "experiment"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ExportError(f"--{name} must be a non-empty text, not {value!r}")
        if isinstance(self.filter, str) or not all(isinstance(f, str) for f in self.filter):
            raise ExportError("filter must be a list of expressions such as ['preset==quick']")
        for expression in self.filter:
            parse_filter(expression)
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ExportError(f"--workers must be an integer >= 1, not {self.workers!r}")
        return self


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``export`` command's options, one per ``ExportOptions`` field."""
    for f in dataclasses.fields(ExportOptions):
        meta = f.metadata
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action="store_true", help=meta["help"])
        elif meta.get("repeat"):
            parser.add_argument(flag, dest=f.name, action="append", default=[], metavar=meta["metavar"],
                                help=meta["help"])
        else:
            parser.add_argument(flag, dest=f.name, choices=meta.get("choices"), type=meta.get("type"),
                                required=meta.get("required", False), metavar=meta["metavar"],
                                help=meta["help"])


def options_from_arguments(args: argparse.Namespace) -> ExportOptions:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExportOptions)}
    values["filter"] = tuple(values["filter"])
    return ExportOptions(**values)


# --- which rows ----------------------------------------------------------------------------------

_FILTER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|=|<|>)\s*(.*?)\s*$")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge}


def parse_filter(expression: str) -> tuple[str, str, str]:
    """(column, operator, value) of ``COLUMN OP VALUE``; ExportError for anything else."""
    found = _FILTER.fullmatch(expression)
    if not found or not found.group(3):
        raise ExportError(f"filter {expression!r} is not COLUMN OP VALUE (e.g. preset==quick, "
                          "content_weight>=1)")
    return found.group(1), found.group(2), found.group(3).strip("'\"")


def row_matches(flat: dict[str, Any], filters: tuple[tuple[str, str, str], ...]) -> bool:
    """Whether a row (its flattened record) meets every filter; a number compares as a number,
    anything else as text. A column the row does not have fails the filter."""
    for column, op, raw in filters:
        value = flat.get(column)
        if value is None:
            return False
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                wanted: Any = float(raw)
            except ValueError:
                raise ExportError(f"filter {column}{op}{raw}: {column} is a number, {raw!r} is not") from None
            value = float(value)
        else:
            value, wanted = str(value).lower() if isinstance(value, bool) else str(value), raw
        if not _OPS[op](value, wanted):
            return False
    return True


# --- what a run holds ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportRow:
    """What one row's run says: identity, hyperparameters (typed as the row used them), metrics
    (finite numbers only), tags (text), and which record it was made from (``digest``)."""

    id: str
    name: str
    status: str  # ok | failed
    digest: str
    params: dict[str, int | float | str | bool]
    metrics: dict[str, float]
    tags: dict[str, str]
    started_at: str | None
    finished_at: str | None
    final_step: int


@dataclass
class Payload:
    """A row's heavy parts, read only when its run is written: the loss trace (iteration, total,
    content, style as lists), the output's samples and every file a run keeps, by name."""

    trace: dict[str, list[float]] | None = None
    audio: Any = None  # numpy float32 (samples,) or (samples, channels), as output.wav holds them
    sample_rate: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def record_digest(record: Record) -> str:
    """Which record (and export format) a run was made from: a changed record, a new run."""
    text = json.dumps({"format": EXPORT_FORMAT, "record": record.to_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def export_row(record: Record) -> ExportRow:
    """The run of a finished row (ok or failed), from its validated record."""
    data = record.to_dict()
    params = dict(record.params or {})
    tags = {name: str(data[name])[:MAX_TAG] for name in RUN_TAGS if data.get(name) not in (None, "")}
    if record.error:
        tags["error"] = record.error[:MAX_TAG]
    for side in ("content", "style"):
        if data.get(side):
            tags[f"{side}_name"] = PurePath(data[side]).name
    if params.get("preset"):
        tags["preset"] = str(params["preset"])
    return ExportRow(
        id=record.id, name=record.name or record.id, status=record.status, digest=record_digest(record),
        params=params, metrics={m: float(data[m]) for m in RUN_METRICS if _finite(data.get(m))},
        tags=tags, started_at=record.started_at, finished_at=record.finished_at,
        final_step=int(record.iterations_run or 0))


def read_payload(results: ResultsRoot, record: Record) -> Payload:
    """The trace, output audio and files of a row, each read confined to the root and capped; a
    file that is missing or refused is named in ``missing`` and costs only itself."""
    import io

    import soundfile  # import cost: only rows being written decode audio

    payload = Payload()
    rid = record.id
    try:
        from .index import read_trace  # import cost: pandas, for an export, not for every CLI command

        table = read_trace(results, rid)
        payload.trace = {name: table[name].to_pylist() for name in ("iteration", "total", "content", "style")
                         if name in table.column_names}
    except FileNotFoundError:
        pass  # a failed row has no trace
    except (OSError, ValueError, KeyError) as exc:
        payload.missing.append(f"trace ({_why(exc)})")
    wanted = {"output.wav": (record.output, MAX_OUTPUT_BYTES),
              "spectrograms.png": (record.spectrogram_png, MAX_FIGURE_BYTES),
              "losses.png": (record.loss_png, MAX_FIGURE_BYTES)}
    for name, (relative, limit) in wanted.items():
        if not relative:
            continue
        try:
            payload.files[name] = load_regular(results.root / relative, results.root, limit)
        except OSError as exc:
            payload.missing.append(f"{name} ({_why(exc)})")
    payload.files["record.json"] = (json.dumps(record.to_dict(), indent=2, sort_keys=True, default=str)
                                    .encode("utf-8"))
    if "output.wav" in payload.files:
        try:
            payload.audio, payload.sample_rate = soundfile.read(io.BytesIO(payload.files["output.wav"]),
                                                                dtype="float32")
        except (RuntimeError, ValueError, soundfile.LibsndfileError) as exc:
            payload.missing.append(f"output.wav audio ({str(exc)[:120]})")
    return payload


def _why(exc: BaseException) -> str:
    if isinstance(exc, UnsafeFileError):
        return str(exc.strerror)
    if isinstance(exc, FileNotFoundError):
        return "missing"
    return describe_os_error(exc) if isinstance(exc, OSError) else str(exc)[:120]


# --- the targets ---------------------------------------------------------------------------------

class Target(Protocol):
    """A tracker's side of an export (``export_mlflow.MlflowTarget``, ``export_tensorboard...``)."""

    where: str  # what the user opens, said in one line
    max_workers: int  # processes that may write runs at once (1: the store takes one writer)

    def exported(self) -> dict[str, str]:
        """Row id -> the digest its run was completed from ('' for a run left half-written)."""

    def write(self, row: ExportRow, payload: Payload, replace: bool) -> None:
        """Make the row's run (replacing the row's earlier or half-written one when ``replace``);
        the run is complete, and says ``row.digest``, only once everything is in it."""

    def close(self) -> None:
        """Finish the export (the target's study-wide parts); also after an interruption."""


def open_target(options: ExportOptions, results: ResultsRoot) -> Target:
    """The target of ``options.to``, its library imported now: missing, it says which extra."""
    module_name, library, extra = TARGETS[options.to]
    try:
        importlib.import_module(library)
    except ImportError:
        raise ExportError(f"--to {options.to} needs {library}: pip install 'batch-ast[{extra}]'") from None
    module = importlib.import_module(f".{module_name}", __package__)  # import cost: the tracker's library
    dest = Path(options.dir).expanduser() if options.dir else results.root / "exports" / options.to
    return module.open_target(dest=dest, uri=options.uri,
                              experiment=options.experiment or f"batch-ast {results.root}")


# --- the export ----------------------------------------------------------------------------------

@dataclass
class ExportReport:
    """What an export did, for the user and for tests."""

    target: str
    where: str = ""
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    failed_rows: int = 0  # of new + updated: failed rows exported with their error
    filtered: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    skipped_examples: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # rows exported without some of their files

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        if len(self.skipped_examples) < 5:
            self.skipped_examples.append(example)

    def lines(self) -> list[str]:
        out = [f"{self.target}: {self.new} new run(s), {self.updated} updated, {self.unchanged} unchanged"
               + (f" ({self.failed_rows} of the new/updated are failed rows, with their error)"
                  if self.failed_rows else "")]
        if self.filtered:
            out.append(f"  {self.filtered} row(s) left out by --filter")
        for reason, count in sorted(self.skipped.items()):
            out.append(f"  skipped {count} row(s): {reason}")
        out.extend(f"    {example}" for example in self.skipped_examples)
        if self.incomplete:
            out.append(f"  {len(self.incomplete)} row(s) exported without some of their files, e.g. "
                       f"{self.incomplete[0]}")
        if self.where:
            out.append(f"  open: {self.where}")
        return out


def export(root: str | Path = "results", to: str = "", *, progress: bool = False,
           **options: Any) -> ExportReport:
    """Export a results root to an experiment tracker, one run per row (see ``ExportOptions`` for
    the options: ``dir``, ``uri``, ``experiment``, ``filter``, ``skip_failed``, ``workers``).

    Only rows that are new, changed since their run was made, or whose run an interrupted export
    left half-written are written; rows still running and rows whose record cannot be read are
    skipped and counted. Returns what was done (``ExportReport.lines()`` says it).
    """
    try:
        chosen = ExportOptions(to=to, **options).check()
    except TypeError as exc:
        raise ExportError(f"export: {exc}") from None
    results = ResultsRoot.of(root)
    results.require_results_root()
    report = ExportReport(target=chosen.to)
    target = open_target(chosen, results)
    report.where = target.where
    try:
        done = target.exported()
        todo = plan_rows(results, done, chosen, report)
        workers = min(chosen.workers or default_workers(), target.max_workers, max(1, len(todo) // CHUNK))
        bar = _bar(len(todo), progress, chosen.to)
        if workers <= 1:
            for rid in todo:
                _tally(report, write_row(results, target, rid, replace=rid in done), rid in done)
                bar.update(1)
        else:
            _write_in_workers(results, chosen, todo, done, workers, report, bar)
        bar.close()
    finally:
        target.close()
    return report


def plan_rows(results: ResultsRoot, done: dict[str, str], chosen: ExportOptions,
              report: ExportReport) -> list[str]:
    """The rows whose run must be written (new, changed, half-written), the others counted."""
    filters = tuple(parse_filter(f) for f in chosen.filter)
    todo = []
    for rid in results.row_ids():
        record, why = read_record(results, rid)
        if record is None:
            report.skip("their record cannot be read", f"{rid}: {why or 'no ' + RECORD}")
        elif record.status == "running":
            report.skip("still running (export again once they end)", f"{rid} ({record.name})")
        elif filters and not row_matches(flatten_record(record.to_dict()), filters):
            report.filtered += 1
        elif record.status == "failed" and chosen.skip_failed:
            report.skip("failed (--skip-failed)", f"{rid} ({record.name})")
        elif done.get(rid) == record_digest(record):
            report.unchanged += 1
        else:
            todo.append(rid)
    return todo


@dataclass(frozen=True)
class Written:
    """What writing one row's run came to (a worker process sends it back)."""

    status: str = ""  # the row's status; '' when its record went away or went bad meanwhile
    incomplete: str = ""  # the files it was exported without
    problem: str = ""


def write_row(results: ResultsRoot, target: Target, rid: str, replace: bool) -> Written:
    """Write one planned row's run, its record read again (it may have changed since planning)."""
    record, why = read_record(results, rid)
    if record is None or record.status == "running":
        return Written(problem=f"{rid}: {why or 'changed while the export ran'}")
    row = export_row(record)
    payload = read_payload(results, record)
    target.write(row, payload, replace=replace)
    missing = f"{rid} ({record.name}): " + ", ".join(payload.missing) if payload.missing else ""
    return Written(status=record.status, incomplete=missing if record.status == "ok" else "")


def _tally(report: ExportReport, written: Written, replaced: bool) -> None:
    if written.problem:
        report.skip("their record went away or went bad during the export", written.problem)
        return
    if replaced:
        report.updated += 1
    else:
        report.new += 1
    report.failed_rows += written.status == "failed"
    if written.incomplete:
        report.incomplete.append(written.incomplete)


# --- in worker processes -------------------------------------------------------------------------

CHUNK = 16  # rows a worker takes at a time (a few seconds of work: the bar moves, the load evens out)
MAX_WORKERS = 4  # a tracker's store takes one writer at a time; more processes only queue at its lock
_WORKER: dict[str, Any] = {}


def default_workers() -> int:
    """The CPUs this process may use (its affinity: a SLURM job's share), at most MAX_WORKERS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


def _init_worker(root: str, chosen: ExportOptions) -> None:
    results = ResultsRoot(root)
    target = open_target(chosen, results)
    target.exported()  # learns the runs it may replace
    _WORKER.update(results=results, target=target)


def _write_chunk(chunk: list[tuple[str, bool]]) -> list[tuple[Written, bool]]:
    results, target = _WORKER["results"], _WORKER["target"]
    return [(write_row(results, target, rid, replace), replace) for rid, replace in chunk]


def _write_in_workers(results: ResultsRoot, chosen: ExportOptions, todo: list[str], done: dict[str, str],
                      workers: int, report: ExportReport, bar: Any) -> None:
    """The rows' runs written by ``workers`` processes (fresh ones: a tracker's open database and
    threads are not to be forked), each opening the target once."""
    import concurrent.futures
    import multiprocessing

    chunks = [[(rid, rid in done) for rid in todo[i:i + CHUNK]] for i in range(0, len(todo), CHUNK)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                initargs=(str(results.root), chosen)) as pool:
        for results_of_chunk in pool.map(_write_chunk, chunks):
            for written, replaced in results_of_chunk:
                _tally(report, written, replaced)
            bar.update(len(results_of_chunk))


def _bar(total: int, show: bool, what: str) -> Any:
    from tqdm import tqdm  # import cost: a bar only when asked for

    return tqdm(total=total, desc=f"export to {what}", unit="row", file=sys.stderr, leave=False,
                disable=not show or not total)


__all__ = ["ExportError", "ExportOptions", "ExportReport", "ExportRow", "Payload", "export"]
