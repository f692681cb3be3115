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

from .config import PARAMS
from .index import METRIC_COLUMNS, load_index, load_traces
from .plan import file_sha256
from .store import (
    SHA256,
    ResultsError,
    ResultsRoot,
    describe_os_error,
    open_dir_fd,
    open_regular,
    parts_within,
    short_path,
    write_atomic,
)

# Always in the table; the hyperparameters that vary across rows and the metrics come after.
FIXED_COLUMNS = ["status", "content_name", "style_name"]
RESULT_COLUMNS = ["iterations_run", "final_total", "final_content", "final_style", "spectral_convergence", *METRIC_COLUMNS]
# Shown in a row's details (not columns: they rarely decide anything across rows).
DETAIL_COLUMNS = ["row", "submission_id", "stop_reason", "evaluations", "time_total_s", "device_used", "error",
                  "figure_error", "warning", "content_bpm", "style_bpm"]
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


def varying_params(df: pd.DataFrame) -> list[str]:
    """The hyperparameters with more than one value across the rows (the study's design)."""
    out = []
    for name in PARAMS:
        if name in df and df[name].astype("string").nunique(dropna=False) > 1:
            out.append(name)
    return out


def _portable_copy(path: Path, sha: object, media_dir: Path, base: Path) -> Path | None:
    """The input's copy beside the report, named by its hash (one copy per distinct input): a hard
    link where the filesystem allows, else a copy. Only for a regular file whose bytes hash to the
    record's SHA-256 (a record is anyone's words: its hash must not become a path, and its path
    must not make the report copy some other file); None otherwise. ``media_dir`` is reached from
    ``base`` without following a symlink."""
    if _missing(sha) or not SHA256.fullmatch(str(sha)):
        return None
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) or file_sha256(path) != sha:
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


def _downsampled_traces(root: Path, ids: set[str]) -> dict[str, list[list[float]]]:
    """Per ok row, [iteration, total loss] at most TRACE_POINTS times (first and last kept).
    Picked for every row at once (positions within each row's block), then split at the blocks'
    starts: a groupby with a slice per row took 55 % of a 20,000-row report."""
    try:
        traces = load_traces(root)
    except ResultsError:
        return {}
    traces = traces[traces["id"].isin(ids)]
    if traces.empty:
        return {}
    traces = traces.sort_values("id", kind="stable")  # each row's points together, in their order
    by_row = traces.groupby("id", sort=False, observed=True)
    position = by_row.cumcount().to_numpy()
    size = by_row["iteration"].transform("size").to_numpy()
    step = np.maximum(1, np.ceil(size / TRACE_POINTS).astype(np.int64))
    total = traces["total"].to_numpy(dtype=np.float64, na_value=np.nan)
    keep = ((position % step == 0) | (position == size - 1)) & np.isfinite(total)
    row_ids = traces["id"].astype(str).to_numpy()[keep]
    iterations = traces["iteration"].to_numpy(dtype=np.int64, na_value=-1)[keep].tolist()
    totals = total[keep].tolist()
    starts = np.flatnonzero(np.r_[True, row_ids[1:] != row_ids[:-1]]).tolist() if len(row_ids) else []
    out: dict[str, list[list[float]]] = {}
    for start, end in zip(starts, [*starts[1:], len(row_ids)], strict=True):
        out[row_ids[start]] = [list(pair) for pair in zip(iterations[start:end], totals[start:end], strict=True)]
    for rid in set(traces["id"].astype(str)) - out.keys():  # no finite point at all
        out[rid] = []
    return out


