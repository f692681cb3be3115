"""Index stage: compact per-row records and traces into two Parquet files pandas reads in one line.

``collect`` is safe while jobs still run: it reads only published (renamed) files, skips and
reports unreadable ones, and replaces the index files atomically, so a reader or a killed collect
always leaves the previous index intact. It is incremental: a row whose record and trace files are
unchanged since the last collect (same size, modification time and inode) is taken from the
previous index, and a collect that finds nothing changed writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .config import PARAMS, flatten_record
from .private import PrivateStateError, make_private_dir, state_dir
from .record import columns, error_type_of, figures_missing, index_schema, read_record, record_dict
from .store import (
    RECORD,
    TMP_PREFIX,
    TRACE,
    ResultsError,
    ResultsRoot,
    load_json,
    open_regular,
    root_lock,
    write_atomic,
)
from .text import describe_os_error, short_path

SCHEMA_VERSION = 1

# Every column comes from record.Record (one place lists a record's fields): the schema is explicit
# (not inferred from whichever file comes first) and versioned.
METRIC_COLUMNS = columns("metric")
INDEX_SCHEMA = index_schema(SCHEMA_VERSION)

TRACES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("iteration", pa.int64()),
        ("total", pa.float64()),
        ("content", pa.float64()),
        ("style", pa.float64()),
        ("evaluations", pa.int64()),
    ],
    metadata={"batch_ast_schema_version": str(SCHEMA_VERSION)},
)


@dataclass
class CollectReport:
    rows: int = 0
    traces: int = 0
    skipped: list[str] = field(default_factory=list)  # "path: reason" for unreadable files
    figures_regenerated: int = 0
    reread: int = 0  # rows whose record was read again (new or changed since the last collect)
    unchanged: bool = False  # nothing changed: the index files were left as they were
    invalid: int = 0  # rows whose record is not a valid record (status "invalid", the reason in error)


# What the last collect saw, so the next one reads only what changed (see ``collect``).
STATE_VERSION = 1
MAX_STATE_BYTES = 256 << 20  # ~100 bytes a row: far above any real study
MAX_TRACE_BYTES = 64 << 20  # a 100,000-iteration trace is ~4 MB
MAX_TRACE_ROWS = 1_000_001  # a row per iteration (iterations <= 1,000,000) and the start
FINISHED = ("ok", "failed", "invalid")  # statuses a record file decides (the others: the queue)
# Callbacks the layers above pass in (api.collect): this module reads files and writes the index;
# it neither asks a queue nor draws figures.
UnrecordedRows = Callable[[ResultsRoot, set[str]], list[dict]]
FigureRepair = Callable[[ResultsRoot, dict], dict]


def _stat(path: Path) -> list[int] | None:
    """[mtime_ns, size, inode] of a file (not followed if a link), None when absent: the identity
    of one published version (files are published by rename, so a rewrite changes the inode even
    within one mtime tick)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def _sources(results: ResultsRoot) -> dict[str, dict[str, list[int] | None]]:
    """The files an index is made of: every record and trace, and every submission (rows without
    a record come from those)."""
    runs = os.path.join(results.root, "runs")  # paths as text: 40,000 Path objects took a second
    records = {rid: _stat(os.path.join(runs, rid, RECORD)) for rid in results.row_ids()}
    return {
        "records": records,
        "traces": {rid: _stat(os.path.join(runs, rid, TRACE)) for rid in records},
        "submissions": {path.name: _stat(path) for path in sorted(results.submissions_dir.glob("*.json"))}
        if results.submissions_dir.is_dir() else {},
    }


