"""The HTML report: structure, relative links, failed rows; and a real headless-Chromium render."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

import batch_ast
from batch_ast.cli import main
from batch_ast.report import TRACE_POINTS, write_report
from benchmarks.pipeline import grow_study

from .conftest import small_study


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A results root with two ok rows and one failed row, run through the local executor."""
    return small_study(tmp_path_factory.mktemp("report"))


def trace_pairs(trace: dict) -> list[list[float]]:
    """A compact trace of the data file as [iteration, loss] pairs (what report-data.js's traceOf does)."""
    xs = trace.get("i")
    if xs is None:
        xs = list(range(trace["a"], trace["l"], trace["s"])) + [trace["l"]]
    assert len(xs) == len(trace["t"]), trace
    return [[x, t] for x, t in zip(xs, trace["t"], strict=True)]


def report_payload(report: Path) -> dict:
    """The rows the page draws, read back from its data file and expanded as the page does:
    rows from arrays, input URLs from their index, row file URLs from their bits, traces (from the
    traces file) as pairs."""
    text = report.with_name(report.stem + ".data.js").read_text(encoding="utf-8")
    data = json.loads(text[text.index("=") + 1 :].strip().rstrip(";"))
    data["rows"] = [dict(zip(data["keys"], values + [None] * (len(data["keys"]) - len(values)), strict=True))
                    for values in data["rows"]]
    for row in data["rows"]:
        row["content_url"], row["style_url"] = data["inputs"][row["ci"]], data["inputs"][row["si"]]
        for key, (bit, name) in data["files"].items():
            row[key] = f"{data['root_prefix']}runs/{row['id']}/{name}" if row["f"] & bit else None
    # the loss curves: a file of their own, which the page loads when a chart asks for them
    assert data["traces_src"] == urllib.parse.quote(report.stem + ".traces.js")
    text = report.with_name(report.stem + ".traces.js").read_text(encoding="utf-8")
    assert text.startswith("window.BATCH_AST_TRACES = ")
    traces = json.loads(text[text.index("=") + 1 :].strip().rstrip(";"))
    data["traces"] = {rid: trace_pairs(t) for rid, t in traces.items()}
    return data


def local_target(report: Path, url: str) -> Path:
    return (report.parent / urllib.parse.unquote(url)).resolve()


def test_report_data_links_every_file_and_shows_what_varies(finished, tmp_path):
    out = write_report(finished, tmp_path / "elsewhere" / "report.html")
    text, data = out.read_text(), report_payload(out)
    body = text[text.index("<body>"):text.index("<script")]  # the scripts come last
    assert "<audio" not in body and "<img" not in body  # media are made when a row is opened
    assert len(data["rows"]) == 3
    assert data["params"] == ["content_weight"]  # the only hyperparameter that differs
    # the name and status, then the measures (held-out ones first), then inputs and hyperparameters
    assert data["columns"][:3] == ["label", "status", "content_distance"]
    assert data["columns"][-3:] == ["content_name", "style_name", "content_weight"]
    assert data["columns"].index("style_distance_heldout") < data["columns"].index("final_total")
    assert [r["label"] for r in data["rows"]] == ["one", "two", "bad"]  # the manifest's names, pinned first
    assert "n_fft" not in data["columns"] and "style_distance_heldout" in data["metrics"]
    urls = []
    for row in data["rows"]:
        keys = ("content_url", "style_url", "output_url", "spectrogram_url", "loss_url")
        expected = keys if row["status"] == "ok" else keys[:2]
        assert [k for k in keys if row[k]] == list(expected), row
        urls += [row[k] for k in expected]
        if row["status"] == "ok":
            assert isinstance(row["iterations_run"], int)  # not "20.0 iterations"
            assert all(
                isinstance(row[k], float) for k in ("content_rms_dbfs", "style_rms_dbfs", "output_rms_dbfs")
            )
            assert 2 <= len(data["traces"][row["id"]]) <= TRACE_POINTS
        else:
            assert "broken.wav: cannot decode audio" in row["error"] and row["iterations_run"] is None
    for url in urls:
        assert not Path(url).is_absolute() and local_target(out, url).is_file(), url
    assert "<li>ok: 2</li>" in text and "<li>failed: 1</li>" in text
    assert "Best 5 by style_distance_heldout (lowest)" in text  # a held-out measure, not the optimised loss