def report_data(df: pd.DataFrame, root: Path, out_dir: Path, portable: bool = False) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready lists (column names, one list per row)."""
    params = varying_params(df)
    metrics = [c for c in RESULT_COLUMNS if c in df and c not in LOUDNESS_COLUMNS and df[c].notna().any()]
    media_dir = out_dir / "report-inputs"
    input_urls: dict[tuple[str, object], str | None] = {}  # a study has few inputs and many rows

    def input_url(path: Path, sha: object) -> str | None:
        key = (str(path), None if _missing(sha) else sha)
        if key not in input_urls:
            linked = _portable_copy(path, sha, media_dir, out_dir) if portable else path
            input_urls[key] = _rel(linked, out_dir) if linked is not None and path.exists() else None
        return input_urls[key]

    # a record's file fields name its own files, "runs/<id>/<file>" (Record.from_json checks), so
    # their URLs are the root's, relative to the page, plus that: 60,000 relpath calls took 2 s
    root_url = _rel(root, out_dir)
    root_prefix = "" if root_url == "." else root_url + "/"
    rows = []
    for r in df.to_dict("records"):
        item: dict[str, Any] = {"id": r["id"], "name": _json_value(r.get("name"))}
        for key in ("content", "style"):
            path = Path(r[key]) if not _missing(r.get(key)) else None
            item[f"{key}_name"] = path.name if path else None
            item[f"{key}_url"] = input_url(path, r.get(f"{key}_sha256")) if path else None
        for key, column in (("output_url", "output"), ("spectrogram_url", "spectrogram_png"), ("loss_url", "loss_png")):
            value = r.get(column)
            item[key] = root_prefix + urllib.parse.quote(str(value)) if not _missing(value) and value != "" else None
        for column in ("status", *params, *metrics, *DETAIL_COLUMNS, *LOUDNESS_COLUMNS, "preset"):
            if column in r:
                item[column] = _json_value(r[column])
        rows.append(item)
    ok_ids = {row["id"] for row in rows if row.get("status") == "ok"}
    return {
        "root": str(root),
        "columns": [*FIXED_COLUMNS, *params, *metrics],
        "params": params,
        "metrics": metrics,
        "rows": rows,
        "traces": _downsampled_traces(root, ok_ids),
    }


def _summary(df: pd.DataFrame, metric: str, top: int, ascending: bool) -> str:
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    parts = [f"<li>{html.escape(str(k))}: {v}</li>" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0])) if v]
    time_by_device = (
        df.groupby(df["device_used"].astype(str), observed=True)["time_total_s"].sum() if len(df) else {}
    )
    for device, seconds in dict(time_by_device).items():
        if device not in ("<NA>", "nan", "None"):
            parts.append(f"<li>{html.escape(device)} time: {seconds / 3600:.3f} h ({seconds:.1f} s)</li>")
    best = ""
    ok = df[df["status"] == "ok"] if len(df) else df
    if metric in df.columns and len(ok) and ok[metric].notna().any():
        ranked = ok.sort_values(metric, ascending=ascending).head(top)
        items = "".join(
            f"<li><a href='#open={urllib.parse.quote(r.id)}'>{html.escape(r.name if not _missing(r.name) else r.id)}</a>: "
            f"{getattr(r, metric):.4g}</li>"
            for r in ranked.itertuples()
        )
        order = "lowest" if ascending else "highest"
        best = f"<h3>Best {top} by {html.escape(metric)} ({order})</h3><ol>{items}</ol>"
    return f"<h2>Summary</h2><ul>{''.join(parts)}</ul>{best}"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #eee; cursor: pointer; position: sticky; top: 0; white-space: nowrap; }
td.text { text-align: left; } th.sorted-asc::after { content: ' \\25B2'; } th.sorted-desc::after { content: ' \\25BC'; }
tr.failed td, tr.lost td, tr.cancelled td { background: #fde8e8; } tr.pending td, tr.running td { background: #f4f4f4; }
tr.group td { background: #eef3fb; text-align: left; font-weight: 600; }
tr.details td { text-align: left; background: #fcfcfc; }
tr.row { cursor: pointer; } tr.row:hover td { background: #f6f9ff; }
.controls { display: flex; gap: 1em; align-items: center; flex-wrap: wrap; margin: 0.5em 0; }
#filter { width: 32em; padding: 0.3em; }
.ab button { margin-right: 0.3em; } .ab button.on { font-weight: bold; background: #dde8ff; }
.figures img { max-width: 48%; margin: 0.25em 0.5em 0.25em 0; vertical-align: top; }
pre.error { background: #fde8e8; padding: 0.5em; white-space: pre-wrap; }
#media-check.good { color: #176117; } #media-check.bad { color: #a01010; font-weight: bold; }
.charts { display: flex; gap: 2em; flex-wrap: wrap; } .charts svg { border: 1px solid #ddd; background: #fff; }
.muted { color: #777; }
"""

