"""Index stage: compact per-row records and traces into two Parquet files pandas reads in one line.

``collect`` is safe while jobs still run: it reads only published (renamed) files, skips and
reports unreadable ones, and replaces the index files atomically, so a reader or a killed collect
always leaves the previous index intact. It is incremental: a row whose record and trace files are
unchanged since the last collect (same size, modification time and inode) is taken from the
previous index, and a collect that finds nothing changed writes nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import freshness
from .config import PARAMS, flatten_record
from .record import columns, error_type_of, figures_missing, index_schema, read_record, record_dict
from .store import (
    TMP_PREFIX,
    ResultsError,
    ResultsRoot,
    open_regular,
    root_lock,
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


MAX_TRACE_BYTES = 64 << 20  # a 100,000-iteration trace is ~4 MB
MAX_TRACE_ROWS = 1_000_001  # a row per iteration (iterations <= 1,000,000) and the start
FINISHED = ("ok", "failed", "invalid")  # statuses a record file decides (the others: the queue)
# Callbacks the layers above pass in (api.collect): this module reads files and writes the index;
# it neither asks a queue nor draws figures.
UnrecordedRows = Callable[[ResultsRoot, set[str]], list[dict]]
FigureRepair = Callable[[ResultsRoot, dict], dict]


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


class _RowGroups:
    """Trace tables written one after the other, in row groups of about WRITE_SLICE points: a row
    group per row's trace (a collect that read every file) made 20,000 of them, and reading them
    back took seven seconds."""

    def __init__(self, writer: pq.ParquetWriter):
        self.writer, self.pending, self.held, self.written = writer, [], 0, 0

    def add(self, table: pa.Table) -> None:
        for start in range(0, table.num_rows, WRITE_SLICE):
            self.pending.append(table.slice(start, WRITE_SLICE).cast(TRACES_SCHEMA))
            self.held += self.pending[-1].num_rows
            if self.held >= WRITE_SLICE:
                self.flush()

    def flush(self) -> None:
        if self.pending:  # (a file of no row group reads back as an empty table of its schema)
            self.writer.write_table(pa.concat_tables(self.pending))
        self.written += self.held
        self.pending, self.held = [], 0


WRITE_SLICE = 1 << 18  # trace points cast to the file's schema at a time, and a row group's least


class _ReuseFailed(Exception):
    """The last traces file could not be read to the end: its points are read from the rows' files."""


def _write_traces(fh: Any, results: ResultsRoot, ok_ids: list[str], reuse: set[str],
                  report: CollectReport) -> int:
    """The traces of ``ok_ids`` into ``fh``: those of the ``reuse`` rows copied from the last
    collect's file a row group at a time (holding all 2.4 million points of a study took 100 MB),
    the others read from the rows' files. Returns the points written."""
    with pq.ParquetWriter(fh, TRACES_SCHEMA) as writer:
        groups = _RowGroups(writer)
        have = _copy_reused(results, reuse, groups) if reuse else set()
        for rid in ok_ids:
            if rid in have:
                continue
            try:
                table = read_trace(results, rid)
                table = table.append_column("id", pa.array([rid] * table.num_rows, pa.string()))
                for name in TRACES_SCHEMA.names:  # traces written before a column existed
                    if name not in table.column_names:
                        table = table.append_column(
                            name, pa.nulls(table.num_rows, TRACES_SCHEMA.field(name).type)
                        )
                groups.add(table.select(TRACES_SCHEMA.names).cast(TRACES_SCHEMA))
            except (OSError, *_TABLE_ERRORS, KeyError) as exc:
                report.skipped.append(f"{results.trace_path(rid)}: unreadable trace ({str(exc)[:200]})")
        groups.flush()
    return groups.written


# The traces file as a collect reads it back to reuse it: each row's id once, not once a point.
_REUSED_TRACES = pa.schema([pa.field("id", pa.dictionary(pa.int32(), pa.string())),
                            *[TRACES_SCHEMA.field(name) for name in TRACES_SCHEMA.names[1:]]])


