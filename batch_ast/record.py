"""A row's record: the one file (``runs/<id>/record.json``) that says what a row is and how it ended.

``Record`` is the only place that lists a record's fields; the row fills it (row.py), and the index
(index.py) derives its Parquet schema, the metric columns and the category columns from it. A
field the dataclass does not declare cannot be set (``update`` raises), so nothing a job learns is
silently dropped on its way to the index. A record read back from a results root is a
stranger's file (the root may be group-writable): ``Record.from_json`` checks every field against
its declared kind before anything uses it, so one bad file becomes one ``invalid`` row, never an
exception that stops collect, status or a plan. Keys it does not declare (a newer version's) are
ignored; fields older versions did not write stay None.
"""

from __future__ import annotations

import math
import os
import platform
import re
import socket
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from .config import PARAMS, ConfigError, Params
from .store import ResultsRoot, open_regular, parse_json
from .text import describe_os_error, short_repr
from .usage import SCOPES
from .version import VERSION

# What each field becomes in the index: an Arrow type, or None for record-only fields (long text,
# lists, nested data). "metric" fields are the objective measures of an output (metrics.py).
_ARROW = {"text": pa.string(), "int": pa.int64(), "float": pa.float64(), "flag": pa.bool_(),
          "time": pa.timestamp("s", tz="UTC")}
_PARAM_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64()}


def _column(kind: str | None, group: str = "", default: Any = None) -> Any:
    return field(default=default, metadata={"kind": kind, "group": group})


def _text(group: str = "", default: Any = None) -> Any:
    return _column("text", group, default)


def _int(group: str = "") -> Any:
    return _column("int", group)


def _float(group: str = "") -> Any:
    return _column("float", group)