# Written by hand: no charting or table library may come from a CDN, and the page needs only a
# paginated table, one player per opened row and two small SVG charts.
SCRIPT = r"""
const D = window.BATCH_AST, PAGE = 50;
const S = { filter: '', sortKey: null, asc: true, page: 0, group: true, open: new Set(), ab: {}, selected: new Set() };
const media = { tried: 0, broken: [] };
const $ = id => document.getElementById(id);
const esc = s => String(s).replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
const LABEL = { status: 'status', content_name: 'content', style_name: 'style', iterations_run: 'iterations',
  final_total: 'total loss', final_content: 'content loss', final_style: 'style loss', spectral_convergence: 'spectral conv.' };
function fmt(v) {
  if (v === null || v === undefined || v === '') return '\u2014';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : (Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3 ? v.toExponential(3) : String(parseFloat(v.toPrecision(4))));
  return String(v);
}
function title(r) { return r.name || r.id; }
// filter: space-separated terms; col=value, col!=value, col<number, col>number, or text found in
// name, id, status, content, style or preset
function parseTerms(text) {
  return text.trim().split(/\s+/).filter(Boolean).map(t => {
    const m = t.match(/^([A-Za-z_][\w]*)(!=|<=|>=|=|<|>)(.*)$/);
    return m ? { col: m[1], op: m[2], val: m[3] } : { text: t.toLowerCase() };
  });
}
function matches(r, terms) {
  return terms.every(t => {
    if (t.text !== undefined)
      return ['name', 'id', 'status', 'content_name', 'style_name', 'preset'].some(k => r[k] && String(r[k]).toLowerCase().includes(t.text));
    const v = r[t.col], n = parseFloat(t.val);
    if (t.op === '=') return String(v) === t.val || (typeof v === 'number' && v === n);
    if (t.op === '!=') return !(String(v) === t.val || (typeof v === 'number' && v === n));
    if (typeof v !== 'number' || isNaN(n)) return false;
    return t.op === '<' ? v < n : t.op === '>' ? v > n : t.op === '<=' ? v <= n : v >= n;
  });
}
function visibleRows() {
  const terms = parseTerms(S.filter);
  let rows = D.rows.filter(r => matches(r, terms));
  const cmp = (a, b) => {
    if (!S.sortKey) return 0;
    const x = a[S.sortKey], y = b[S.sortKey];
    if (x === y) return 0; if (x === null || x === undefined) return 1; if (y === null || y === undefined) return -1;
    return (x > y ? 1 : -1) * (S.asc ? 1 : -1);
  };
  rows = rows.map((r, i) => [r, i]).sort((a, b) => {
    if (S.group) { const g = String(a[0].content_name).localeCompare(String(b[0].content_name)); if (g) return g; }
    return cmp(a[0], b[0]) || a[1] - b[1];
  }).map(p => p[0]);
  return rows;
}
function track(el) {
  media.tried += 1;
  el.addEventListener('error', () => { media.broken.push(el.getAttribute('src')); showMedia(); }, { once: true });
  showMedia();
  return el;
}
function showMedia() {
  const box = $('media-check');
  box.dataset.tried = media.tried; box.dataset.broken = media.broken.length;
  box.className = media.broken.length ? 'bad' : 'good';
  box.textContent = media.tried === 0 ? 'no media loaded yet (players and figures load when a row is opened)'
    : media.broken.length ? media.broken.length + ' of ' + media.tried + ' media files tried failed to load: ' + media.broken.join(', ')
    : 'all ' + media.tried + ' media files tried load';
}
function gainFor(r, which) {
  // loudness matching: every source plays at the level of the quietest (volume cannot exceed 1)
  const levels = ['content', 'style', 'output'].map(k => r[k + '_rms_dbfs']).filter(v => typeof v === 'number');
  const own = r[which + '_rms_dbfs'];
  if (typeof own !== 'number' || !levels.length) return 1;
  return Math.min(1, Math.pow(10, (Math.min(...levels) - own) / 20));
}
function switchAB(id, which) {
  const r = D.rows.find(x => x.id === id), box = document.querySelector('[data-ab="' + CSS.escape(id) + '"]');
  if (!r || !box || !r[which + '_url']) return;
  const audio = box.querySelector('audio'), wasPlaying = !audio.paused, at = audio.currentTime;
  S.ab[id] = which;
  if (audio.dataset.which !== which) {
    // a chosen source loads its header (to seek to the same position, and to show a broken file)
    audio.preload = 'metadata'; audio.src = r[which + '_url']; audio.dataset.which = which; track(audio);
    audio.addEventListener('loadedmetadata', () => { audio.currentTime = Math.min(at, audio.duration || at); if (wasPlaying) audio.play(); }, { once: true });
  }
  audio.volume = gainFor(r, which);
  box.querySelectorAll('button').forEach(b => b.classList.toggle('on', b.dataset.which === which));
  box.dataset.which = which; writeHash();
}
function details(r) {
  const parts = ['<td colspan="' + (D.columns.length + 2) + '">'];
  parts.push('<p><b>' + esc(title(r)) + '</b> <span class="muted">[' + esc(r.id) + '] manifest row ' + fmt(r.row) +
             ' of submission ' + esc(r.submission_id || '\u2014') + '</span></p>');
  const facts = D.params.map(p => p + ' ' + fmt(r[p])).concat(['stop: ' + fmt(r.stop_reason), 'evaluations ' + fmt(r.evaluations),
    'wall ' + fmt(r.time_total_s) + ' s on ' + fmt(r.device_used)]);
  parts.push('<p>' + esc(facts.join('; ')) + '</p>');
  if (r.error) parts.push('<pre class="error">' + esc(r.error) + '</pre>');
  if (r.figure_error) parts.push('<p>figures missing: ' + esc(r.figure_error) + ' (batch-ast collect redraws them)</p>');
  const sources = ['content', 'style', 'output'].filter(k => r[k + '_url']);
  if (sources.length) {
    parts.push('<div class="ab" data-ab="' + esc(r.id) + '">' + sources.map(k =>
      '<button data-which="' + k + '" onclick="switchAB(' + esc(JSON.stringify(r.id)) + ', \'' + k + '\')">' + k + '</button>').join('') +
      ' <audio controls preload="none"></audio> <span class="muted">A/B: switching keeps the playback position; levels matched to the quietest</span></div>');
  }
  parts.push('<div class="figures">' + [['spectrogram_url', 'spectrograms'], ['loss_url', 'loss curve']].filter(([k]) => r[k])
    .map(([k, alt]) => '<img loading="lazy" alt="' + alt + '" data-src="' + esc(r[k]) + '">').join('') + '</div>');
  return parts.join('') + '</td>';
}
function render() {
  const rows = visibleRows(), pages = Math.max(1, Math.ceil(rows.length / PAGE));
  S.page = Math.min(S.page, pages - 1);
  const shown = rows.slice(S.page * PAGE, (S.page + 1) * PAGE);
  const head = '<tr><th title="select for the loss-curve overlay">\u2713</th><th data-k="#">#</th>' + D.columns.map(c =>
    '<th data-k="' + c + '" class="' + (S.sortKey === c ? (S.asc ? 'sorted-asc' : 'sorted-desc') : '') + '">' + esc(LABEL[c] || c) + '</th>').join('') + '</tr>';
  const body = []; let group = null;
  const counts = {}; rows.forEach(r => { counts[r.content_name] = (counts[r.content_name] || 0) + 1; });
  for (const r of shown) {
    if (S.group && r.content_name !== group) {
      group = r.content_name;
      body.push('<tr class="group"><td colspan="' + (D.columns.length + 2) + '">content: ' + esc(group) + ' (' + counts[group] +
        ' rows) <button onclick="playContent(this, ' + esc(JSON.stringify(r.id)) + ')">play content</button></td></tr>');
    }
    const cells = D.columns.map(c => '<td class="' + (typeof r[c] === 'number' ? '' : 'text') + '">' + esc(fmt(r[c])) + '</td>').join('');
    body.push('<tr class="row ' + esc(r.status) + '" data-id="' + esc(r.id) + '"><td><input type="checkbox" ' +
      (S.selected.has(r.id) ? 'checked' : '') + ' onclick="event.stopPropagation(); toggleSelect(this, ' + esc(JSON.stringify(r.id)) +
      ')"></td><td>' + (D.rows.indexOf(r) + 1) + '</td>' + cells + '</tr>');
    if (S.open.has(r.id)) body.push('<tr class="details" data-for="' + esc(r.id) + '">' + details(r) + '</tr>');
  }
  $('rows').innerHTML = '<thead>' + head + '</thead><tbody>' + body.join('') + '</tbody>';
  $('count').textContent = rows.length + ' of ' + D.rows.length + ' rows; page ' + (S.page + 1) + ' of ' + pages;
  $('count').dataset.matching = rows.length;
  document.querySelectorAll('#rows img[data-src]').forEach(img => { img.src = img.dataset.src; track(img); });
  for (const id of S.open) if (S.ab[id]) switchAB(id, S.ab[id]);
  drawScatter(rows); drawCurves();
}
function playContent(button, id) {
  const r = D.rows.find(x => x.id === id);
  let a = button.nextElementSibling;
  if (!a || a.tagName !== 'AUDIO') { a = document.createElement('audio'); a.controls = true; a.preload = 'none';
    a.src = r.content_url; track(a); button.after(a); }
  a.play();
}
function toggleSelect(box, id) { if (box.checked) S.selected.add(id); else S.selected.delete(id); drawCurves(); writeHash(); }
function openRow(id, ab) {
  const i = visibleRows().findIndex(r => r.id === id);
  if (i < 0) return;
  S.page = Math.floor(i / PAGE); S.open.add(id); if (ab) S.ab[id] = ab;
  render(); writeHash();
  const tr = document.querySelector('tr.details[data-for="' + CSS.escape(id) + '"]'); if (tr) tr.scrollIntoView();
}
function svg(w, h, inner) { return '<svg width="' + w + '" height="' + h + '" viewBox="0 0 ' + w + ' ' + h + '">' + inner + '</svg>'; }
function scale(vals, lo, hi, log) {
  const f = log ? v => Math.log10(v) : v => v, xs = vals.map(f).filter(isFinite);
  let a = Math.min(...xs), b = Math.max(...xs); if (!(b > a)) { a -= 1; b += 1; }
  const s = v => lo + (f(v) - a) / (b - a) * (hi - lo);
  s.ends = log ? [10 ** a, 10 ** b] : [a, b];  // the values at lo and hi, for axis labels
  return s;
}
function ticks(sx, sy, W, H) {
  // the value range at each end of both axes
  const t = (x, y, v, anchor) => '<text x="' + x + '" y="' + y + '" font-size="9" fill="#555" text-anchor="' + anchor + '">' + esc(fmt(v)) + '</text>';
  return (sx ? t(40, H - 16, sx.ends[0], 'start') + t(W - 10, H - 16, sx.ends[1], 'end') : '') +
         t(38, H - 30, sy.ends[0], 'end') + t(38, 24, sy.ends[1], 'end');
}
function drawScatter(rows) {
  const x = $('sx').value, y = $('sy').value, W = 460, H = 300;
  const pts = rows.filter(r => r.status === 'ok' && r[x] !== null && r[x] !== undefined && typeof r[y] === 'number');
  if (!pts.length) { $('scatter').innerHTML = '<p class="muted">no ok rows with both values</p>'; return; }
  const numeric = pts.every(r => typeof r[x] === 'number');
  const cats = numeric ? [] : [...new Set(pts.map(r => String(r[x])))];
  const sx = numeric ? scale(pts.map(r => r[x]), 40, W - 10) : v => 40 + (cats.indexOf(String(v)) + 0.5) / cats.length * (W - 50);
  const sy = scale(pts.map(r => r[y]), H - 30, 10);
  const dots = pts.map(r => '<circle cx="' + sx(r[x]).toFixed(1) + '" cy="' + sy(r[y]).toFixed(1) + '" r="3" fill="#3465a4" fill-opacity="0.6" ' +
    'onclick="openRow(' + esc(JSON.stringify(r.id)) + ')"><title>' + esc(title(r) + ': ' + x + ' ' + fmt(r[x]) + ', ' + y + ' ' + fmt(r[y])) + '</title></circle>').join('');
  const labels = (numeric ? [] : cats.map(c => '<text x="' + sx(c).toFixed(1) + '" y="' + (H - 12) + '" font-size="10" text-anchor="middle">' + esc(c) + '</text>')).join('');
  $('scatter').innerHTML = svg(W, H, dots + labels + ticks(numeric ? sx : null, sy, W, H) + '<text x="' + (W / 2) + '" y="' + (H - 1) + '" font-size="11" text-anchor="middle">' + esc(x) +
    '</text><text x="10" y="12" font-size="11">' + esc(y) + '</text>');
}
function drawCurves() {
  const W = 460, H = 300, ids = [...S.selected].filter(id => D.traces[id]);
  $('curves').dataset.curves = ids.length;
  if (!ids.length) { $('curves').innerHTML = '<p class="muted">tick rows (\u2713) to overlay their loss curves</p>'; return; }
  const all = ids.flatMap(id => D.traces[id]);
  const sx = scale(all.map(p => p[0]), 40, W - 10), sy = scale(all.map(p => Math.max(p[1], 1e-12)), H - 20, 10, true);
  const colours = ['#3465a4', '#cc0000', '#4e9a06', '#f57900', '#75507b', '#c4a000', '#06989a', '#555753'];
  const lines = ids.map((id, i) => '<polyline fill="none" stroke-width="1.5" stroke="' + colours[i % colours.length] + '" points="' +
    D.traces[id].map(p => sx(p[0]).toFixed(1) + ',' + sy(Math.max(p[1], 1e-12)).toFixed(1)).join(' ') + '"><title>' +
    esc(title(D.rows.find(r => r.id === id))) + '</title></polyline>').join('');
  const legend = ids.map((id, i) => '<text x="' + (W - 150) + '" y="' + (16 + 12 * i) + '" font-size="10" fill="' + colours[i % colours.length] + '">' +
    esc(title(D.rows.find(r => r.id === id))).slice(0, 28) + '</text>').join('');
  $('curves').innerHTML = svg(W, H, lines + legend + ticks(sx, sy, W, H) + '<text x="' + (W / 2) + '" y="' + (H - 4) + '" font-size="11" text-anchor="middle">iteration</text>' +
    '<text x="10" y="12" font-size="11">total loss (log)</text>');
}
function writeHash() {
  const h = new URLSearchParams();
  if (S.filter) h.set('filter', S.filter); if (S.page) h.set('page', S.page + 1);
  const open = [...S.open]; if (open.length) h.set('open', open.join(','));
  const ab = open.filter(id => S.ab[id]).map(id => S.ab[id]); if (ab.length) h.set('ab', ab.join(','));
  if (S.selected.size) h.set('select', [...S.selected].join(','));
  history.replaceState(null, '', '#' + h.toString());
}
function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  S.filter = h.get('filter') || ''; $('filter').value = S.filter;
  S.page = Math.max(0, (parseInt(h.get('page')) || 1) - 1);
  const open = (h.get('open') || '').split(',').filter(Boolean), ab = (h.get('ab') || '').split(',');
  open.forEach((id, i) => { S.open.add(id); if (ab[i]) S.ab[id] = ab[i]; });
  (h.get('select') || '').split(',').filter(Boolean).forEach(id => S.selected.add(id));
  if (open.length) { const i = visibleRows().findIndex(r => r.id === open[0]); if (i >= 0) S.page = Math.floor(i / PAGE); }
}
window.addEventListener('DOMContentLoaded', () => {
  const t0 = performance.now();
  const axes = D.params.concat(D.metrics), ys = D.metrics;
  $('sx').innerHTML = axes.map(c => '<option>' + esc(c) + '</option>').join('');
  $('sy').innerHTML = ys.map(c => '<option>' + esc(c) + '</option>').join('');
  if (D.params.length) $('sx').value = D.params[0];
  if (ys.includes('style_distance_heldout')) $('sy').value = 'style_distance_heldout';
  readHash(); showMedia(); render();
  $('filter').addEventListener('input', e => { S.filter = e.target.value; S.page = 0; render(); writeHash(); });
  $('group').addEventListener('change', e => { S.group = e.target.checked; render(); });
  $('prev').onclick = () => { S.page = Math.max(0, S.page - 1); render(); writeHash(); };
  $('next').onclick = () => { S.page += 1; render(); writeHash(); };
  $('sx').onchange = $('sy').onchange = () => render();
  $('rows').addEventListener('click', e => {
    const th = e.target.closest('th[data-k]');
    if (th && th.dataset.k !== '#') { S.asc = S.sortKey === th.dataset.k ? !S.asc : true; S.sortKey = th.dataset.k; render(); return; }
    const tr = e.target.closest('tr.row');
    if (tr && !e.target.closest('input, button, audio')) {
      const id = tr.dataset.id; if (S.open.has(id)) S.open.delete(id); else S.open.add(id); render(); writeHash();
    }
  });
  // links in the page (the summary's best rows) change the address: follow them
  window.addEventListener('hashchange', () => { readHash(); render(); });
  document.body.dataset.readyMs = Math.round(performance.now() - t0);
});
"""


