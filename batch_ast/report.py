"""Report stage: one static HTML page to browse, hear and compare the rows of a results root.

No server and no CDN: ``report.html`` holds the page and its script, ``<report>.data.js`` the rows
(loaded with a ``<script>`` tag, which browsers allow on file:// where fetch() is refused). The
table is drawn from that data a page at a time, so a study of thousands of rows opens at once:
players and figures are made only when a row is opened (a browser allows about a thousand live
media players per page), and the media check counts only what it tried to load.

Links are relative to the report. ``--portable`` also copies (or hard-links) the input audio next
to the report, so the results folder can be copied to a laptop and still play its inputs.
"""

from __future__ import annotations

import html
import importlib.resources
import json
import math
import os
import shutil
import stat
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import freshness
from .api import collect
from .costing import preset_totals
from .index import METRIC_COLUMNS, TracePoints, load_index, trace_points, varying_params
from .manifest import max_input_bytes
from .plan import file_sha256
from .record import DEFAULT_METRIC, ROW_FILES
from .store import (
    SHA256,
    ResultsError,
    ResultsRoot,
    move_aside,
    open_dir_fd,
    open_regular,
    parts_within,
    write_atomic,
)
from .text import describe_os_error, inert, short_path

# Always in the table; the hyperparameters that vary across rows and the metrics come after.
FIXED_COLUMNS = ["label", "status", "content_name", "style_name"]


def table_columns(params: list[str], metrics: list[str]) -> list[str]:
    """The table's columns in the order a researcher reads them: the name and status, the held-out
    and other measures of the written audio, then the losses, the inputs and the varying
    hyperparameters (a 1,400 px window showed no measure at all when they came last)."""
    measures = [m for m in metrics if m in METRIC_COLUMNS] + [m for m in metrics if m not in METRIC_COLUMNS]
    return [*FIXED_COLUMNS[:2], *measures, *FIXED_COLUMNS[2:], *params]
RESULT_COLUMNS = [
    "iterations_run",
    "final_total",
    "final_content",
    "final_style",
    "spectral_convergence",
    *METRIC_COLUMNS,
]
# Shown in a row's details (not columns: they rarely decide anything across rows).
DETAIL_COLUMNS = [
    "row",
    "submission_id",
    "stop_reason",
    "evaluations",
    "time_total_s",
    "device_used",
    "error",
    "figure_error",
    "warning",
    "content_bpm",
    "style_bpm",
    "cpu_s",
    "peak_rss_bytes",
    "device_peak_bytes",
    "gpu_util_mean",
]
LOUDNESS_COLUMNS = ["content_rms_dbfs", "style_rms_dbfs", "output_rms_dbfs"]
TRACE_POINTS = 60  # per row: enough for an overlaid curve, small enough for 5,000 rows


def _missing(value: object) -> bool:
    """The None, NaN or pd.NA that pandas puts in empty cells (nullable integers give pd.NA)."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _json_value(value: object) -> Any:
    """A JSON-safe cell: missing → null, numpy scalars → Python, integral floats stay floats."""
    if _missing(value):
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (int, float, bool)) else str(value)


def _rel(target: str | os.PathLike, start: Path) -> str:
    """A relative URL: percent-encoded, so file names with #, ? or % still load."""
    return urllib.parse.quote(Path(os.path.relpath(Path(target), start)).as_posix())


def _portable_copy(path: Path, sha: object, media_dir: Path, base: Path) -> Path | None:
    """The input's copy beside the report, named by its hash (one copy per distinct input): a hard
    link where the filesystem allows, else a copy. Only for a regular file whose bytes hash to the
    record's SHA-256 (a record is anyone's words: its hash must not become a path, and its path
    must not make the report copy some other file); None otherwise. ``media_dir`` is reached from
    ``base`` without following a symlink."""
    if _missing(sha) or not SHA256.fullmatch(str(sha)):
        return None
    try:
        st = os.stat(path)
        # the size first: a sparse 30 GB "input" must not be hashed for minutes
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_input_bytes() or file_sha256(path) != sha:
            return None
    except OSError:
        return None
    name = f"{str(sha)[:16]}-{path.name}"
    target = media_dir / name
    dir_fd = open_dir_fd(base, parts_within(base, media_dir), create=True)
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return target  # there already (named by the hash of what it holds)
    except FileNotFoundError:
        try:
            os.link(path, name, dst_dir_fd=dir_fd, follow_symlinks=False)
            return target
        except OSError:
            pass  # another filesystem: a copy
    finally:
        os.close(dir_fd)
    with path.open("rb") as src:
        write_atomic(target, lambda fh: shutil.copyfileobj(src, fh), base)
    return target


