"""Index stage: compact per-row records and traces into two Parquet files pandas reads in one line.

``collect`` is safe while jobs still run: it reads only published (renamed) files, skips and
reports unreadable ones, and replaces the index files atomically, so a reader or a killed collect
always leaves the previous index intact. It is incremental: a row whose record and trace files are
unchanged since the last collect (same size, modification time and inode) is taken from the
previous index, and a collect that finds nothing changed writes nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

from .config import flatten_record
from .record import columns, figures_missing, index_schema
from .store import TMP_PREFIX, ResultsError, ResultsRoot, describe_os_error, short_path, write_atomic

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


# What the last collect saw, so the next one reads only what changed (see ``collect``).
STATE_VERSION = 1


def _stat(path: Path) -> list[int] | None:
    """[mtime_ns, size, inode] of a file, None when absent: the identity of one published version
    (files are published by rename, so a rewrite changes the inode even within one mtime tick)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def _sources(results: ResultsRoot) -> dict[str, dict[str, list[int] | None]]:
    """The files an index is made of: every record and trace, and every submission (rows without
    a record come from those)."""
    records = {path.parent.name: _stat(path) for path in results.record_paths()}
    return {
        "records": records,
        "traces": {rid: _stat(results.trace_path(rid)) for rid in records},
        "submissions": {path.name: _stat(path) for path in sorted(results.submissions_dir.glob("*.json"))}
        if results.submissions_dir.is_dir() else {},
    }


def _read_state(results: ResultsRoot) -> dict | None:
    """The last collect's state, if the index files are still the ones it wrote."""
    try:
        state = json.loads(results.collect_state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        return None
    if state.get("columns") != INDEX_SCHEMA.names:
        return None  # another batch-ast version wrote it: its rows may lack columns
    if state.get("outputs") != [_stat(results.index_path), _stat(results.traces_path)]:
        return None  # rewritten or removed since by someone else: trust nothing
    return state


def _write_state(results: ResultsRoot, sources: dict, pending: int, report: CollectReport) -> None:
    state = {
        "version": STATE_VERSION, "columns": INDEX_SCHEMA.names, "sources": sources, "pending": pending,
        "rows": report.rows,
        "traces": report.traces, "outputs": [_stat(results.index_path), _stat(results.traces_path)],
    }
    try:
        results.collect_state_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(results.collect_state_path, lambda tmp: tmp.write_text(json.dumps(state), encoding="utf-8"))
    except OSError:
        pass  # only a cache: the next collect reads everything


def _unchanged_rows(state: dict | None, sources: dict) -> set[str]:
    """Ids whose record and trace are the files the last collect read."""
    if state is None:
        return set()
    old = state["sources"]
    return {
        rid for rid, stat in sources["records"].items()
        if stat is not None and old["records"].get(rid) == stat and old["traces"].get(rid) == sources["traces"][rid]
    }


@contextmanager
def _collect_lock(results: ResultsRoot) -> Iterator[None]:
    """Serialise concurrent collects on one root (each would write correct files, but in turn).

    Holding the lock also means no other collect is writing, so temp files of index writes left by
    a killed collect are stale and removed here."""
    try:
        fh = (results.root / ".collect.lock").open("a")
    except OSError as exc:
        raise ResultsError(
            f"cannot collect into {short_path(results.root)}: {describe_os_error(exc)} "
            "(a read-only results root can still be read with batch_ast.load_index)"
        ) from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            for name in (results.index_path.name, results.traces_path.name):
                for stale in results.root.glob(f"{TMP_PREFIX}{name}.*"):
                    stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_records(paths: list[Path], report: CollectReport, progress: bool = False) -> list[dict]:
    from tqdm import tqdm

    records = []
    # A bar only where someone watches (a TTY) and there is enough to wait for.
    show = progress and len(paths) >= 200 and sys.stderr.isatty()
    for path in tqdm(paths, desc="records", unit="file", disable=not show):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or "id" not in data or "status" not in data:
                raise ValueError("not a batch-ast record")
        except (OSError, ValueError) as exc:
            report.skipped.append(f"{path}: unreadable record ({exc})")
            continue
        records.append(flatten_record(data))
    return records


def _records_table(records: list[dict]) -> pa.Table:
    frame = pd.DataFrame.from_records(records)
    for name in INDEX_SCHEMA.names:
        if name not in frame:
            frame[name] = None
    frame = frame[INDEX_SCHEMA.names]
    for name in ("started_at", "finished_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True, errors="coerce").dt.floor("s")
    return pa.Table.from_pandas(frame, schema=INDEX_SCHEMA, preserve_index=False)


def _traces_table(results: ResultsRoot, ok_ids: list[str], report: CollectReport,
                  previous: pa.Table | None = None, unchanged: set[str] = frozenset()) -> pa.Table:
    """The traces of ``ok_ids``: those of ``unchanged`` rows from ``previous`` (the last collect's
    table) where it has them, the others read from their files."""
    tables = []
    if previous is not None:
        reuse = [rid for rid in ok_ids if rid in unchanged]
        previous = previous.filter(pa.compute.is_in(previous["id"], value_set=pa.array(reuse, pa.string())))
        tables.append(previous.select(TRACES_SCHEMA.names).cast(TRACES_SCHEMA))
        have = set(previous["id"].unique().to_pylist())
        ok_ids = [rid for rid in ok_ids if rid not in have]
    for rid in ok_ids:
        path = results.trace_path(rid)
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            report.skipped.append(f"{path}: unreadable trace ({exc})")
            continue
        table = table.append_column("id", pa.array([rid] * table.num_rows, pa.string()))
        for name in TRACES_SCHEMA.names:  # traces written before a column existed
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, TRACES_SCHEMA.field(name).type))
        tables.append(table.select(TRACES_SCHEMA.names).cast(TRACES_SCHEMA))
    if not tables:
        return TRACES_SCHEMA.empty_table()
    return pa.concat_tables(tables)


