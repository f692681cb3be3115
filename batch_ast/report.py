"""Report stage: one static HTML page to browse, hear and compare every row of a results root.

No server: the page links the PNGs and WAVs by relative paths, so it opens straight from the
cluster's shared filesystem. A few lines of inline JavaScript sort the table and check that every
image and audio file actually loads (broken links are listed at the top of the page).
"""

from __future__ import annotations

import html
import os
import sys
import urllib.parse
from pathlib import Path

import pandas as pd

from .index import collect, load_index
from .store import ResultsError, ResultsRoot

TABLE_COLUMNS = [
    ("row", "row"),
    ("name", "name"),
    ("status", "status"),
    ("content", "content"),
    ("style", "style"),
    ("preset", "preset"),
    ("optimizer", "optimizer"),
    ("content_weight", "content w."),
    ("n_filters", "filters"),
    ("iterations_run", "iters"),
    ("final_total", "total loss"),
    ("final_content", "content loss"),
    ("final_style", "style loss"),
    ("spectral_convergence", "spectral conv."),
    ("time_total_s", "wall s"),
    ("device_used", "device"),
]

SCRIPT = """
function sortTable(th) {
  const table = th.closest('table'), idx = [...th.parentNode.children].indexOf(th);
  const body = table.tBodies[0], rows = [...body.rows];
  const asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
  const key = r => { const v = r.cells[idx].dataset.v ?? r.cells[idx].textContent;
                     const n = parseFloat(v); return isNaN(n) ? v.toLowerCase() : n; };
  rows.sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); });
  rows.forEach(r => body.appendChild(r));
}
function checkMedia() {
  const broken = [];
  document.querySelectorAll('img').forEach(i => { if (!i.complete || i.naturalWidth === 0) broken.push(i.getAttribute('src')); });
  document.querySelectorAll('audio').forEach(a => { if (a.error) broken.push(a.getAttribute('src')); });
  const box = document.getElementById('media-check');
  const n = document.querySelectorAll('img, audio').length;
  box.dataset.broken = broken.length; box.dataset.total = n;
  box.textContent = broken.length ? broken.length + ' of ' + n + ' media files failed to load: ' + broken.join(', ')
                                  : 'all ' + n + ' media files load';
  box.className = broken.length ? 'bad' : 'good';
}
window.addEventListener('load', () => setTimeout(checkMedia, 1500));
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #eee; cursor: pointer; position: sticky; top: 0; }
td.text { text-align: left; }
tr.failed td { background: #fde8e8; }
section.row { border-top: 2px solid #ddd; margin-top: 1.5em; padding-top: 0.5em; }
section.row img { max-width: 100%; margin: 0.25em 0; }
.players { display: flex; gap: 1.5em; flex-wrap: wrap; }
.players div { display: flex; flex-direction: column; }
pre.error { background: #fde8e8; padding: 0.5em; white-space: pre-wrap; }
#media-check.good { color: #176117; } #media-check.bad { color: #a01010; font-weight: bold; }
"""


def _missing(value: object) -> bool:
    """The None, NaN or pd.NA that pandas puts in empty cells (nullable integers give pd.NA)."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _cell(value: object) -> tuple[str, str]:
    """(display text, sort key) for a table cell."""
    if _missing(value):
        return "", ""
    if isinstance(value, float):
        return f"{value:.4g}", repr(value)
    return str(value), str(value)


def _present(value: object) -> bool:
    """False for the None/NaN that pandas puts in empty cells."""
    return not _missing(value) and value != ""


def _rel(target: str | os.PathLike, start: Path) -> str:
    """A relative URL: percent-encoded, so file names with #, ? or % still load."""
    return urllib.parse.quote(Path(os.path.relpath(Path(target), start)).as_posix())


def _summary(df: pd.DataFrame, metric: str, top: int, ascending: bool) -> str:
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    parts = [f"<li>{html.escape(str(k))}: {v}</li>" for k, v in sorted(counts.items())]
    time_by_device = (
        df.groupby(df["device_used"].astype(str), observed=True)["time_total_s"].sum() if len(df) else {}
    )
    for device, seconds in dict(time_by_device).items():
        parts.append(f"<li>{html.escape(device)} time: {seconds / 3600:.3f} h ({seconds:.1f} s)</li>")
    best = ""
    ok = df[df["status"] == "ok"] if len(df) else df
    if metric in df.columns and len(ok):
        ranked = ok.sort_values(metric, ascending=ascending).head(top)
        items = "".join(
            f"<li><a href='#row-{html.escape(r.id)}'>row {r.row} {html.escape(r.name if _present(r.name) else r.id)}</a>: "
            f"{getattr(r, metric):.4g}</li>"
            for r in ranked.itertuples()
        )
        order = "lowest" if ascending else "highest"
        best = f"<h3>Best {top} by {html.escape(metric)} ({order})</h3><ol>{items}</ol>"
    return f"<h2>Summary</h2><ul>{''.join(parts)}</ul>{best}"