def write_report(
    root: str | os.PathLike[str] = "results",
    output: str | Path | None = None,
    metric: str = "final_style",
    top: int = 5,
    ascending: bool = True,
    portable: bool = False,
) -> Path:
    """Collect (when anything changed), then write the report (default: <root>/report.html) and its
    data file beside it. Returns the report's path."""
    results = ResultsRoot.of(root)
    results.require_results_root()
    try:
        from .api import collect

        collect(results.root)
    except (ResultsError, OSError) as exc:  # a read-only root: report what was collected before
        if not results.index_path.exists():
            raise
        print(f"warning: could not re-collect ({exc}); using the existing index", file=sys.stderr)
    df = load_index(results.root)
    if metric not in df.columns or not pd.api.types.is_numeric_dtype(df[metric]) or pd.api.types.is_bool_dtype(df[metric]):
        numeric = [c for c in df.columns if pd.api.types.is_float_dtype(df[c])]
        raise ResultsError(f"--metric {metric!r} is not a numeric index column (numeric: {', '.join(numeric)})")
    out = (Path(output) if output else results.root / "report.html").resolve()
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out.with_name(out.stem + ".data.js")
    _check_data_file(data_path)
    data = report_data(df, results.root, out_dir, portable)
    payload = "window.BATCH_AST = " + json.dumps(data, separators=(",", ":"), allow_nan=False) + ";\n"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>batch-ast report: {html.escape(str(results.root))}</title>