def _unrecorded_rows(results: ResultsRoot, recorded: set[str]) -> list[dict]:
    """Submitted rows with no record yet (pending, running, lost, cancelled), so the index holds
    every submitted row of the study; their state comes from the queue (one query per submission)."""
    from .status import unrecorded_rows  # the queue is the dispatch layer's business

    return [row for row in unrecorded_rows(results, recorded) if row["id"] not in recorded]


def _regenerate_missing_figures(results: ResultsRoot, records: list[dict], report: CollectReport) -> None:
    """Redraw the figures of ok rows that have none (a full disk when the job wrote them)."""
    for i, record in enumerate(records):
        if not figures_missing(results.root, record):
            continue
        from .row import regenerate_figures  # torch and matplotlib: only when a row needs them

        try:
            raw = json.loads(results.record_path(record["id"]).read_text(encoding="utf-8"))
            fresh = regenerate_figures(results, raw)
        except Exception as exc:  # noqa: BLE001 - the row stays as it was, with its figure_error
            report.skipped.append(f"{results.run_dir(record['id'])}: figures not regenerated ({type(exc).__name__}: {exc})")
            continue
        records[i] = flatten_record(fresh)
        report.figures_regenerated += 1


def collect(root: str | os.PathLike[str], progress: bool = False) -> CollectReport:
    """Gather every published record and trace under ``root`` into index.parquet and traces.parquet.

    The index has one row per submitted row: those with a record (ok, failed) and those without one
    yet (pending, running, lost, cancelled: their state from the queue). Rows are ordered by
    submission, then manifest row. Incremental: records and traces unchanged since the last
    collect come from the previous index; when no file changed and no row awaits the queue, the
    index is left as it is (``CollectReport.unchanged``).

    Parameters
    ----------
    root : str, path-like or ResultsRoot
        A results root (a submission or a run has been made there).
    progress : bool
        A progress bar over many records, on a terminal.

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
        reused: list[dict] = []
        previous_traces = None
        if unchanged:
            previous = pq.read_table(results.index_path).to_pandas(types_mapper=_NULLABLE_INTS.get)
            previous = previous[previous["id"].isin(unchanged) & previous["status"].isin(["ok", "failed"])]
            reused = previous.astype(object).where(previous.notna(), None).to_dict("records")
            unchanged = {r["id"] for r in reused}  # a row the old index lacks is read again
            previous_traces = pq.read_table(results.traces_path)
        to_read = [results.record_path(rid) for rid in sources["records"] if rid not in unchanged]
        records = _read_records(to_read, report, progress)
        report.reread = len(records)
        records += reused
        _regenerate_missing_figures(results, records, report)
        recorded = {r["id"] for r in records}
        pending = _unrecorded_rows(results, recorded)
        records += pending
        records.sort(key=lambda r: (str(r.get("submission_id") or ""), int(r.get("row") or 0), str(r["id"])))
        index = _records_table(records) if records else INDEX_SCHEMA.empty_table()
        ok_ids = [r["id"] for r in records if r.get("status") == "ok"]
        traces = _traces_table(results, ok_ids, report, previous_traces, unchanged)
        write_atomic(results.index_path, lambda tmp: pq.write_table(index, tmp))
        write_atomic(results.traces_path, lambda tmp: pq.write_table(traces, tmp))
        report.rows, report.traces = index.num_rows, traces.num_rows
        # rows still waiting for the queue make the next collect look again, even if no file changed
        _write_state(results, sources, sum(r.get("status") in ("pending", "running") for r in pending), report)
    return report


def _read_parquet(path: Path, root: str | os.PathLike[str]) -> pa.Table:
    if not path.exists():
        raise ResultsError(f"no {path.name} under {short_path(root)}: run `batch-ast collect {short_path(root)}` first")
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ResultsError(
            f"{short_path(path)} cannot be read ({str(exc)[:200]}): run `batch-ast collect {short_path(root)}` "
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
        Integers are nullable (``Int64``), few-valued text columns categorical, so hyperparameters
        are ready for ``groupby``.

    Raises
    ------
    ResultsError
        No readable index (the message says to run ``batch-ast collect``).
    """
    frame = _read_parquet(ResultsRoot.of(root).index_path, root).to_pandas(types_mapper=_NULLABLE_INTS.get)
    for name in CATEGORY_COLUMNS:
        if name in frame:
            frame[name] = frame[name].astype("category")
    return frame


# Text columns with few distinct values: categoricals group, filter and plot by value.
CATEGORY_COLUMNS = (
    "status", "optimizer", "activation", "rhythm", "beat_grid", "precision", "device", "preset",
    "stop_reason", "style_form", "device_used", "loss_scale",
)
# Integer columns stay integers where some rows have no value (a failed row has no iterations_run).
_NULLABLE_INTS = {pa.int64(): pd.Int64Dtype()}


def load_traces(root: str | os.PathLike[str] = "results", params: list[str] | tuple[str, ...] | None = None) -> pd.DataFrame:
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
    traces = _read_parquet(ResultsRoot.of(root).traces_path, root).to_pandas(types_mapper=_NULLABLE_INTS.get)
    if not params:
        return traces
    index = load_index(root)
    unknown = [name for name in params if name not in index.columns]
    if unknown:
        raise KeyError(f"no index column {', '.join(map(repr, unknown))}; columns are: {', '.join(index.columns)}")
    wanted = [name for name in dict.fromkeys(params) if name != "id"]
    return traces.merge(index[["id", *wanted]], on="id", how="left", validate="many_to_one")