def _is_stamp(value: object) -> bool:
    return value is None or (isinstance(value, list) and len(value) == 3
                             and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def _valid_state(state: object) -> bool:
    """Whether a collect state file has the shape ``_write_state`` gives it (anyone who can write
    into the root can write this file: a malformed one means "read everything", never a crash)."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        return False
    sources = state.get("sources")
    if not isinstance(sources, dict) or set(sources) != {"records", "traces", "submissions"}:
        return False
    if not all(isinstance(v, dict) and all(isinstance(k, str) and _is_stamp(x) for k, x in v.items())
               for v in sources.values()):
        return False
    counts = [state.get(k) for k in ("pending", "rows", "traces")]
    outputs = state.get("outputs")
    return (all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
            and isinstance(outputs, list) and len(outputs) == 2 and all(map(_is_stamp, outputs)))


def _state_path(results: ResultsRoot) -> Path | None:
    """Where this user keeps what their last collect of ``results`` read: in their private state
    folder, never in the root, and with the digests of the index files it wrote. Anyone who can
    write into a shared root could otherwise rewrite index.parquet and a cache whose stamps match,
    and the owner's collect would keep the forgery. None when no private folder can be had (then
    every collect reads every record)."""
    path = results.collect_state_path
    try:
        make_private_dir(path.parent, state_dir())
    except (PrivateStateError, OSError):
        return None
    return path


def _digest(path: Path, root: Path) -> str:
    """SHA-256 of a file of the root ('' when it cannot be read as a regular file)."""
    digest = hashlib.sha256()
    try:
        with open_regular(path, root) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def _read_state(results: ResultsRoot) -> dict | None:
    """The last collect's state, if it is this user's own, well formed, and the index files are
    still byte for byte the ones it wrote."""
    path = _state_path(results)
    if path is None:
        return None
    try:
        state = load_json(path, None, MAX_STATE_BYTES)
    except (OSError, ValueError):
        return None
    if not _valid_state(state) or state.get("root") != str(results.root):
        return None
    if state.get("columns") != INDEX_SCHEMA.names:
        return None  # another batch-ast version wrote it: its rows may lack columns
    if state.get("outputs") != [_stat(results.index_path), _stat(results.traces_path)]:
        return None  # rewritten or removed since by someone else: trust nothing
    if state.get("digests") != [
        _digest(results.index_path, results.root),
        _digest(results.traces_path, results.root),
    ]:
        return None  # same stamps, other bytes: a forgery
    return state


def _write_state(results: ResultsRoot, sources: dict, pending: int, report: CollectReport) -> None:
    path = _state_path(results)
    if path is None:
        return
    state = {
        "version": STATE_VERSION,
        "root": str(results.root),
        "columns": INDEX_SCHEMA.names,
        "sources": sources,
        "pending": pending,
        "rows": report.rows,
        "traces": report.traces,
        "outputs": [_stat(results.index_path), _stat(results.traces_path)],
        "digests": [_digest(results.index_path, results.root), _digest(results.traces_path, results.root)],
    }
    try:
        write_atomic(path, lambda fh: fh.write(json.dumps(state).encode("utf-8")))
    except OSError:
        pass  # only a cache: the next collect reads everything


def _unchanged_rows(state: dict | None, sources: dict) -> set[str]:
    """Ids whose record and trace are the files the last collect read."""
    if state is None:
        return set()
    old = state["sources"]
    return {
        rid
        for rid, stat in sources["records"].items()
        if stat is not None
        and old["records"].get(rid) == stat
        and old["traces"].get(rid) == sources["traces"][rid]
    }


@contextmanager
def _collect_lock(results: ResultsRoot) -> Iterator[None]:
    """Serialise concurrent collects on one root (each would write correct files, but in turn).

    Holding the lock also means no other collect is writing, so temp files of index writes left by
    a killed collect are stale and removed here."""
    try:
        lock = root_lock(results, ".collect.lock")
        lock.__enter__()
    except OSError as exc:
        raise ResultsError(
            f"cannot collect into {short_path(results.root)}: {describe_os_error(exc)} "
            "(a read-only results root can still be read with batch_ast.load_index)"
        ) from None
    try:
        for name in (results.index_path.name, results.traces_path.name):
            for stale in results.root.glob(f"{TMP_PREFIX}{name}.*"):
                stale.unlink(missing_ok=True)
        yield
    finally:
        lock.__exit__(None, None, None)


def invalid_row(row_id: str, reason: str) -> dict:
    """The index row of a record that cannot be used: its row, with the reason."""
    return {
        "id": row_id,
        "status": "invalid",
        "error": reason[:500],
        "error_type": "RecordError",
        "retryable": False,
    }


def _read_records(
    results: ResultsRoot, ids: list[str], report: CollectReport, progress: bool = False
) -> list[dict]:
    from tqdm import tqdm

    records = []
    # A bar only where someone watches (a TTY) and there is enough to wait for.
    show = progress and len(ids) >= 200 and sys.stderr.isatty()
    for rid in tqdm(ids, desc="records", unit="file", disable=not show):
        record, problem = read_record(results, rid)
        if record is None:
            if problem:  # gone since listed: nothing to say
                report.skipped.append(f"{problem} (indexed as invalid)")
                records.append(invalid_row(rid, problem))
            continue
        records.append(flatten_record(record.to_dict()))
    return records


def _table(records: list[dict]) -> pa.Table:
    frame = pd.DataFrame.from_records(records)
    for name in INDEX_SCHEMA.names:
        if name not in frame:
            frame[name] = None
    frame = frame[INDEX_SCHEMA.names]
    untyped = (frame["status"] == "failed") & frame["error_type"].isna()  # records from before error_type
    frame["error_type"] = frame["error_type"].astype(object)
    frame.loc[untyped, "error_type"] = frame.loc[untyped, "error"].map(error_type_of)
    for name in ("started_at", "finished_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True, errors="coerce", format="ISO8601").dt.floor("s")
    return pa.Table.from_pandas(frame, schema=INDEX_SCHEMA, preserve_index=False)


_TABLE_ERRORS = (pa.ArrowException, OverflowError, ValueError, TypeError)


def _records_table(records: list[dict], report: CollectReport) -> pa.Table:
    """The index table. Records are validated when read, so this holds; should a value still not
    fit its column, only that row becomes ``invalid``, never the whole collect."""
    try:
        return _table(records)
    except _TABLE_ERRORS:
        pass
    rows = []
    for record in records:
        try:
            _table([record])
            rows.append(record)
        except _TABLE_ERRORS as exc:
            reason = f"cannot be indexed ({type(exc).__name__}: {str(exc)[:200]})"
            report.skipped.append(f"row {record.get('id')}: {reason}")
            rows.append(invalid_row(str(record.get("id")), reason))
    return _table(rows)


def read_trace(results: ResultsRoot, rid: str) -> pa.Table:
    """A row's trace, its row count checked in the file's footer before anything is decoded: a
    few hundred KB of run-length-encoded Parquet can hold tens of millions of rows (gigabytes once
    read), so the byte cap alone bounds nothing."""
    with open_regular(results.trace_path(rid), results.root, MAX_TRACE_BYTES) as fh:
        parquet = pq.ParquetFile(fh)
        rows = parquet.metadata.num_rows
        if rows > MAX_TRACE_ROWS:
            raise ValueError(f"{rows} rows, more than the {MAX_TRACE_ROWS} a trace may have")
        wanted = [name for name in TRACES_SCHEMA.names if name in parquet.schema_arrow.names]
        return parquet.read(columns=wanted)  # never a planted file's thousand other columns


def _traces_table(results: ResultsRoot, ok_ids: list[str], report: CollectReport,
                  previous: pa.Table | None = None, unchanged: set[str] = frozenset()) -> pa.Table:
    """The traces of ``ok_ids``: those of ``unchanged`` rows from ``previous`` (the last collect's
    table) where it has them, the others read from their files."""
    tables = []
    if previous is not None:
        reuse = [rid for rid in ok_ids if rid in unchanged]
        previous = previous.filter(pc.is_in(previous["id"], value_set=pa.array(reuse, pa.string())))
        tables.append(previous.select(TRACES_SCHEMA.names).cast(TRACES_SCHEMA))
        have = set(previous["id"].unique().to_pylist())
        ok_ids = [rid for rid in ok_ids if rid not in have]
    for rid in ok_ids:
        try:
            table = read_trace(results, rid)
            table = table.append_column("id", pa.array([rid] * table.num_rows, pa.string()))
            for name in TRACES_SCHEMA.names:  # traces written before a column existed
                if name not in table.column_names:
                    table = table.append_column(
                        name, pa.nulls(table.num_rows, TRACES_SCHEMA.field(name).type)
                    )
            tables.append(table.select(TRACES_SCHEMA.names).cast(TRACES_SCHEMA))
        except (OSError, *_TABLE_ERRORS, KeyError) as exc:
            report.skipped.append(f"{results.trace_path(rid)}: unreadable trace ({str(exc)[:200]})")
    if not tables:
        return TRACES_SCHEMA.empty_table()
    return pa.concat_tables(tables)


def _previous(results: ResultsRoot, unchanged: set[str]) -> tuple[list[dict], pa.Table | None]:
    """The last index's rows of ``unchanged`` ids and its traces; nothing when those files cannot
    be read as this version's index (then every record is read again)."""
    try:
        with open_regular(results.index_path, results.root) as fh:
            previous = pq.read_table(fh, schema=INDEX_SCHEMA)
        with open_regular(results.traces_path, results.root) as fh:
            traces = pq.read_table(fh, schema=TRACES_SCHEMA)
    except (OSError, *_TABLE_ERRORS):
        return [], None
    keep = pc.and_(pc.is_in(previous["id"], pa.array(sorted(unchanged), pa.string())),
                   pc.is_in(previous["status"], pa.array(sorted(FINISHED), pa.string())))
    rows, seen = [], set()
    for row in previous.filter(keep).to_pylist():  # Arrow's own conversion: 3x pandas' to_dict here
        if row["id"] not in seen:
            seen.add(row["id"])
            rows.append(row)
    return rows, traces