def _downsampled_traces(root: Path, ids: set[str]) -> dict[str, dict[str, Any]]:
    """Per ok row, [iteration, total loss] at most TRACE_POINTS times (first and last kept,
    non-finite losses dropped after the pick), losses to 5 significant digits and the iterations
    as (first, step, last) where they are evenly spaced but for the last (as downsampling leaves
    them), else listed (report-data.js's ``traceOf`` reads both; the pairs took half a 20,000-row
    data file). Every row's picks are computed at once with numpy on the Arrow columns: per row a
    start, a size and a step, then only the picked points' positions (60 a row), never an array
    per point of the 2.4 million (those took 400 MB); a groupby with a slice per row took 55 % of
    a 20,000-row report."""
    try:
        with trace_points(root) as points:
            return _picked_traces(points, ids)
    except ResultsError:
        return {}


def _picked_traces(points: TracePoints, ids: set[str]) -> dict[str, dict[str, Any]]:
    """``_downsampled_traces`` of an opened traces file."""
    if not points.num_rows:
        return {}
    column = points.column("id").combine_chunks()  # dictionary-encoded as read
    names = column.dictionary.to_pylist()
    codes = column.indices  # a point without an id is no row's
    codes = (codes.fill_null(len(names)) if codes.null_count else codes).to_numpy()
    del column
    wanted = np.array([name in ids for name in names] + [False], dtype=bool)
    order = None
    if not wanted[codes].all():
        order = np.flatnonzero(wanted[codes])
        codes = codes[order]
    if not len(codes):
        return {}
    if len(codes) > 1 and np.count_nonzero(codes[1:] != codes[:-1]) + 1 != len(np.unique(codes)):
        # rows interleaved: put each row's points together, in their order
        regroup = np.argsort(codes, kind="stable")
        order, codes = (regroup if order is None else order[regroup]), codes[regroup]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    sizes = np.diff(np.r_[starts, len(codes)])
    picks = _picked_positions(starts, sizes)
    chosen = picks if order is None else order[picks]
    total = points.column("total").take(chosen).to_numpy(zero_copy_only=False).astype(np.float64)
    iteration = points.column("iteration").take(chosen).to_numpy(zero_copy_only=False)
    finite = np.isfinite(total)
    kept_codes = codes[picks][finite]
    iterations = np.nan_to_num(np.asarray(iteration, dtype=np.float64)[finite], nan=-1).astype(np.int64)
    totals = round_significant(total[finite], 5)
    out: dict[str, dict[str, Any]] = {}
    if len(kept_codes):
        bounds = np.flatnonzero(np.r_[True, kept_codes[1:] != kept_codes[:-1]])
        ends = np.r_[bounds[1:], len(kept_codes)]
        even, steps = _evenly_spaced(iterations, bounds, ends)
        its, ts = iterations.tolist(), totals.tolist()
        for start, end, code, is_even, step in zip(
            bounds.tolist(), ends.tolist(), kept_codes[bounds].tolist(), even.tolist(), steps.tolist(),
            strict=True,
        ):
            out[names[code]] = (
                {"a": its[start], "s": step, "l": its[end - 1], "t": ts[start:end]} if is_even
                else {"i": its[start:end], "t": ts[start:end]}
            )
    for code in codes[starts].tolist():  # no finite point at all
        if names[code] not in out:
            out[names[code]] = {"i": [], "t": []}
    return out