def now_utc() -> str:
    """ISO time to the second, UTC (the record's started_at/finished_at)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Record:
    """Every field a row's record may hold, in index column order (``params`` stands for one
    column per hyperparameter). None means "not known for this row" and is not written."""

    # what the row is (the plan's RowSpec)
    id: str = _text()
    name: str = _text()
    row: int = _int()
    status: str = _text(default="running")  # running, ok, failed
    error: str = _text(default="")
    error_type: str = _text()  # the exception's class, to count failures by kind
    retryable: bool = _column("flag", default=False)
    content: str = _text()
    style: str = _text()
    content_sha256: str = _text()
    style_sha256: str = _text()
    manifest: str = _text()
    submission_id: str = _text(default="")
    # files, relative to the results root
    output: str = _text()
    trace: str = _text()
    spectrogram_png: str = _text()
    loss_png: str = _text()
    figure_error: str = _text()
    checkpoint_error: str = _text()
    warning: str = _text()
    params: dict[str, Any] = _column("params")
    # the optimisation
    iterations_run: int = _int()
    evaluations: int = _int()
    style_form: str = _text()
    stop_reason: str = _text()
    content_bpm: float = _float()
    style_bpm: float = _float()
    beat_segments: int = _int()
    resumed_from_iteration: int = _int()
    resumes: int = _int()
    final_total: float = _float()
    final_content: float = _float()
    final_style: float = _float()
    spectral_convergence: float = _float()
    # objective measures of the written audio (metrics.output_metrics)
    content_distance: float = _float("metric")
    style_distance: float = _float("metric")
    style_distance_of_content: float = _float("metric")
    content_distance_heldout: float = _float("metric")
    style_distance_heldout: float = _float("metric")
    style_distance_heldout_of_content: float = _float("metric")
    lsd_to_content_db: float = _float("metric")
    onset_corr_content: float = _float("metric")
    onset_corr_style: float = _float("metric")
    output_rms_dbfs: float = _float("metric")
    content_rms_dbfs: float = _float("metric")
    style_rms_dbfs: float = _float("metric")
    output_gain: float = _float()
    content_seconds: float = _float()
    style_seconds: float = _float()
    # where the time went (seconds)
    time_load_s: float = _float("timing")
    time_optimize_s: float = _float("timing")
    time_phase_s: float = _float("timing")
    time_write_s: float = _float("timing")
    time_figures_s: float = _float("timing")
    time_metrics_s: float = _float("timing")
    time_total_s: float = _float("timing")
    # what the row consumed (usage.py; None where not measured: device fields off a GPU, records
    # written before 0.5): CPU seconds (user + system), wall seconds, peak resident memory, device
    # seconds, peak device memory, mean GPU utilisation (%); usage_scope says what they cover
    cpu_s: float = _float("cost")
    wall_s: float = _float("cost")  # its share of its process's time, summed over requeues
    peak_rss_bytes: int = _int("cost")
    usage_scope: str = _text()
    device_s: float = _float("cost")
    device_peak_bytes: int = _int("cost")
    gpu_util_mean: float = _float("cost")
    # what its job was granted (SLURM's allocation, from the job's environment; the time limit the
    # job was submitted with) and how many row processes shared that grant
    alloc_cpus: int = _int("cost")
    alloc_mem_bytes: int = _int("cost")
    alloc_gpus: int = _int("cost")
    alloc_time_limit_s: float = _float("cost")
    alloc_rows: int = _int("cost")
    # where and with what it ran
    device_used: str = _text()
    torch_threads: int = _int()
    hostname: str = _text()
    slurm_job_id: str = _text()
    slurm_array_task_id: str = _text()
    slurm_restart_count: int = _int()
    torch_version: str = _text()
    batch_ast_version: str = _text()
    python_version: str = _text()
    started_at: str = _column("time")
    finished_at: str = _column("time")
    # who wrote the record file (its owner's uid, read from the file, never from its contents): in a
    # shared root, rows another user's files claim are told apart by it
    record_uid: int = _int()
    # record only: too long or not a scalar
    traceback: str = _column(None)
    resources: dict[str, Any] = _column(None)
    content_beat_times: list[float] = _column(None)
    style_beat_times: list[float] = _column(None)

    @classmethod
    def start(cls, spec: dict[str, Any], submission_id: str, environment: dict[str, Any]) -> Record:
        """A running row's record: its spec (``RowSpec.to_dict()``), this process's versions and
        the job environment (``backends.job_environment``)."""
        import torch  # import cost: a record is read (status, collect) far more often than started

        record = cls(submission_id=submission_id, started_at=now_utc(), batch_ast_version=VERSION,
                     torch_version=torch.__version__, python_version=platform.python_version(),
                     # results are bit-identical only at equal device and thread count
                     torch_threads=torch.get_num_threads(), hostname=socket.gethostname())
        record.update(**spec, **environment)
        return record

    def update(self, **values: Any) -> None:
        """Set fields; a name the record does not declare is a KeyError (never a silent drop)."""
        unknown = sorted(set(values) - _FIELD_NAMES)
        if unknown:
            raise KeyError(f"Record has no field(s) {unknown}: declare them in batch_ast/record.py")
        for name, value in values.items():
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """The JSON a record file holds: every known field, nested ``params`` as written."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, data: Any, row_id: str) -> Record:
        """The record of row ``row_id`` from parsed JSON, every declared field checked against
        its kind (``RecordError`` says which and why). The id must be the row's (its folder's
        name); file fields must name the row's own files; ``params`` must be valid settings."""
        if not isinstance(data, dict):
            raise RecordError(f"not a record (a JSON {type(data).__name__})")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data or data[f.name] is None:
                continue
            try:
                values[f.name] = _checked(f.name, f.metadata["kind"], data[f.name], row_id)
            except (TypeError, ValueError) as exc:
                raise RecordError(f"field {f.name!r}: {exc}") from None
        if values.get("id") != row_id:
            raise RecordError(f"field 'id' must be the row's id {row_id}, not {short_repr(data.get('id'))}")
        if "status" not in values:
            raise RecordError("no 'status'")
        return cls(**values)


class RecordError(ValueError):
    """A record file that is not a valid record (its reason names the field)."""


_ERROR_CLASS = re.compile(r"([A-Za-z_][A-Za-z0-9_.]{0,99})(?::|$)")


def error_type_of(error: str) -> str:
    """The exception class an ``error`` text begins with (``RowRun.fail`` writes "Class: message"),
    for records written before ``error_type`` existed; '' when it begins with none."""
    match = _ERROR_CLASS.match(error or "")
    return match.group(1) if match else ""


MAX_TEXT = 1 << 16  # an error message with its traceback fits; a planted megabyte does not
MAX_LIST = 100_000
STATUSES = ("running", "ok", "failed")
ROW_FILES = {"output": "output.wav", "trace": "trace.parquet", "spectrogram_png": "spectrograms.png",
             "loss_png": "losses.png"}
_SUBMISSION_ID = re.compile(r"[0-9A-Za-z.:_-]{0,80}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, not {short_repr(value)}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{short_repr(value)} is out of a float's range") from None