def _copy_reused(results: ResultsRoot, reuse: set[str], groups: _RowGroups) -> set[str]:
    """Copy the points of ``reuse`` rows from the last traces file, a row group at a time, as runs
    of rows (slices, not copies); returns the ids copied. A file that cannot be opened as one is
    not used (an empty set); one that fails part way raises ``_ReuseFailed``."""
    try:
        fh = open_regular(results.traces_path, results.root)
    except OSError:
        return set()
    have: set[str] = set()
    with fh:
        try:
            parquet = pq.ParquetFile(fh, read_dictionary=["id"])
            if not set(TRACES_SCHEMA.names) <= set(parquet.schema_arrow.names):
                return set()
            for i in range(parquet.num_row_groups):
                group = parquet.read_row_group(i, columns=TRACES_SCHEMA.names).cast(_REUSED_TRACES)
                group = group.combine_chunks()
                if not group.num_rows:
                    continue
                ids = group["id"].chunk(0)
                names = ids.dictionary.to_pylist()
                wanted = np.array([name in reuse for name in names] + [False], dtype=bool)
                codes = ids.indices.fill_null(len(names)).to_numpy(zero_copy_only=False)
                keep = wanted[codes]
                edges = np.flatnonzero(np.diff(np.r_[0, keep.view(np.int8), 0])).tolist()
                for start, end in zip(edges[::2], edges[1::2], strict=True):
                    groups.add(group.slice(start, end - start))
                have.update(names[code] for code in np.unique(codes[keep]).tolist())
        except (OSError, *_TABLE_ERRORS) as exc:
            if not have and not groups.written and not groups.held:
                return set()
            raise _ReuseFailed(str(exc)) from None
    return have


def _previous(results: ResultsRoot, unchanged: set[str]) -> pa.Table | None:
    """The last index's rows of ``unchanged`` ids that a record finished (each id's first); None
    when that file cannot be read as this version's index (then every record is read again). Kept
    as Arrow: as Python rows, a 20,000-row index took 300 MB."""
    try:
        with open_regular(results.index_path, results.root) as fh:
            previous = pq.read_table(fh, schema=INDEX_SCHEMA)
    except (OSError, *_TABLE_ERRORS):
        return None
    keep = pc.and_(pc.is_in(previous["id"], pa.array(sorted(unchanged), pa.string())),
                   pc.is_in(previous["status"], pa.array(sorted(FINISHED), pa.string())))
    rows = previous.filter(keep)
    first = np.unique(np.asarray(rows["id"].to_pylist(), dtype=object), return_index=True)[1]
    if len(first) < rows.num_rows:
        rows = rows.take(np.sort(first))
    return rows


def _figures_failed(rows: pa.Table) -> pa.Array:
    """Ids of the ok rows of an index table whose figures failed or were never written: a collect
    tries them again. The others' files are looked at when their record is read (new or changed):
    looking at 40,000 figure files at every collect took a fifth of it."""
    failed = pc.and_(pc.equal(rows["status"], "ok"),
                     pc.or_(pc.invert(pc.equal(pc.fill_null(rows["figure_error"], ""), "")),
                            pc.or_(pc.equal(pc.fill_null(rows["spectrogram_png"], ""), ""),
                                   pc.equal(pc.fill_null(rows["loss_png"], ""), ""))))
    return rows.filter(failed)["id"].combine_chunks()


def _in_order(index: pa.Table) -> pa.Table:
    """Rows by submission, then manifest row, then id."""
    keys = pa.table({"submission": pc.fill_null(index["submission_id"], ""),
                     "row": pc.fill_null(index["row"], 0), "id": index["id"]})
    return index.take(pc.sort_indices(keys, sort_keys=[(k, "ascending") for k in keys.column_names]))


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
        sources = freshness.sources(results)
        state = freshness.read_state(results, INDEX_SCHEMA.names)
        if freshness.nothing_changed(state, sources):
            report.rows, report.traces, report.unchanged = state["rows"], state["traces"], True
            return report
        reused = _reusable(results, freshness.unchanged_rows(state, sources), repair_figures is not None)
        unchanged = set(reused["id"].to_pylist()) if reused is not None else set()
        records = _read_records(results, [rid for rid in sources["records"] if rid not in unchanged],
                                report, progress)
        report.reread = len(records)
        if repair_figures is not None:
            _repair_figures(results, records, report, repair_figures)
        recorded = unchanged | {r["id"] for r in records}
        records += [
            r for r in (unrecorded(results, recorded) if unrecorded else []) if r["id"] not in recorded
        ]
        fresh = _records_table(records, report) if records else INDEX_SCHEMA.empty_table()
        index = _in_order(fresh if reused is None else pa.concat_tables([reused.cast(INDEX_SCHEMA), fresh]))
        index = index.replace_schema_metadata(INDEX_SCHEMA.metadata)  # one schema, whichever way it came
        statuses = index["status"].to_pylist()
        report.invalid = statuses.count("invalid")
        ok_ids = [rid for rid, state in zip(index["id"].to_pylist(), statuses, strict=True) if state == "ok"]
        results.write(results.index_path, lambda fh: pq.write_table(index, fh))
        report.rows, report.traces = index.num_rows, _publish_traces(results, ok_ids, unchanged, report)
        # rows still waiting for the queue make the next collect look again, even if no file changed
        waiting = statuses.count("pending") + statuses.count("running")
        freshness.write_state(results, sources, INDEX_SCHEMA.names, waiting, report.rows, report.traces)
    return report