def _picked_positions(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Positions of the points kept of rows laid end to end (row k: ``sizes[k]`` points from
    ``starts[k]``): every step-th, step = ceil(size / TRACE_POINTS), and the last; in order."""
    step = np.maximum(1, -(-sizes // TRACE_POINTS))
    count = -(-sizes // step)
    first = np.repeat(np.cumsum(count) - count, count)
    regular = np.repeat(starts, count) + (np.arange(count.sum()) - first) * np.repeat(step, count)
    last = (starts + sizes - 1)[(sizes - 1) % step != 0]
    return np.sort(np.concatenate([regular, last]))


def _evenly_spaced(
    iterations: np.ndarray, bounds: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per run of points [bounds[k], ends[k]): whether its iterations are evenly spaced by a step
    > 0 but for the last gap, which is > 0 and ≤ the step (what downsampling leaves), and that
    step: for every row at once."""
    size = ends - bounds
    two = size >= 2
    second = np.minimum(bounds + 1, len(iterations) - 1)
    step = np.where(two, iterations[second] - iterations[bounds], 0)
    last_gap = np.where(two, iterations[ends - 1] - iterations[np.maximum(ends - 2, 0)], 0)
    run = np.repeat(np.arange(len(bounds)), size)
    point = np.arange(len(iterations) - 1)
    inner = point + 2 < np.repeat(ends, size)[:-1]  # a gap before the run's last point
    off = inner & (np.diff(iterations) != step[run[:-1]])
    uneven = np.bincount(run[:-1][off], minlength=len(bounds)) > 0
    return two & (step > 0) & (last_gap > 0) & (last_gap <= step) & ~uneven, step


def round_significant(values: np.ndarray, digits: int) -> np.ndarray:
    """Finite ``values`` to ``digits`` significant digits, all at once (the same floats as
    ``float(f"{v:.{digits}g}")``, ~10x faster than it one by one: 1.2 million trace points took
    a second); 0, inf and nan as they are."""
    out = np.array(values, dtype=np.float64)
    ok = np.isfinite(out) & (out != 0)
    x = out[ok]
    k = digits - 1 - np.floor(np.log10(np.abs(x)))
    up = k >= 0  # scale by an exact power of ten: multiply and divide, or divide and multiply
    x[up] = np.round(x[up] * 10.0 ** k[up]) / 10.0 ** k[up]
    x[~up] = np.round(x[~up] / 10.0 ** -k[~up]) * 10.0 ** -k[~up]
    out[ok] = np.where(np.isfinite(x), x, out[ok])  # never rounded up past the largest float
    return out


def report_data(df: pd.DataFrame, root: Path, out_dir: Path, portable: bool = False) -> dict[str, Any]:
    """Everything the page shows but the loss curves (``_downsampled_traces``), as JSON-ready lists
    (column names, one list per row)."""
    params = varying_params(df)
    metrics = [c for c in RESULT_COLUMNS if c in df and c not in LOUDNESS_COLUMNS and df[c].notna().any()]
    media_dir = out_dir / "report-inputs"
    input_urls: dict[tuple[str, object], str | None] = {}  # a study has few inputs and many rows

    me = os.geteuid()

    def input_url(path: Path, sha: object, own: bool) -> str | None:
        """Where the page finds an input. Only the inputs of this user's own records (their record
        files are the user's) are looked at on disk: a record is anyone's words, and a URL given
        or withheld by whether the path exists would tell everyone who reads the report's data
        file whether, say, /root/.ssh/authorized_keys exists. A stranger's input is linked as
        named, unlooked-at, and never copied into a portable report."""
        key = (str(path), None if _missing(sha) else sha, own)
        if key not in input_urls:
            if not own:
                input_urls[key] = None if portable else _rel(path, out_dir)
            else:
                linked = _portable_copy(path, sha, media_dir, out_dir) if portable else path
                input_urls[key] = _rel(linked, out_dir) if linked is not None and path.exists() else None
        return input_urls[key]

    # A record's file fields name its own files, "runs/<id>/<file>" (Record.from_json checks): a row
    # carries one bit per file and the page makes the URL (60,000 relpath calls took 2 s, and the
    # URLs were a sixth of a 20,000-row data file). Inputs are few: a row carries their index.
    # Built column by column: a dict per row and a Path per cell took 3 s of a 20,000-row report.
    root_url = _rel(root, out_dir)
    inputs: list[str | None] = []
    input_index: dict[str | None, int] = {}
    ready = _shown_columns(df, params, metrics)
    columns: dict[str, list[Any]] = {
        "id": df["id"].astype(object).tolist(),
        "name": _json_column(df["name"]) if "name" in df else [None] * len(df),
    }
    paths = {key: _text_cells(df, key) for key in ("content", "style")}
    columns["label"] = _labels(paths, params, columns, ready)
    own = np.zeros(len(df), dtype=bool)
    if "record_uid" in df:
        own = (pd.to_numeric(df["record_uid"], errors="coerce") == me).fillna(False).to_numpy(dtype=bool)
    urls = {}
    for key, cells in paths.items():
        parsed = {text: Path(text) for text in set(cells) if text is not None}
        columns[f"{key}_name"] = [None if text is None else parsed[text].name for text in cells]
        columns[key[0] + "i"] = []
        urls[key] = [None if text is None else input_url(parsed[text], sha, mine)
                     for text, sha, mine in zip(cells, _text_cells(df, f"{key}_sha256"), own.tolist(),
                                                strict=True)]
    for content_url, style_url in zip(urls["content"], urls["style"], strict=True):  # numbered as met
        for key, url in (("ci", content_url), ("si", style_url)):
            columns[key].append(input_index.setdefault(url, len(inputs)))
            if len(inputs) < len(input_index):
                inputs.append(url)
    bits = np.zeros(len(df), dtype=np.int64)
    for bit, (column, _) in enumerate(ROW_FILE_URLS.values()):
        if column in df:
            bits |= (df[column].notna() & (df[column].astype(object) != "")).to_numpy(dtype=bool) << bit
    columns["f"] = bits.tolist()
    columns.update(ready)
    keys, packed = _packed(columns) if len(df) else ([], [])
    return {
        "root": str(root),
        "root_prefix": "" if root_url == "." else root_url + "/",
        "files": {key: [1 << bit, name] for bit, (key, (_, name)) in enumerate(ROW_FILE_URLS.items())},
        "inputs": inputs,
        "columns": table_columns(params, metrics),
        "params": params,
        "metrics": metrics,
        "keys": keys,
        "rows": packed,
    }


# The row files the page links, by the URL key its script fills in: (record field, file name).
ROW_FILE_URLS = {"output_url": ("output", ROW_FILES["output"]),
                 "spectrogram_url": ("spectrogram_png", ROW_FILES["spectrogram_png"]),
                 "loss_url": ("loss_png", ROW_FILES["loss_png"])}


ROUNDED_DETAILS = ("time_total_s", "cpu_s", "gpu_util_mean")  # shown to 6 significant digits


def _shown_columns(df: pd.DataFrame, params: list[str], metrics: list[str]) -> dict[str, list[Any]]:
    """The values a row shows, column by column, each made JSON-ready at once (``_json_column``):
    cell by cell through ``to_dict("records")``, 20,000 rows took 8 s of a 12 s report."""
    out = {c: _json_column(df[c], 6 if c in ROUNDED_DETAILS else None)
           for c in ("status", *params, *DETAIL_COLUMNS, "preset") if c in df}
    if "error" in out:
        out["error"] = [None if v == "" else v for v in out["error"]]
    out.update({c: [None] * len(df) for c in ROUNDED_DETAILS if c not in out})
    out.update({c: _json_column(df[c], 6) for c in (*metrics, *LOUDNESS_COLUMNS) if c in df})
    return out


def _packed(columns: dict[str, list[Any]]) -> tuple[list[str], list[list[Any]]]:
    """Rows as arrays under one list of keys (trailing nulls dropped): the keys repeated in every
    row were half of a 20,000-row data file. report-data.js makes objects of them again."""
    packed = []
    for values in zip(*columns.values(), strict=True):
        end = len(values)
        while end and values[end - 1] is None:
            end -= 1
        packed.append(list(values[:end]))
    return list(columns), packed


def _text_cells(df: pd.DataFrame, column: str) -> list[str | None]:
    """A text column's cells as str, None where empty (or where the frame has no such column)."""
    if column not in df:
        return [None] * len(df)
    cells, missing = df[column].astype(object).tolist(), df[column].isna().to_numpy()
    return [None if gone else str(v) for v, gone in zip(cells, missing, strict=True)]


def _labels(paths: dict[str, list[str | None]], params: list[str], columns: dict[str, list[Any]],
            shown: dict[str, list[Any]]) -> list[str]:
    """What the table's pinned first column calls each row: its manifest name, else its inputs'
    stems (``paths``: the content and style cells) and the values of the varying hyperparameters
    (what tells a study's rows apart)."""
    stems = []
    for cells in paths.values():
        stem = {text: Path(text).stem[:16] for text in set(cells) if text is not None}
        stems.append([None if text is None else stem[text] for text in cells])
    values = [[None if v is None else f"{p}={v}" for v in shown[p]] for p in params]
    labels = []
    for i, name in enumerate(columns["name"]):
        if name:
            labels.append(str(name))
            continue
        joined = "+".join(s[i] for s in stems if s[i] is not None)
        settings = " ".join(v[i] for v in values if v[i] is not None)
        labels.append(f"{joined} {settings}".strip() or str(columns["id"][i]))
    return labels


def _json_column(series: pd.Series, digits: int | None = None) -> list[Any]:
    """``_json_value`` of every cell of a column, floats to ``digits`` significant digits (a float's
    17 took a sixth of a study's data file; never rounded up past the largest float into an inf,
    which JSON cannot carry), all at once."""
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if digits:
            values = round_significant(values, digits)
        out = values.astype(object)
        out[~np.isfinite(values)] = None
        return out.tolist()
    missing = series.isna().to_numpy()
    return [None if gone else v if type(v) in _PLAIN else _json_value(v)
            for v, gone in zip(series.tolist(), missing, strict=True)]


_PLAIN = (int, bool, str)  # cells JSON carries as they are (a float may be nan or inf)


def _failures(df: pd.DataFrame) -> str:
    """Failed, lost and invalid rows by kind (the exception's class, else the state): a count and
    one example each, linked to its row."""
    bad = df[df["status"].astype(str).isin(["failed", "lost", "invalid"])] if len(df) else df
    if not len(bad):
        return ""
    kinds = bad["error_type"].astype(object).where(bad["error_type"].notna() & (bad["error_type"] != ""),
                                                   bad["status"].astype(str))
    items = []
    for kind, rows in sorted(bad.groupby(kinds, sort=False), key=lambda kv: (-len(kv[1]), str(kv[0]))):
        first = rows.iloc[0]
        error = (
            str(first["error"]).splitlines()[0][:200]
            if not _missing(first["error"]) and first["error"]
            else ""
        )
        items.append(f"<li><b>{html.escape(str(kind))}</b>: {len(rows)} row(s), e.g. "
                     f"<a href='#open={urllib.parse.quote(first['id'])}'>{html.escape(str(first['id']))}</a>"
                     f"{': ' + html.escape(error) if error else ''}</li>")
    return f"<li>failures by kind:<ul id='failures'>{''.join(items)}</ul></li>"


_COST_SHOWN = {"rows": ("rows", "{:.0f}"), "measured": ("measured", "{:.0f}"),
               "core_hours": ("core-h", "{:.3g}"), "gpu_hours": ("GPU-h", "{:.3g}"),
               "wall_hours": ("wall h", "{:.3g}"),
               "peak_rss_gib_p50": ("peak RSS p50 (GiB)", "{:.2f}"),
               "peak_rss_gib_p95": ("p95 (GiB)", "{:.2f}"), "peak_rss_gib_max": ("max (GiB)", "{:.2f}"),
               "cpu_efficiency": ("CPU use of the grant", "{:.0%}")}


def _cost_table(df: pd.DataFrame) -> str:
    """What the study cost per preset (``costing.preset_totals``), an item of the summary; '' before any row
    finished."""
    if not len(df) or not df["status"].isin(["ok", "failed"]).any():
        return ""
    table = preset_totals(df).rename(index={"all": "study"})
    head = "".join(f"<th>{label}</th>" for label, _ in _COST_SHOWN.values())
    body = "".join(
        f"<tr><td>{html.escape(str(key) or '(no preset)')}</td>"
        + "".join(f"<td>{'–' if pd.isna(row[c]) else fmt.format(row[c])}</td>"
                  for c, (_, fmt) in _COST_SHOWN.items())
        + "</tr>"
        for key, row in table.iterrows()
    )
    return (f"<li>cost (measured in the jobs: core-h is CPU time, user + system):"
            f"<table id='cost'><tr><th>preset</th>{head}</tr>{body}</table></li>")



def rank_metric(df: pd.DataFrame) -> str:
    """``DEFAULT_METRIC`` where the ok rows have it; a root written before it: the optimised loss."""
    ok = df[df["status"] == "ok"] if len(df) else df
    return DEFAULT_METRIC if DEFAULT_METRIC in ok and ok[DEFAULT_METRIC].notna().any() else "final_style"


def _summary(df: pd.DataFrame, metric: str, top: int, ascending: bool) -> str:
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    parts = [
        f"<li>{html.escape(str(k))}: {v}</li>"
        for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))
        if v
    ]
    time_by_device = (
        df.groupby(df["device_used"].astype(str), observed=True)["time_total_s"].sum() if len(df) else {}
    )
    for device, seconds in dict(time_by_device).items():
        if device not in ("<NA>", "nan", "None"):
            parts.append(f"<li>wall time on {html.escape(device)}: {seconds / 3600:.3f} h "
                         f"({seconds:.1f} s)</li>")
    parts.append(_failures(df))
    parts.append(_cost_table(df))
    best = ""
    ok = df[df["status"] == "ok"] if len(df) else df
    if metric in df.columns and len(ok) and ok[metric].notna().any():
        order = "lowest" if ascending else "highest"
        # losses of different presets are on different scales: ranked within each preset
        presets = (
            ok["preset"].astype(str).unique() if "preset" in ok and ok["preset"].nunique() > 1 else [None]
        )
        for preset in presets:
            part = ok if preset is None else ok[ok["preset"].astype(str) == preset]
            ranked = part[part[metric].notna()].sort_values(metric, ascending=ascending).head(top)
            items = "".join(
                f"<li><a href='#open={urllib.parse.quote(r.id)}'>"
                f"{html.escape(r.name if not _missing(r.name) and r.name else r.id)}</a>: "
                f"{getattr(r, metric):.4g}</li>"
                for r in ranked.itertuples()
            )
            within = (
                ""
                if preset is None
                else f", preset {html.escape(preset)}"
                if preset not in ("", "nan", "None")
                else ", no preset"
            )
            best += f"<h3>Best {top} by {html.escape(metric)} ({order}{within})</h3><ol>{items}</ol>"
    return f"<h2>Summary</h2><ul>{''.join(parts)}</ul>{best}"