def _table(df: pd.DataFrame) -> str:
    head = "".join(f"<th onclick='sortTable(this)'>{html.escape(label)}</th>" for _, label in TABLE_COLUMNS)
    rows = []
    for r in df.to_dict("records"):
        cells = []
        for col, _ in TABLE_COLUMNS:
            value = r.get(col)
            if col in ("content", "style") and value:
                value = Path(value).name
            text, key = _cell(value)
            if not _present(r.get("name")) and col == "name":
                text = ""
            if col == "name":
                text = f"<a href='#row-{html.escape(r['id'])}'>{html.escape(text or r['id'])}</a>"
            else:
                text = html.escape(text)
            klass = " class='text'" if col in ("name", "status", "content", "style", "preset", "optimizer", "device_used") else ""
            cells.append(f"<td{klass} data-v='{html.escape(key)}'>{text}</td>")
        rows.append(f"<tr class='{html.escape(str(r['status']))}'>{''.join(cells)}</tr>")
    return f"<table id='rows'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _row_section(r: dict, root: Path, out_dir: Path) -> str:
    rid = html.escape(r["id"])
    title = html.escape(f"row {r['row']}: {r['name'] if _present(r.get('name')) else r['id']}")
    parts = [f"<section class='row' id='row-{rid}'><h3>{title} <small>[{rid}] {html.escape(str(r['status']))}</small></h3>"]
    parts.append(
        f"<p>{html.escape(Path(r['content']).name)} (content) + {html.escape(Path(r['style']).name)} (style); "
        f"optimizer {html.escape(str(r.get('optimizer')))}, content_weight {r.get('content_weight')}, "
        f"{_cell(r.get('iterations_run'))[0] or 0} iterations ({html.escape(str(r.get('stop_reason') or ''))})</p>"
    )
    if r["status"] != "ok":
        parts.append(f"<pre class='error'>{html.escape(str(r.get('error') or 'no error recorded'))}</pre>")
    players = []
    for label, path in (("content", r["content"]), ("style", r["style"]), ("output", r.get("output"))):
        if not _present(path):
            continue
        full = Path(path) if Path(path).is_absolute() else root / path
        players.append(
            f"<div><span>{label}</span><audio controls preload='metadata' src='{html.escape(_rel(full, out_dir))}'></audio></div>"
        )
    parts.append(f"<div class='players'>{''.join(players)}</div>")
    if _present(r.get("figure_error")):
        parts.append(f"<p class='warn'>figures missing: {html.escape(str(r['figure_error']))} "
                     "(batch-ast collect regenerates them)</p>")
    for key in ("spectrogram_png", "loss_png"):
        if _present(r.get(key)):
            parts.append(f"<img alt='{key}' src='{html.escape(_rel(root / r[key], out_dir))}'>")
    parts.append("</section>")
    return "".join(parts)


def write_report(
    root: str | Path = "results",
    output: str | Path | None = None,
    metric: str = "final_style",
    top: int = 5,
    ascending: bool = True,
) -> Path:
    """Collect, then write the HTML report (default: <root>/report.html). Returns its path."""
    results = ResultsRoot(root)
    results.require_results_root()
    try:
        collect(results.root)
    except (ResultsError, OSError) as exc:  # a read-only root: report what was collected before
        if not results.index_path.exists():
            raise
        print(f"warning: could not re-collect ({exc}); using the existing index", file=sys.stderr)
    df = load_index(results.root).sort_values("row", kind="stable")
    out = Path(output) if output else results.root / "report.html"
    out = out.resolve()
    out_dir = out.parent
    sections = "".join(_row_section(r, results.root, out_dir) for r in df.to_dict("records"))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>batch-ast report: {html.escape(str(results.root))}</title>
<style>{STYLE}</style><script>{SCRIPT}</script></head>
<body><h1>batch-ast report</h1>
<p>{len(df)} row(s) from <code>{html.escape(str(results.root))}</code>. Click a column header to sort.</p>
<p id="media-check">checking media files…</p>
{_summary(df, metric, top, ascending)}
<h2>All rows</h2>{_table(df)}
<h2>Rows</h2>{sections}
</body></html>
"""
    from .store import write_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out