def _reusable(results: ResultsRoot, unchanged: set[str], repairing: bool) -> pa.Table | None:
    """The last index's rows that need no reading (``_previous``); with ``repairing``, not those
    whose figures failed: their records are read again, and their figures mended."""
    reused = _previous(results, unchanged) if unchanged else None
    if reused is not None and repairing:
        failed = _figures_failed(reused)
        if len(failed):
            reused = reused.filter(pc.invert(pc.is_in(reused["id"], failed)))
    return reused


def _publish_traces(results: ResultsRoot, ok_ids: list[str], unchanged: set[str],
                    report: CollectReport) -> int:
    """traces.parquet for ``ok_ids``, the ``unchanged`` rows' points from the last one where it
    reads to the end; returns the points written."""
    written: list[int] = []
    reuse = set(ok_ids) & unchanged
    try:
        results.write(results.traces_path,
                      lambda fh: written.append(_write_traces(fh, results, ok_ids, reuse, report)))
    except _ReuseFailed:  # the points come from the rows' files then
        results.write(results.traces_path,
                      lambda fh: written.append(_write_traces(fh, results, ok_ids, set(), report)))
    return written[-1]


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


def status_counts(root: str | os.PathLike[str] = "results") -> dict[str, int]:
    """How many rows of the index have each status: its one column read, not the whole index."""
    results = _root_argument(root, "status_counts")
    statuses = _read_parquet(results.index_path, root, columns=["status"])["status"]
    return {str(k): int(v) for k, v in statuses.to_pandas().value_counts().items()}


def varying_params(df: pd.DataFrame) -> list[str]:
    """The hyperparameters with more than one value across the rows (the study's design)."""
    return [name for name in PARAMS if name in df and _distinct(df[name]) > 1]


def _distinct(column: pd.Series) -> int:
    """Distinct values, a missing one counted as one; text and mixed cells compared as text."""
    if pd.api.types.is_numeric_dtype(column.dtype) or isinstance(column.dtype, pd.CategoricalDtype):
        return column.nunique(dropna=False)
    return column.astype("string").nunique(dropna=False)


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
    if not len(df):
        return pd.Series([], index=df.index, dtype="category", name="config")
    # each distinct setting's text made once (a study has few): per row, 20,000 rows took 0.35 s
    codes = df.groupby(names, dropna=False, sort=False, observed=True).ngroup().to_numpy()
    firsts = np.unique(codes, return_index=True)[1]
    settings = df[names].iloc[firsts].astype(object)
    text = np.array([" ".join(f"{name}={_key_text(v)}" for name, v in zip(names, values, strict=True))
                     for values in settings.itertuples(index=False, name=None)], dtype=object)
    return pd.Series(text[codes], index=df.index, dtype="category", name="config")


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


class TracePoints:
    """A traces file opened once (a collect that replaces it meanwhile does not change what is
    read) and read a column at a time, as Arrow: the report's curves need every point's ``id``
    (dictionary-encoded: each row's id once) but only the picked points' ``iteration`` and
    ``total``. The three columns at once, with the reader's buffers, took 130 MB of a 20,000-row
    report; pandas with an id string a point, 700 MB."""

    def __init__(self, path: Path, root: str | os.PathLike[str]):
        self._path, self._root = path, root
        if not os.path.lexists(path):
            raise ResultsError(f"no {path.name} under {short_path(root)}: run `batch-ast collect` first")
        try:
            self._file = open_regular(path)
        except OSError as exc:
            self._unreadable(exc)
        try:
            self._parquet = pq.ParquetFile(self._file, read_dictionary=["id"])
        except (OSError, pa.ArrowException) as exc:
            self._file.close()
            self._unreadable(exc)

    def _unreadable(self, exc: Exception) -> None:
        raise ResultsError(
            f"{short_path(self._path)} cannot be read ({str(exc)[:200]}): run `batch-ast collect "
            f"{short_path(self._root)}` to rebuild it from the records"
        ) from None

    @property
    def num_rows(self) -> int:
        return self._parquet.metadata.num_rows

    def column(self, name: str) -> pa.ChunkedArray:
        try:
            return self._parquet.read(columns=[name])[name]
        except (OSError, pa.ArrowException, KeyError) as exc:
            self._unreadable(exc)
            raise  # not reached: for the type checker

    def __enter__(self) -> TracePoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def trace_points(root: str | os.PathLike[str] = "results") -> TracePoints:
    """The root's traces file, to read a column at a time (``TracePoints``)."""
    results = _root_argument(root, "trace_points")
    return TracePoints(results.traces_path, root)


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