# The page's script, a module per part of the page (state and data, filter, player, table, each
# chart, address, widgets, start), joined in this order into one inline script: a page that
# opens from file:// loads no module files, and the order is only that of their top-level lines.
REPORT_SCRIPTS = ("report-data.js", "report-filter.js", "report-player.js", "report-table.js",
                  "report-chart-common.js", "report-scatter.js", "report-parallel.js", "report-curves.js",
                  "report-address.js", "report-widgets.js", "report-main.js")


def report_script() -> str:
    """The report's script: its modules (``REPORT_SCRIPTS``) joined."""
    return "\n".join(f"// ---- {name}\n{_asset(name)}" for name in REPORT_SCRIPTS)


def _asset(name: str) -> str:
    """The page's stylesheet or script, package data (batch_ast/report_assets/), inlined into
    the page so that it needs nothing but its data file beside it."""
    return (importlib.resources.files("batch_ast") / "report_assets" / name).read_text(encoding="utf-8")


def write_report(
    root: str | os.PathLike[str] = "results",
    output: str | Path | None = None,
    metric: str | None = None,
    top: int = 5,
    ascending: bool = True,
    portable: bool = False,
) -> Path:
    """Collect (when anything changed), then write the report (default: <root>/report.html) and its
    data file beside it. Returns the report's path. The summary ranks the best rows by ``metric``
    within each preset (default: ``DEFAULT_METRIC``, a held-out measure of the written audio; the
    optimised loss favours the lowest content weight by construction)."""
    results = ResultsRoot.of(root)
    results.require_results_root()
    try:
        collect(results.root)
    except (ResultsError, OSError) as exc:  # a read-only root: report what was collected before
        if not results.index_path.exists():
            raise
        print(f"warning: could not re-collect ({exc}); using the existing index", file=sys.stderr)
    files = freshness.report_files(results, output)
    out, data_path, traces_path = files
    settings = freshness.report_settings(metric, top, ascending)
    if not portable and freshness.report_is_current(results, out, files, settings):
        return out  # nothing changed since this user's last report there (its copies are not stamped)
    df = load_index(results.root)
    metric = metric or rank_metric(df)
    if (
        metric not in df.columns
        or not pd.api.types.is_numeric_dtype(df[metric])
        or pd.api.types.is_bool_dtype(df[metric])
    ):
        numeric = [c for c in df.columns if pd.api.types.is_float_dtype(df[c])]
        raise ResultsError(
            f"--metric {metric!r} is not a numeric index column (numeric: {', '.join(numeric)})"
        )
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    inside = results.root if out_dir == results.root or results.root in out_dir.parents else None
    if inside is None:
        _check_data_file(data_path)
        _check_data_file(traces_path)
    else:  # the root is shared: whatever a colleague (or anyone) left at these names is moved aside
        _make_way(data_path, folder=False, check_data=True)
        _make_way(traces_path, folder=False, check_data=True)
        _make_way(out, folder=False)
        if portable:
            _make_way(out_dir / "report-inputs", folder=True)
    page = _page(df, results, _rel(data_path, out_dir), metric, top, ascending)
    # The loss curves in a file of their own, loaded when a chart first asks for them: most of a
    # 20,000-row study's data, which the page's first paint then no longer waits for. Each file is
    # made, written and let go in turn, so that a large study's peak memory holds one of them.
    ok_ids = set(df["id"][df["status"] == "ok"]) if "status" in df else set()
    _write_script(traces_path, TRACES_PREFIX, _downsampled_traces(results.root, ok_ids), inside)
    data = report_data(df, results.root, out_dir, portable)
    del df
    data["traces_src"] = _rel(traces_path, out_dir)
    _write_script(data_path, DATA_PREFIX, data, inside)
    del data
    write_atomic(out, lambda fh: fh.write(page.encode("utf-8")), inside)
    if not portable:
        freshness.stamp_report(results, out, files, settings)
    return out