def _checked(name: str, kind: str | None, value: Any, row_id: str) -> Any:
    """One field's value if it fits its kind (see ``Record``), else TypeError/ValueError."""
    if kind == "params":
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping of hyperparameters, not {short_repr(value)}")
        try:
            return Params.from_record(value).to_dict()
        except (ConfigError, TypeError) as exc:
            raise ValueError(str(exc)[:300]) from None
    if kind in ("text", "time") or name == "traceback":
        if not isinstance(value, str):
            raise TypeError(f"expected text, not {short_repr(value)}")
        if len(value) > MAX_TEXT:
            raise ValueError(f"{len(value)} characters, more than {MAX_TEXT}")
        if kind == "time":
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"not an ISO time: {short_repr(value)}") from None
        elif name == "status" and value not in STATUSES:
            raise ValueError(f"must be one of {STATUSES}, not {short_repr(value)}")
        elif name in ("content_sha256", "style_sha256") and not _HEX64.fullmatch(value):
            raise ValueError(f"not a SHA-256 (64 hex digits): {short_repr(value)}")
        elif name in ROW_FILES and value != f"runs/{row_id}/{ROW_FILES[name]}":
            raise ValueError(
                f"must name the row's own file runs/{row_id}/{ROW_FILES[name]}, not {short_repr(value)}"
            )
        elif name == "submission_id" and not _SUBMISSION_ID.fullmatch(value):
            raise ValueError(f"not a submission id: {short_repr(value)}")
        elif name == "usage_scope" and value not in SCOPES:
            raise ValueError(f"must be one of {SCOPES}, not {short_repr(value)}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, not {short_repr(value)}")
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{short_repr(value)} does not fit 64 bits")
        if (name == "row" or name in _COST) and value < 0:
            raise ValueError(f"must be >= 0, not {value}")
        return value
    if kind == "float":
        number = _number(value)
        if name in _COST and not (math.isfinite(number) and number >= 0):
            raise ValueError(f"must be a finite number >= 0, not {short_repr(value)}")
        return number
    if kind == "flag":
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, not {short_repr(value)}")
        return value
    # record-only fields
    if name == "resources":
        if not isinstance(value, dict) or not all(isinstance(v, (int, float, str)) for v in value.values()):
            raise TypeError("expected a mapping of resource values")
        return value
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise TypeError(f"expected a list of at most {MAX_LIST} numbers")
    return [_number(v) for v in value]


_FIELD_NAMES = frozenset(f.name for f in fields(Record))


# The measure analyses and the report rank rows by unless told otherwise: a held-out measure of the
# written audio (the optimised loss favours the lowest content weight by construction).
DEFAULT_METRIC = "style_distance_heldout"


def columns(group: str) -> tuple[str, ...]:
    """Names of the record fields of one group ("metric", "timing", "cost")."""
    return tuple(f.name for f in fields(Record) if f.metadata["group"] == group)


_COST = frozenset(columns("cost"))  # usage figures: never negative


def index_schema(version: int) -> pa.Schema:
    """The index's Arrow schema: the record's fields in order, ``params`` spread into one column per
    hyperparameter, record-only fields left out."""
    out: list[tuple[str, pa.DataType]] = []
    for f in fields(Record):
        kind = f.metadata["kind"]
        if kind == "params":
            out.extend((name, _PARAM_ARROW[spec.kind]) for name, spec in PARAMS.items())
        elif kind is not None:
            out.append((f.name, _ARROW[kind]))
    return pa.schema(out, metadata={"batch_ast_schema_version": str(version)})


def figures_missing(root: Path | str, record: dict[str, Any]) -> bool:
    """An ok row whose figures failed (disk full, a plotting error) or whose PNGs are gone."""
    if record.get("status") != "ok":
        return False
    if record.get("figure_error"):
        return True
    return any(not record.get(key) or not os.path.exists(os.path.join(root, record[key]))
               for key in ("spectrogram_png", "loss_png"))  # as text: a collect asks of 20,000 rows


MAX_RECORD_BYTES = 1 << 20  # a record is a few KB; a beat-segmented one with 10,000 beats ~200 KB


def read_record(results: ResultsRoot, row_id: str) -> tuple[Record | None, str]:
    """(the row's record, "") — or (None, why) when it is absent ("" then) or cannot be used:
    a symlink, not a regular file, over MAX_RECORD_BYTES, not JSON, or not a valid record
    (``Record.from_json``). Everything read from a shared root is a stranger's until checked."""
    path = results.record_path(row_id)
    try:
        with open_regular(path, results.root, MAX_RECORD_BYTES) as fh:
            uid = os.fstat(fh.fileno()).st_uid
            data = parse_json(path, fh.read(MAX_RECORD_BYTES + 1), MAX_RECORD_BYTES)
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError) as exc:
        return None, describe_os_error(exc) if isinstance(exc, OSError) else f"{path}: {exc}"
    try:
        record = Record.from_json(data, row_id)
    except RecordError as exc:
        return None, f"{path}: {exc}"
    record.record_uid = uid
    return record, ""


def record_dict(results: ResultsRoot, row_id: str) -> dict[str, Any] | None:
    """The row's validated record as a dict, or None when absent or unusable (``read_record``
    says why: a reader never trusts a bad file)."""
    record, _ = read_record(results, row_id)
    return record.to_dict() if record is not None else None