def update_index(
    root: str | os.PathLike[str],
    progress: bool = False,
    unrecorded: UnrecordedRows | None = None,
    repair_figures: FigureRepair | None = None,
) -> CollectReport:
    """Gather every published record and trace under ``root`` into index.parquet and traces.parquet.

    This is the bottom layer: it reads files and writes the index. ``batch_ast.collect`` (api.py)
    is what users call; it passes in the two things that need the layers above.

    Every record is validated (``Record.from_json``); one that is not valid becomes a row with
    status ``invalid`` and the reason in ``error``, and the other rows are indexed as usual.
    Rows are ordered by submission, then manifest row. Incremental: records and traces unchanged
    since the last collect come from the previous index; when no file changed and no row awaits
    the queue, the index is left as it is (``CollectReport.unchanged``).

    Parameters
    ----------
    root : str, path-like or ResultsRoot
        A results root (a submission or a run has been made there).
    progress : bool
        A progress bar over many records, on a terminal.
    unrecorded : callable, optional
        ``unrecorded(results, recorded_ids)`` → index rows of submitted rows without a record
        (pending, running, lost, cancelled: their state from the queue).
    repair_figures : callable, optional
        ``repair_figures(results, record)`` → the record with its figures redrawn, for ok rows
        whose figures are missing.

    Returns
    -------
    CollectReport
        Rows and trace points written, records read again, unreadable files skipped (with why).

    Raises
    ------
    ResultsError
        Not a results root, or one that cannot be written (a read-only root is still readable
        with ``load_index``).
    """
    results = ResultsRoot.of(root)
    results.require_results_root()
    report = CollectReport()
    with _collect_lock(results):
        sources = _sources(results)
        state = _read_state(results)
        if state is not None and state["sources"] == sources and not state["pending"]:
            report.rows, report.traces, report.unchanged = state["rows"], state["traces"], True
            return report
        unchanged = _unchanged_rows(state, sources)
        reused, previous_traces = _previous(results, unchanged) if unchanged else ([], None)
        unchanged = {r["id"] for r in reused}  # a row the old index lacks is read again
        records = _read_records(results, [rid for rid in sources["records"] if rid not in unchanged],
                                report, progress)
        report.reread = len(records)
        records += reused
        if repair_figures is not None:
            _repair_figures(results, records, report, repair_figures)
        recorded = {r["id"] for r in records}
        pending = [
            r for r in (unrecorded(results, recorded) if unrecorded else []) if r["id"] not in recorded
        ]
        records += pending
        records.sort(
            key=lambda r: (str(r.get("submission_id") or ""), _row_number(r.get("row")), str(r["id"]))
        )
        index = _records_table(records, report) if records else INDEX_SCHEMA.empty_table()
        report.invalid = sum(r.get("status") == "invalid" for r in records)
        ok_ids = [r["id"] for r in records if r.get("status") == "ok"]
        traces = _traces_table(results, ok_ids, report, previous_traces, unchanged)
        results.write(results.index_path, lambda fh: pq.write_table(index, fh))
        results.write(results.traces_path, lambda fh: pq.write_table(traces, fh))
        report.rows, report.traces = index.num_rows, traces.num_rows
        # rows still waiting for the queue make the next collect look again, even if no file changed
        _write_state(
            results, sources, sum(r.get("status") in ("pending", "running") for r in pending), report
        )
    return report