def _write_script(path: Path, prefix: str, value: Any, inside: Path | None) -> None:
    text = prefix + json.dumps(value, separators=(",", ":"), allow_nan=False) + ";\n"
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")), inside)


def _page(
    df: pd.DataFrame, results: ResultsRoot, data_src: str, metric: str, top: int, ascending: bool
) -> str:
    """The report's HTML: its assets inlined, its data file (``data_src``, relative) loaded. The
    scripts come last, so that the summary is painted while the rows' data is read (in the head,
    the first paint of a 20,000-row report waited 1.1-1.5 s for it)."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>batch-ast report: {html.escape(str(results.root))}</title>
<style>{_asset("uPlot.min.css")}</style><style>{_asset("report.css")}</style></head>
<body><h1>batch-ast report</h1>
<p>{len(df)} row(s) from <code>{html.escape(str(results.root))}</code>.
Click a row to hear and see it (A/B player,
figures); click a column header to sort; tick rows to overlay their loss curves.</p>
<p id="media-check">checking media files…</p>
{_summary(df, metric, top, ascending)}
<h2>Rows</h2>
<div class="controls">
<input id="filter"
 placeholder="filter: text, or column=value, column=a,b, column&gt;number, e.g. status=ok content_weight&gt;1"
>
<span id="filter-problems" class="problems"></span>
</div>
<details id="widgets"><summary>filter by column (writes into the filter box)</summary></details>
<div class="controls">
<label><input type="checkbox" id="group" checked> group by content</label>
<label title="one row per group of rows with equal values of these columns:
 n and the mean of every metric over its ok rows, with its spread">
<input type="checkbox" id="agg"> aggregate by</label> <input id="aggby" size="40">
<label>spread <select id="spread"><option value="sd">std</option><option value="sem">SEM</option>
<option value="ci">95 % CI</option></select></label>
<span id="aggnote" class="muted"></span>
<button id="prev">&larr; previous</button><button id="next">next &rarr;</button><span id="count"></span>
<button id="export-csv">export CSV</button><button id="export-ids">export ids</button>
<span id="export-note" class="muted"></span>
</div>
<details id="columns"><summary>columns</summary></details>
<div id="only"></div>
<div class="table-wrap"><table id="rows"><tr><td class="muted">loading the rows…</td></tr></table></div>
<h2>Compare</h2>
<div class="controls">scatter: <select id="sx"></select> vs <select id="sy"></select>
x axis <select id="logx"><option value="auto">auto</option><option value="linear">linear</option>
<option value="log">log</option></select>
colour by <select id="colour"></select>
<span class="muted">(charts: uPlot, MIT, vendored in batch_ast/report_assets)</span></div>
<div class="charts"><div id="scatter"></div><div id="curves"></div><div id="parallel"></div></div>
<script src="{html.escape(data_src)}"></script>
<script>{_asset("uPlot.iife.min.js")}</script><script>{report_script()}</script>
</body></html>
"""


