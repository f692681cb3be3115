"""The report's charts and controls as a researcher uses them, in real Chromium (Playwright): the
aggregation default and what it says, SEM and CI beside std, grouped curves that stop where fewer
than half their rows remain, a colour legend on every coloured chart, parallel coordinates drawn
from a fair sample and brushed into the filter, and a filter box that redraws once typing pauses."""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.parse
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batch_ast.report import write_report

from .conftest import small_study
from .test_report import chromium_or_skip

pytestmark = pytest.mark.browser
WAIT_MS = 600_000  # a bound on states awaited, not a deadline (a busy machine is slow)


def playwright_api():
    if os.environ.get("CI") != "true":
        return pytest.importorskip("playwright.sync_api")
    return __import__("playwright.sync_api", fromlist=["sync_api"])


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """The small study (two ok rows, one failed; seeds equal) grown to 2,100 rows whose copies differ
    in content weight (0.5, 1, 2, 4) and seed; in the weight-0.5 group three rows in four stop half-way
    (their traces cut there), so that group's mean curve must stop where fewer than
    half its rows remain."""
    from benchmarks.pipeline import grow_study

    folder = tmp_path_factory.mktemp("charts")
    root = small_study(folder)
    (folder / "few").mkdir()
    shutil.copytree(root, folder / "few" / "results")  # the study before it grows: seeds equal
    grow_study(root, 2100)
    halves = [p for p in sorted((root / "runs").glob("*/record.json"))
              if (r := json.loads(p.read_text()))["status"] == "ok" and r["params"]["content_weight"] == 0.5]
    for path in halves[1::4] + halves[2::4] + halves[3::4]:
        table = pq.read_table(path.parent / "trace.parquet")
        half = pc.max(table["iteration"]).as_py() // 2
        pq.write_table(table.filter(pc.less_equal(table["iteration"], half)), path.parent / "trace.parquet")
    write_report(root)
    write_report(folder / "few" / "results")
    return root


@pytest.fixture(scope="module")
def browser():
    chromium = chromium_or_skip()
    with playwright_api().sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


def open_report(browser, root: Path, view: str = ""):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto((root / "report.html").as_uri() + ("#" + view if view else ""))
    page.wait_for_selector("body[data-ready-ms]", timeout=WAIT_MS)
    return page


def data(page, element: str, name: str) -> str:
    return page.get_attribute(f"#{element}", f"data-{name}")


def test_a_study_with_seeds_opens_aggregated_over_them_and_says_so(browser, study):
    page = open_report(browser, study)
    assert page.is_checked("#agg") and "aggregated over seeds" in page.inner_text("#aggnote")
    assert int(data(page, "count", "groups")) == 6  # the copies' 4 weights, one's 4.3, the failed row's input
    assert page.input_value("#aggby") == "content_name,style_name,content_weight"
    assert "seed" not in page.input_value("#aggby")
    header = page.inner_text("#rows thead")
    assert "(mean ± std)" in header and "n (ok)" in header
    page.select_option("#spread", "ci")
    page.wait_for_function("() => document.querySelector('#rows thead').innerText.includes('95 % CI')",
                           timeout=WAIT_MS)
    assert "spread=ci" in page.evaluate("location.hash")
    page.close()


def test_a_study_without_seeds_opens_row_by_row_and_aggregates_by_the_scatters_x(browser, study):
    page = open_report(browser, study.parent / "few" / "results")
    assert not page.is_checked("#agg") and page.inner_text("#aggnote") == ""
    page.check("#agg")
    page.wait_for_function("() => document.querySelector('#aggnote').innerText !== ''", timeout=WAIT_MS)
    note = page.inner_text("#aggnote")
    assert "seeds do not vary" in note and "content_weight" in note
    assert page.input_value("#aggby") == "content_weight"
    assert int(data(page, "count", "groups")) == 3  # 4.3, 0.5, and the failed row's 1
    page.close()