def _row_number(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _repair_figures(
    results: ResultsRoot, records: list[dict], report: CollectReport, repair: FigureRepair
) -> None:
    """Redraw the figures of ok rows that have none (a full disk when the job wrote them)."""
    for i, record in enumerate(records):
        if not figures_missing(results.root, record):
            continue
        try:
            raw = record_dict(results, record["id"])
            if raw is None:
                continue
            fresh = repair(results, raw)
        except Exception as exc:  # noqa: BLE001 - the row stays as it was, with its figure_error
            report.skipped.append(
                f"{results.run_dir(record['id'])}: figures not regenerated ({type(exc).__name__}: {exc})"
            )
            continue
        records[i] = flatten_record(fresh)
        report.figures_regenerated += 1


def _root_argument(root: object, function: str) -> ResultsRoot:
    """The results root a reader was given, or a clear TypeError (``load_index(None)``...)."""
    if isinstance(root, ResultsRoot):
        return root
    if not isinstance(root, (str, os.PathLike)) or (isinstance(root, str) and not root):
        raise TypeError(
            f"{function}: root must be a results folder (a str or path), not {type(root).__name__}"
        )
    return ResultsRoot(root)


def _read_parquet(path: Path, root: str | os.PathLike[str], **read: Any) -> pa.Table:
    if not os.path.lexists(path):
        raise ResultsError(
            f"no {path.name} under {short_path(root)}: run `batch-ast collect {short_path(root)}` first"
        )
    try:
        with open_regular(path) as fh:  # never a FIFO or device; the index may be a user's own link
            return pq.read_table(fh, **read)
    except (OSError, pa.ArrowException) as exc:
        raise ResultsError(
            f"{short_path(path)} cannot be read ({str(exc)[:200]}): run `batch-ast collect "
            f"{short_path(root)}` "
            "to rebuild it from the records"
        ) from None


def load_index(root: str | os.PathLike[str] = "results") -> pd.DataFrame:
    """The results index as a DataFrame.

    Parameters
    ----------
    root : str or path-like
        The results root (``batch-ast collect`` writes its index).

    Returns
    -------
    pandas.DataFrame
        One row per submitted row, with the columns of ``INDEX_SCHEMA`` (from ``record.Record``):
        identity, status and error, every hyperparameter, losses, metrics, timings, environment.
        Integers and flags are nullable (``Int64``, ``boolean``), few-valued text columns
        categorical, so hyperparameters are ready for ``groupby``.

    Raises
    ------
    ResultsError
        No readable index (the message says to run ``batch-ast collect``).
    """
    results = _root_argument(root, "load_index")
    table = _read_parquet(results.index_path, root)
    for column in INDEX_SCHEMA:  # an index an older version wrote: its missing columns empty until a collect
        if column.name not in table.column_names:
            table = table.append_column(column, pa.nulls(table.num_rows, column.type))
    frame = table.to_pandas(types_mapper=_NULLABLE.get)
    for name in CATEGORY_COLUMNS:
        if name in frame:
            frame[name] = frame[name].astype("category")
    return with_study_columns(frame)


def varying_params(df: pd.DataFrame) -> list[str]:
    """The hyperparameters with more than one value across the rows (the study's design)."""
    return [name for name in PARAMS
            if name in df and df[name].astype("string").nunique(dropna=False) > 1]


ONE_CONFIG = "(all)"  # the ``config`` of every row of a study whose rows differ only by seed


def _key_text(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.12g}" if isinstance(value, float) else str(value)


def config_keys(df: pd.DataFrame, params: list[str] | None = None) -> pd.Series:
    """Each row's configuration, ``content_weight=4.3 optimizer=adam``: the values of the varying
    hyperparameters but the seed (``params``, default ``varying_params(df)``), so that grouping by
    it averages over seeds; ``ONE_CONFIG`` where nothing else varies."""
    names = [p for p in (varying_params(df) if params is None else params) if p != "seed"]
    if not names:
        return pd.Series(ONE_CONFIG, index=df.index, dtype="category", name="config")
    text = [" ".join(f"{name}={_key_text(v)}" for name, v in zip(names, values, strict=True))
            for values in zip(*(df[name].astype(object) for name in names), strict=True)]
    return pd.Series(text, index=df.index, dtype="category", name="config")


def with_study_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The columns the index derives for analysis, not stored (they depend on the whole study):
    ``content_name`` and ``style_name`` (the inputs' file names) and ``config``
    (``config_keys``)."""
    for side in ("content", "style"):
        if side in df:
            names = df[side].astype("string").str.rsplit("/", n=1).str[-1]
            df[f"{side}_name"] = names.astype("category")
    df["config"] = config_keys(df)
    return df


# Text columns with few distinct values: categoricals group, filter and plot by value.
CATEGORY_COLUMNS = (
    "status", "optimizer", "activation", "rhythm", "beat_grid", "precision", "device", "preset",
    "stop_reason", "style_form", "device_used", "loss_scale",
)
# Integer and flag columns keep their type where some rows have no value (a failed row has no
# iterations_run, a pending row no retryable): pandas' nullable Int64 and boolean, not float/object.
_NULLABLE = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


def trace_points(root: str | os.PathLike[str] = "results") -> pa.Table:
    """``id`` (dictionary-encoded: each row's id once), ``iteration`` and ``total`` of every trace
    point, as Arrow: what the report's curves need, in a tenth of the memory of ``load_traces``
    (2.4 million points as pandas with an id string each took 700 MB)."""
    results = _root_argument(root, "trace_points")
    return _read_parquet(results.traces_path, root, columns=["id", "iteration", "total"],
                         read_dictionary=["id"])


def load_traces(
    root: str | os.PathLike[str] = "results", params: list[str] | tuple[str, ...] | None = None
) -> pd.DataFrame:
    """Loss traces in long format, one row per iteration of each ok row.

    Parameters
    ----------
    root : str or Path
        The results root.
    params : list of str, optional
        Index columns (hyperparameters, ``name``, metrics...) to join on ``id``, typed as in
        ``load_index``; e.g. ``load_traces(root, params=["content_weight", "optimizer"])`` is ready
        for ``groupby`` or seaborn's ``hue``. An unknown name raises KeyError naming the columns.

    Returns
    -------
    pandas.DataFrame
        Columns ``id``, ``iteration``, ``total``, ``content``, ``style`` (losses at the iterate the
        iteration started from), ``evaluations`` (loss+gradient evaluations in the iteration,
        nullable), then the requested ``params``.
    """
    if isinstance(params, str):
        raise TypeError(
            f"load_traces: params must be a list of column names, e.g. [{params!r}], not a string"
        )
    results = _root_argument(root, "load_traces")
    traces = _read_parquet(results.traces_path, root).to_pandas(types_mapper=_NULLABLE.get)
    if not params:
        return traces
    index = load_index(results).drop_duplicates("id")  # an index written by anyone: ids once each
    unknown = [name for name in params if name not in index.columns]
    if unknown:
        raise KeyError(
            f"no index column {', '.join(map(repr, unknown))}; columns are: {', '.join(index.columns)}"
        )
    wanted = [name for name in dict.fromkeys(params) if name != "id"]
    return traces.merge(index[["id", *wanted]], on="id", how="left", validate="many_to_one")