DATA_PREFIX = "window.BATCH_AST = "
TRACES_PREFIX = "window.BATCH_AST_TRACES = "


def _is_report_data(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts as a report's data or traces file (OSError
    as raised)."""
    with open_regular(path) as fh:
        head = fh.read(len(TRACES_PREFIX)).decode("utf-8", "replace")
    return head.startswith(DATA_PREFIX) or head.startswith(TRACES_PREFIX)


def _make_way(path: Path, folder: bool, check_data: bool = False) -> None:
    """In a results root: move aside (``<name>.bad``) whatever sits at ``path`` that the report
    cannot write over or into — a symlink, a FIFO or device, a folder where a file goes (a file
    where a folder goes), or with ``check_data`` a file that is not a report's data — so that a
    planted file never stops the report. The moved file is kept, to be looked at."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    fits = stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)
    if fits and check_data:
        try:
            fits = _is_report_data(path)
        except OSError:
            fits = False
    if not fits:
        bad = move_aside(path)
        print(
            f"warning: {inert(short_path(path))} was not the report's own: moved aside to {inert(bad.name)}",
            file=sys.stderr,
        )


def _check_data_file(path: Path) -> None:
    """Refuse to replace a ``<report>.data.js`` (or ``.traces.js``) that a report did not write
    (``-o notes.html`` beside someone's ``notes.data.js``): the report's data goes beside the
    page, by that name."""
    try:
        ours = _is_report_data(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ResultsError(
            f"{short_path(path)}: {describe_os_error(exc)}: the report's data file would replace it; "
            "choose another -o"
        ) from None
    if not ours:
        raise ResultsError(
            f"{short_path(path)} exists and is not a batch-ast report's data: the report for "
            f"{path.with_suffix('').with_suffix('.html').name} would replace it; choose another -o"
        )