def test_grouped_curves_stop_where_fewer_than_half_the_rows_remain_and_legends_name_groups(browser, study):
    page = open_report(browser, study, "agg=1&x=content_weight")
    assert data(page, "curves", "mode") == "groups"
    assert int(data(page, "curves", "stopped")) == 1  # the weight-0.5 group: 3 of 4 rows end half-way
    legend = page.inner_text("#curves .u-legend")
    assert "stops at" in legend and "fewer than half remain" in legend
    assert "band" not in legend and "std" not in legend.replace("mean ±", "")  # bands are not series
    # the user picks the groups drawn: untick one
    drawn = int(data(page, "curves", "curves"))
    page.locator("#rows input.curve-pick:checked").first.uncheck()
    page.wait_for_function(f"() => document.querySelector('#curves').dataset.curves === '{drawn - 1}'",
                           timeout=WAIT_MS)
    assert "curves=" in page.evaluate("location.hash")
    # every coloured chart says which colour is which; a colour redraws the charts, not the table
    renders = page.get_attribute("body", "data-renders")
    page.select_option("#colour", "content_weight")
    page.wait_for_selector("#scatter .legend", timeout=WAIT_MS)
    assert int(page.get_attribute("#scatter .legend", "data-entries")) == 5  # 0.5 1 2 4 4.3
    assert page.locator("#parallel .legend").count() == 1
    assert page.get_attribute("body", "data-renders") == renders and "colour=content_weight" in page.url
    page.close()


def test_parallel_coordinates_draw_a_fair_sample_and_brushing_filters_everything(browser, study):
    page = open_report(browser, study, "agg=0&x=content_weight")
    assert int(data(page, "parallel", "lines")) == 2000
    note = page.inner_text("#parallel-sample")
    assert "random sample of 2000 of 2099 lines (seed 1)" in note
    # thousands of marks go on a canvas under the SVG axes (20,000 SVG circles were a wall)
    assert data(page, "scatter", "canvas") == "1" and data(page, "parallel", "canvas") == "1"
    assert int(data(page, "scatter", "points")) == 2099
    dims = data(page, "parallel", "dims").split(",")
    assert dims[0] == "content_weight" and dims[-1] == "style_distance_heldout"
    # drag along the content_weight axis over its top part: the weights 2 and above
    axis = page.locator('#parallel .brush-zone[data-dim="content_weight"]')
    axis.scroll_into_view_if_needed()
    zone = axis.bounding_box()  # in the viewport's coordinates, as the mouse moves
    x = zone["x"] + zone["width"] / 2
    page.mouse.move(x, zone["y"] + 2)
    page.mouse.down()
    page.mouse.move(x, zone["y"] + zone["height"] * 0.4, steps=5)
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('#filter').value.includes('content_weight>=')",
                           timeout=WAIT_MS)
    low = float(re.search(r"content_weight>=(\S+)", page.input_value("#filter")).group(1))
    expected = sum(1 for p in (study / "runs").glob("*/record.json")
                   if json.loads(p.read_text())["params"]["content_weight"] >= low)
    assert data(page, "count", "matching") == str(expected) and 0 < expected < 2100
    assert data(page, "parallel", "brushes") == "1"
    assert "content_weight%3E%3D" in page.evaluate("location.hash")  # the brush is in the address
    # a click on the axis clears its brush
    page.mouse.click(x, zone["y"] + zone["height"] * 0.8)
    page.wait_for_function("() => !document.querySelector('#filter').value.includes('content_weight')",
                           timeout=WAIT_MS)
    assert data(page, "count", "matching") == "2100"
    # a click on a dot of the canvas opens its row
    page.locator("#scatter canvas").scroll_into_view_if_needed()
    dot = page.evaluate("""() => {  // the first painted pixel of the canvas: a dot's edge
      const c = document.querySelector('#scatter canvas'), r = c.getBoundingClientRect();
      const img = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      for (let i = 0; i < img.length; i += 4)
        if (img[i + 3] > 50) return [r.left + (i / 4) % c.width, r.top + Math.floor(i / 4 / c.width) + 2];
      return null; }""")
    page.mouse.click(*dot)
    page.wait_for_function("() => document.querySelector('#rows tr.details') !== null", timeout=WAIT_MS)
    assert "open=" in page.evaluate("location.hash")
    page.close()