<style>{STYLE}</style><script src="{html.escape(_rel(data_path, out_dir))}"></script><script>{SCRIPT}</script></head>
<body><h1>batch-ast report</h1>
<p>{len(df)} row(s) from <code>{html.escape(str(results.root))}</code>. Click a row to hear and see it (A/B player,
figures); click a column header to sort; tick rows to overlay their loss curves.</p>
<p id="media-check">checking media files…</p>
{_summary(df, metric, top, ascending)}
<h2>Rows</h2>
<div class="controls">
<input id="filter" placeholder="filter: text, or column=value, column&gt;number (e.g. status=ok content_weight&gt;1)">
<label><input type="checkbox" id="group" checked> group by content</label>
<button id="prev">&larr; previous</button><button id="next">next &rarr;</button><span id="count"></span>
</div>
<table id="rows"></table>
<h2>Compare</h2>
<div class="controls">scatter: <select id="sx"></select> vs <select id="sy"></select></div>
<div class="charts"><div id="scatter"></div><div id="curves"></div></div>
</body></html>
"""
    inside = results.root if out_dir == results.root or results.root in out_dir.parents else None
    write_atomic(data_path, lambda fh: fh.write(payload.encode("utf-8")), inside)
    write_atomic(out, lambda fh: fh.write(page.encode("utf-8")), inside)
    return out


DATA_PREFIX = "window.BATCH_AST = "


def _check_data_file(path: Path) -> None:
    """Refuse to replace a ``<report>.data.js`` that a report did not write (``-o notes.html``
    beside someone's ``notes.data.js``): the report's data goes beside the page, by that name."""
    try:
        with open_regular(path) as fh:
            head = fh.read(len(DATA_PREFIX)).decode("utf-8", "replace")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ResultsError(f"{short_path(path)}: {describe_os_error(exc)}: the report's data file would replace it; "
                           "choose another -o") from None
    if head != DATA_PREFIX:
        raise ResultsError(f"{short_path(path)} exists and is not a batch-ast report's data: the report for "
                           f"{path.with_suffix('').with_suffix('.html').name} would replace it; choose another -o")