def test_portable_report_survives_copying_the_results_folder(finished, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    out = write_report(copy, portable=True)
    moved = tmp_path / "laptop" / "results"
    shutil.copytree(copy, moved)
    shutil.rmtree(copy)
    report = moved / out.name
    data = report_payload(report)
    for row in data["rows"]:
        for key in ("content_url", "style_url", "output_url", "spectrogram_url", "loss_url"):
            if row.get(key):
                target = local_target(report, row[key])
                assert target.is_file() and target.is_relative_to(moved), (key, row[key])
    # one copy per distinct input (named by hash): content, style and the broken file
    assert len(list((moved / "report-inputs").iterdir())) == 3


def test_report_command(finished, capsys):
    assert main(["report", str(finished), "--metric", "spectral_convergence", "--top", "1"]) == 0
    assert (finished / "report.html").exists()
    assert "Best 1 by spectral_convergence" in (finished / "report.html").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_or_skip() -> str:
    if not CHROMIUM:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but chromium is not installed (make test installs it as root)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return CHROMIUM


def chromium_flags(profile: Path) -> list[str]:
    return [
        chromium_or_skip(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}",
        "--allow-file-access-from-files", "--virtual-time-budget=8000",
    ]


def chromium(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (headless Chromium, virtual time so waits are states)."""
    return subprocess.run([*chromium_flags(profile), "--dump-dom", url], capture_output=True, text=True,
                          timeout=180).stdout


def rows_table(dom: str) -> str:
    found = re.search(r'<table id="rows">.*?</table>', dom, re.S)
    assert found, dom[:2000]
    return found.group(0)


def attribute(dom: str, element_id: str, name: str) -> str:
    tag = re.search(rf'<[^>]*id="{element_id}"[^>]*>', dom)
    assert tag, dom[:2000]
    found = re.search(rf'{name}="([^"]*)"', tag.group(0))
    return found.group(1) if found else ""


@pytest.mark.browser
def test_report_renders_opens_rows_and_switches_a_b_in_headless_chromium(finished, tmp_path):
    chromium_or_skip()
    report = write_report(finished)
    data = report_payload(report)
    ok = next(r for r in data["rows"] if r["status"] == "ok")
    bad = next(r for r in data["rows"] if r["status"] != "ok")
    # a deep link opens a row on its output in the A/B player (what a click on the row and on
    # "output" does): the player, both figures and nothing else are loaded, and all of them load
    dom = chromium(report.as_uri() + f"#open={ok['id']}&ab=output", tmp_path / "p1")
    table = rows_table(dom)
    assert table.count("<tr class=\"row ") == 3 and 'class="group"' in table
    details = re.search(r'<tr class="details".*?</tr>', table, re.S).group(0)
    assert re.search(r'<audio[^>]*src="[^"]*output\.wav"', details), details[:1500]
    assert 'data-which="output"' in details and 'class="on"' in details
    assert details.count("<img") == 2
    assert attribute(dom, "media-check", "data-tried") == "3", attribute(dom, "media-check", "class")
    assert attribute(dom, "media-check", "data-broken") == "0"
    # the input that is not audio at all is reported, and only what was tried is counted
    dom = chromium(report.as_uri() + f"#open={bad['id']}&ab=content", tmp_path / "p2")
    assert attribute(dom, "media-check", "data-tried") == "1"
    assert attribute(dom, "media-check", "data-broken") == "1" and "broken.wav" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*chromium_flags(tmp_path / "p3"), f"--screenshot={shot}", "--window-size=1400,2000",
                    report.as_uri() + f"#open={ok['id']}"], capture_output=True, timeout=180)
    assert shot.exists() and shot.stat().st_size > 10_000


def study_root(finished: Path, folder: Path, n_rows: int) -> Path:
    """A results root of n_rows real records: the finished root's rows plus copies of its ok row."""
    root = folder / "study"
    shutil.copytree(finished, root)
    grow_study(root, n_rows)
    return root


@pytest.mark.browser
def test_report_of_a_2000_row_study_loads_filters_and_switches_in_headless_chromium(finished, tmp_path):
    chromium_or_skip()
    root = study_root(finished, tmp_path, 2000)
    report = write_report(root)
    data = report_payload(report)
    assert len(data["rows"]) == 2000 and set(data["params"]) == {"content_weight", "seed"}
    target = next(r for r in data["rows"] if r["name"] == "study-1003")
    t0 = time.perf_counter()
    dom = chromium(
        report.as_uri() + f"#filter=status%3Dok%20content_weight%3E1.5&open={target['id']}&ab=style",
        tmp_path / "p",
    )
    ready = re.search(r'data-ready-ms="(\d+)"', dom)
    assert ready, dom[:2000]  # the page's script ran to the end of its first render
    print(f"2000-row report: headless Chromium returned its DOM in {time.perf_counter() - t0:.1f} s; "
          f"first render {ready.group(1)} ms")
    expected = sum(1 for r in data["rows"] if r["status"] == "ok" and (r["content_weight"] or 0) > 1.5)
    assert attribute(dom, "count", "data-matching") == str(expected) and expected < 2000
    table = rows_table(dom)
    assert table.count("<tr class=\"row ") == 50  # one page of rows, not 2,000
    details = re.search(r'<tr class="details".*?</tr>', table, re.S).group(0)
    assert "study-1003" in details and re.search(r'<audio[^>]*src="[^"]*style\.wav"', details)
    assert 'data-which="style"' in details
    assert attribute(dom, "media-check", "data-broken") == "0"
    assert attribute(dom, "media-check", "data-tried") == "3"  # that row's player and figures only


def test_analysis_groups_by_hyperparameter_and_plots(finished, tmp_path, capsys):
    import batch_ast

    df = batch_ast.load_index(finished)
    table = batch_ast.analyse(df, "content_weight", "style_distance_heldout")
    assert table["content_weight"].tolist() == [0.5, 4.3]  # the failed row (weight 1) is left out
    assert (table["n"] == 1).all() and table["mean"].notna().all() and table["std"].isna().all()
    assert list(df["content_name"].astype(str)) == [Path(p).name for p in df["content"]]
    with pytest.raises(KeyError, match="no column 'nope'"):
        batch_ast.analyse(df, "nope", "final_style")
    out = tmp_path / "effect.png"
    assert main(["analyse", str(finished), "--param", "content_weight", "--metric", "content_distance",
                 "-o", str(out)]) == 0
    assert "content_distance" not in capsys.readouterr().err
    assert out.stat().st_size > 5000
    # a categorical hyperparameter plots by category (it crashed converting "lbfgs" to float)
    by_optimizer = tmp_path / "optimizer.png"
    assert main(["analyse", str(finished), "--param", "optimizer", "-o", str(by_optimizer)]) == 0
    assert by_optimizer.stat().st_size > 5000
    # integers stay integers with a failed row among them; text settings are categoricals
    assert str(df["iterations_run"].dtype) == "Int64" and df["iterations_run"].isna().any()
    assert all(str(df[c].dtype) == "category" for c in ("optimizer", "activation", "precision", "style_form"))


def test_traces_are_downsampled_per_row_with_first_and_last_points_kept(tmp_path, monkeypatch):
    """The vectorised pick against its definition: every step-th point of each row's trace (step
    = ceil(n / TRACE_POINTS)), the last one too, non-finite losses dropped; rows interleaved in
    the traces file still come out whole and in order."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batch_ast import report
    from batch_ast.index import TracePoints

    rng = np.random.default_rng(0)
    frames = []
    for k, n in enumerate([1, 2, TRACE_POINTS, TRACE_POINTS + 1, 3 * TRACE_POINTS + 7, 1000]):
        total = rng.random(n)
        total[rng.random(n) < 0.05] = np.nan
        frames.append(pd.DataFrame({"id": f"{k:016x}", "iteration": np.arange(n), "total": total}))
    traces = pd.concat(frames).sample(frac=1, random_state=1).sort_values("iteration", kind="stable")
    table = pa.Table.from_pandas(traces, preserve_index=False)
    pq.write_table(table, tmp_path / "traces.parquet")
    monkeypatch.setattr(report, "trace_points", lambda root: TracePoints(tmp_path / "traces.parquet", root))
    got = {
        rid: trace_pairs(t)
        for rid, t in report._downsampled_traces(tmp_path, {f"{k:016x}" for k in range(6)}).items()
    }
    for frame in frames:
        n, rid = len(frame), frame["id"].iloc[0]
        step = max(1, -(-n // TRACE_POINTS))
        positions = list(range(0, n, step)) + ([n - 1] if (n - 1) % step else [])
        expected = [
            [i, float(f"{t:.5g}")]
            for i, t in zip(frame["iteration"].iloc[positions], frame["total"].iloc[positions], strict=True)
            if np.isfinite(t)
        ]
        assert got[rid] == expected, rid


@pytest.mark.browser
def test_aggregation_filter_errors_pinned_names_and_a_deep_link_round_trip_in_headless_chromium(
    finished, tmp_path
):
    """A study of 300 rows whose copies differ in seed and content weight, with a spread in one
    metric: the table aggregated over seeds shows one row per weight with n and mean ± std, the
    scatter draws error bars; an unknown column and a bad comparison are said, not 0 rows in
    silence; OR lists and spaces work; the page's address names the whole view and reloading it
    gives the same view back."""
    chromium_or_skip()
    root = study_root(finished, tmp_path, 300)
    for i, path in enumerate(sorted((root / "runs").glob("*/record.json"))):
        record = json.loads(path.read_text())
        if record["status"] == "ok":
            record["style_distance_heldout"] = 0.3 + 0.01 * (i % 7)
            if i % 2:  # two presets, whose losses are on different scales
                record["params"]["preset"] = "ulyanov-tf"
                record["final_style"] *= 1000
            path.write_text(json.dumps(record))
    report = write_report(root)
    data = report_payload(report)
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    assert data["params"] == ["preset", "content_weight", "seed"] and "label" in data["columns"]
    page = report.read_text()  # the summary: best rows within each preset, failures by kind
    assert "Best 5 by style_distance_heldout (lowest, no preset)" in page  # a held-out measure
    assert "(lowest, preset ulyanov-tf)" in page
    assert re.search(r"<ul id='failures'><li><b>AudioError</b>: 1 row\(s\), e\.g\. <a href='#open=", page)
    _aggregated_view_and_its_address(report, data, ok, tmp_path)
    _filters_problems_and_widgets(report, data, ok, tmp_path)
    _ticked_curves_and_the_scatter(report, ok, tmp_path)


def _aggregated_view_and_its_address(report, data, ok, tmp_path):
    """Aggregated over seeds: one row per group with n and mean ± std, error bars, mean curves; the
    address names the view and gives it back."""
    groups = {(r["content_name"], r["style_name"], r["preset"], r["content_weight"]) for r in data["rows"]}
    view = "agg=1&x=content_weight&y=style_distance_heldout&sort=-style_distance_heldout"
    dom = chromium(report.as_uri() + "#" + view, tmp_path / "p1")
    assert attribute(dom, "count", "data-groups") == str(len(groups))
    table = rows_table(dom)
    assert table.count('<tr class="agg"') == len(groups) and "(mean ± std)" in table and "n (ok)" in table
    assert 'class="sorted-desc"' in table
    assert int(attribute(dom, "scatter", "data-bars")) >= 4  # the groups of many seeds, not the single rows
    with_curves = {(r["content_name"], r["style_name"], r["preset"], r["content_weight"]) for r in ok}
    assert attribute(dom, "curves", "data-mode") == "groups"  # each group's mean curve and ±std band
    assert (
        attribute(dom, "curves", "data-curves")
        == attribute(dom, "curves", "data-bands")
        == str(min(10, len(with_curves)))
    )
    assert "(mean of " in dom and 'class="uplot' in dom
    written = urllib.parse.parse_qs(re.search(r'data-view="#([^"]*)"', dom).group(1).replace("&amp;", "&"))
    assert written["agg"] == ["1"] and written["sort"] == ["-style_distance_heldout"]
    assert written["x"] == ["content_weight"] and written["y"] == ["style_distance_heldout"]
    again = chromium(
        report.as_uri() + "#" + urllib.parse.urlencode({k: v[0] for k, v in written.items()}), tmp_path / "p2"
    )
    assert rows_table(again) == table  # the address is the view


def _filters_problems_and_widgets(report, data, ok, tmp_path):
    """Unknown columns and bad comparisons are said; OR lists work; widgets show the filter."""
    dom = chromium(
        report.as_uri() + "#filter=" + urllib.parse.quote("cw=0.1 content_weight>x"), tmp_path / "p3"
    )
    assert attribute(dom, "filter-problems", "data-problems") == "2"
    assert '"cw" is not a column' in dom and "compares numbers" in dom
    dom = chromium(
        report.as_uri()
        + "#filter="
        + urllib.parse.quote("content_weight = 0.5,4 status=ok")
        + "&hide=final_total&agg=0",  # the rows, not the groups over seeds (the default here)
        tmp_path / "p4",
    )
    assert attribute(dom, "filter-problems", "data-problems") == "0"
    expected = sum(1 for r in ok if r["content_weight"] in (0.5, 4))
    assert attribute(dom, "count", "data-matching") == str(expected) and 0 < expected < len(ok)
    assert attribute(dom, "parallel", "data-lines") == str(expected)  # parallel coordinates of those rows
    table = rows_table(dom)
    assert (
        'data-k="final_total"' not in table and 'data-k="final_style"' in table
    )  # a column hidden by the chooser
    # the per-column widgets show what the filter says: checkboxes for few values, ranges for many
    weights = re.search(
        r'<fieldset data-col="content_weight" data-kind="values">.*?</fieldset>', dom, re.S
    ).group(0)
    assert re.findall(r'value="([^"]*)" checked', weights) == ["0.5", "4"]
    dom = chromium(report.as_uri() + "#agg=0&filter=" + urllib.parse.quote("seed>=10 seed<=20"),
                   tmp_path / "p7")
    seeds = re.search(r'<fieldset data-col="seed" data-kind="range">.*?</fieldset>', dom, re.S).group(0)
    assert 'value="10"' in seeds and 'value="20"' in seeds
    assert attribute(dom, "count", "data-matching") == str(
        sum(1 for r in data["rows"] if 10 <= (r["seed"] or -1) <= 20)
    )
    assert table.count('<td class="text pin">') == 50  # the pinned name column, on every row of the page
    assert "<th data-k=\"iterations_run\"" in table and ">iterations run<" in table  # not "iterations" twice


def _ticked_curves_and_the_scatter(report, ok, tmp_path):
    """The charts: 20 ticked rows' curves on uPlot, coloured by a parameter, named in its legend; a
    scatter with ticks on both axes, its x axis logarithmic when asked (auto: over two decades)."""
    ticked = [r["id"] for r in ok[:20]]
    dom = chromium(
        report.as_uri()
        + "#"
        + urllib.parse.urlencode(
            {"select": ",".join(ticked), "colour": "content_weight", "logx": "log", "sort": "-final_style",
             "agg": "0"}
        ),
        tmp_path / "p5",
    )
    assert re.findall(r'<th data-k="(\w+)"', rows_table(dom))[:2] == [
        "label",
        "final_style",
    ]  # the sorted column pinned
    assert attribute(dom, "curves", "data-curves") == "20" and 'class="uplot' in dom
    assert dom.count('class="u-series') >= 21  # the x value and the 20 curves, by name
    assert all(title in dom for title in {r["label"] for r in ok[:20]})
    assert attribute(dom, "scatter", "data-logx") == "1" and "content_weight (log)" in dom
    assert dom.count('class="tick"') >= 6
    dom = chromium(report.as_uri(), tmp_path / "p6")
    assert attribute(dom, "scatter", "data-logx") == "0"  # weights 0.5-4.3: not two decades


def test_the_report_script_and_style_are_package_data_inlined_into_the_page(finished):
    from batch_ast.report import REPORT_SCRIPTS, _asset, report_script

    page = write_report(finished).read_text()
    script, style = report_script(), _asset("report.css")
    assert script in page and style in page and "</script" not in script.lower()
    folder = Path(__file__).parent.parent / "batch_ast" / "report_assets"
    assets = {p.name for p in folder.glob("report*.js")}
    assert assets == set(REPORT_SCRIPTS)  # every module joined, none left out
    assert not re.search(r"\bon(click|change|input)=", page)  # no handler written into the page's HTML


@pytest.mark.browser
def test_a_pinned_reference_row_plays_in_another_rows_player_in_headless_chromium(finished, tmp_path):
    """Cross-row A/B: row "one" pinned as the reference; row "two" opened on the reference plays
    one's output, and every source of two's player can be chosen beside it."""
    chromium_or_skip()
    report = write_report(finished)
    rows = {r["name"]: r for r in report_payload(report)["rows"]}
    one, two = rows["one"], rows["two"]
    dom = chromium(report.as_uri() + f"#ref={one['id']}&open={two['id']}&ab=reference", tmp_path / "p")
    details = re.search(r'<tr class="details".*?</tr>', rows_table(dom), re.S).group(0)
    audio = re.search(r'<audio[^>]*src="([^"]*)"', details).group(1)
    assert local_target(report, audio) == local_target(
        report, one["output_url"]
    )  # one's output, in two's player
    buttons = re.findall(r'<button data-action="ab" data-id="[^"]*" data-which="(\w+)"', details)
    assert buttons == ["content", "style", "output", "reference"]
    assert "reference: one" in details and f'id="reference" data-id="{one["id"]}"' in dom
    assert attribute(dom, "media-check", "data-broken") == "0"


@pytest.mark.parametrize(
    "iterations", [[], [7], [0, 3], [0, 5, 10], [0, 5, 10, 12], [0, 5, 10, 19], [0, 5, 11, 15], [4, 2]]
)
def test_a_compact_trace_reads_back_as_its_points(iterations, tmp_path, monkeypatch):
    """A row's curve as the data file carries it: (first, step, last) where its iterations are
    evenly spaced but for a last, shorter gap; listed otherwise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batch_ast import report
    from batch_ast.index import TracePoints

    totals = [1234.5678 + k for k in range(len(iterations))]
    rid = "0" * 16
    table = pa.table({"id": [rid] * len(iterations), "iteration": pa.array(iterations, pa.int64()),
                      "total": pa.array(totals, pa.float64())})
    pq.write_table(table, tmp_path / "traces.parquet")
    monkeypatch.setattr(report, "trace_points", lambda root: TracePoints(tmp_path / "traces.parquet", root))
    packed = report._downsampled_traces(tmp_path, {rid}).get(rid, {"i": [], "t": []})
    assert trace_pairs(packed) == [[i, float(f"{t:.5g}")] for i, t in zip(iterations, totals, strict=True)]
    assert ("i" not in packed) == (iterations in ([0, 3], [0, 5, 10], [0, 5, 10, 12]))


def test_rounding_to_significant_digits_all_at_once_is_the_formatting_of_each():
    import numpy as np

    from batch_ast.report import round_significant

    rng = np.random.default_rng(3)
    values = rng.random(20_000) * 10.0 ** rng.integers(-12, 12, 20_000) * rng.choice([-1, 1], 20_000)
    assert round_significant(values, 5).tolist() == [float(f"{v:.5g}") for v in values]
    edges = np.array([0.0, np.nan, np.inf, -np.inf, 1.7976931348623157e308, 5e-324, 123456789.0])
    got = round_significant(edges, 5)
    assert got[0] == 0 and np.isnan(got[1]) and got[2] == np.inf and got[3] == -np.inf
    assert got[4] == 1.7976931348623157e308  # not rounded up past the largest float into inf
    assert got[6] == 123460000.0 and np.isfinite(got[5])


def test_a_report_with_nothing_new_is_not_written_again(finished, tmp_path, monkeypatch, capsys):
    """`report` when nothing changed since this user's last report there: the files are left as
    they are (and the command says so); anything that would change the page writes it again: a
    changed record, other settings, other code, a file edited or replaced by someone else."""
    from batch_ast import freshness

    out = tmp_path / "r" / "report.html"
    files = [out, out.with_name("report.data.js"), out.with_name("report.traces.js")]
    made = lambda: [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files]  # noqa: E731
    assert main(["report", str(finished), "-o", str(out)]) == 0
    first = made()
    assert main(["report", str(finished), "-o", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"report: {out} (up to date)"
    assert made() == first
    assert write_report(finished, out) == out and made() == first  # the API alike
    assert main(["report", str(finished), "-o", str(out), "--top", "2"]) == 0  # other settings
    second = made()
    assert second != first and "(up to date)" not in capsys.readouterr().out
    with out.open("a") as page:  # edited since
        page.write("<!-- zz-marker-4242 -->")
    write_report(finished, out, top=2)
    assert "zz-marker-4242" not in out.read_text()
    third = made()
    with monkeypatch.context() as patched:
        patched.setattr(freshness, "code_digest", lambda: "other code")
        write_report(finished, out, top=2)
    assert made() != third
    fourth = made()
    with monkeypatch.context() as patched:
        patched.setattr(freshness, "_own_regular_file", lambda path: False)  # not this user's file
        write_report(finished, out, top=2)
    assert made() != fourth
    fifth = made()
    write_report(finished, out, top=2, portable=True)  # its copies are never stamped
    assert made() != fifth


def test_a_changed_record_writes_the_report_again(finished, tmp_path):
    results = Path(shutil.copytree(finished, tmp_path / "results", symlinks=True))
    out = write_report(results)
    before = out.with_name("report.data.js").read_text()
    index = batch_ast.load_index(results)
    rid = index.loc[index["status"] == "ok", "id"].iloc[0]
    record = json.loads((results / "runs" / rid / "record.json").read_text())
    record["name"] = "renamed"
    (results / "runs" / rid / "new.json").write_text(json.dumps(record))
    (results / "runs" / rid / "new.json").replace(results / "runs" / rid / "record.json")
    write_report(results)
    assert '"renamed"' in out.with_name("report.data.js").read_text() and '"renamed"' not in before