def test_typing_into_the_filter_redraws_once_the_typing_pauses(browser, study):
    """The page's clock is Playwright's: no timer fires until the test moves it, so what is
    counted is the page's logic, not this machine's speed."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.clock.install()
    page.goto((study / "report.html").as_uri() + "#agg=0")
    page.wait_for_selector("body[data-ready-ms]", timeout=WAIT_MS)
    before = int(page.get_attribute("body", "data-renders"))
    text = "status=ok content_weight>=2"  # 27 characters, typed one by one
    page.locator("#filter").press_sequentially(text)
    assert int(page.get_attribute("body", "data-renders")) == before  # nothing redrawn while typing
    page.clock.run_for(1000)
    page.wait_for_function(
        "t => new URLSearchParams(location.hash.slice(1)).get('filter') === t", arg=text, timeout=WAIT_MS)
    assert int(page.get_attribute("body", "data-renders")) - before == 1  # once, not 27 times
    expected = sum(1 for p in (study / "runs").glob("*/record.json")
                   if (r := json.loads(p.read_text()))["status"] == "ok"
                   and r["params"]["content_weight"] >= 2)
    assert data(page, "count", "matching") == str(expected)
    assert urllib.parse.unquote(page.evaluate("location.hash")).count("content_weight>=2") == 1
    page.close()


def test_the_page_s_buttons_and_boxes_work_through_its_delegated_listeners(browser, study):
    """No handler is written into the page's HTML: the A/B buttons, a row's tick box, a group's
    dot and "show all" work through one listener per region."""
    page = open_report(browser, study, "agg=0&filter=name%3Dstudy-7")
    page.locator("#rows tr.row").first.click()
    page.wait_for_selector("#rows tr.details .ab", timeout=WAIT_MS)
    page.locator('#rows tr.details button[data-which="style"]').click()
    page.wait_for_function("() => document.querySelector('#rows .ab').dataset.which === 'style'",
                           timeout=WAIT_MS)
    assert "ab=style" in page.evaluate("location.hash")
    page.locator("#rows input.row-pick").first.check()
    page.wait_for_function("() => document.querySelector('#curves').dataset.curves === '1'", timeout=WAIT_MS)
    assert data(page, "curves", "mode") == "rows"
    page.goto((study / "report.html").as_uri() + "#agg=1&x=content_weight")
    page.wait_for_selector("body[data-ready-ms]", timeout=WAIT_MS)
    page.locator("#scatter circle[data-group]").first.click()  # a group's dot: its rows
    page.wait_for_selector('#only button[data-action="show-all"]', timeout=WAIT_MS)
    assert not page.is_checked("#agg")
    page.locator('#only button[data-action="show-all"]').click()
    page.wait_for_function("() => document.querySelector('#only').innerText === ''", timeout=WAIT_MS)
    assert data(page, "count", "matching") == "2100"
    page.close()


def test_an_axis_of_the_parallel_coordinates_moves_left_when_its_name_is_clicked(browser, study):
    page = open_report(browser, study, "agg=0&x=content_weight")
    assert data(page, "parallel", "dims") == "content_weight,style_distance_heldout"
    name = page.locator('#parallel .axis-name[data-dim="style_distance_heldout"]')
    name.scroll_into_view_if_needed()
    name.click()
    page.wait_for_function(
        "() => document.querySelector('#parallel').dataset.dims === 'style_distance_heldout,content_weight'",
        timeout=WAIT_MS)
    assert "axes=style_distance_heldout%2Ccontent_weight" in page.evaluate("location.hash")
    again = open_report(browser, study, page.evaluate("location.hash").lstrip("#"))
    assert data(again, "parallel", "dims") == "style_distance_heldout,content_weight"  # the address keeps it
    again.close()
    page.close()


def test_the_scroll_position_lands_in_the_address_and_a_reload_returns_there(browser, study):
    """The scroll listener keeps the position for the address (the address no longer asks the
    page where it is scrolled: that forced a layout of every redraw)."""
    page = open_report(browser, study, "agg=0")
    page.evaluate("window.scrollTo(0, 300)")
    page.wait_for_function("() => new URLSearchParams(location.hash.slice(1)).get('scroll') === '300'",
                           timeout=WAIT_MS)
    page.select_option("#colour", "content_weight")  # a redraw keeps it
    assert "scroll=300" in page.url
    page.reload()
    page.wait_for_selector("body[data-ready-ms]", timeout=WAIT_MS)
    assert page.evaluate("window.scrollY") == 300
    page.close()
