"""How fast a report is in a real browser (issue #32's targets), with Playwright on the system's
Chromium (the test extra installs Playwright): first contentful paint, the page script's first
render, 27 characters typed into the filter (from the first key to the table showing the result),
a chart redraw (colour by another column), a page change (median of 10). Not part of the suite.

    python -m benchmarks.report_timing results/report.html [another/report.html ...]

Each report is measured in the same browser, one after the other: give the previous version's
report as a second one to have a reference measured in the same run.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path

TYPED = "status=ok content_weight>=2"  # 27 characters
FIRST_PAINT = """() => new Promise(done => new PerformanceObserver(list => {
    const paint = list.getEntriesByName('first-contentful-paint')[0];
    if (paint) done(paint.startTime);
  }).observe({ type: 'paint', buffered: true }))"""  # its entry, once the browser has one


def measure(page, report: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    page.goto(report.resolve().as_uri() + "#agg=0")
    page.wait_for_selector("body[data-ready-ms]", timeout=600_000)
    out = {"load_and_first_render_ms": (time.perf_counter() - t0) * 1000,
           "first_contentful_paint_ms": page.evaluate(FIRST_PAINT),
           "script_first_render_ms": float(page.get_attribute("body", "data-ready-ms"))}
    renders = lambda: int(page.get_attribute("body", "data-renders") or 0)  # noqa: E731
    before = renders()
    t0 = time.perf_counter()
    page.locator("#filter").press_sequentially(TYPED)
    page.wait_for_function(f"() => new URLSearchParams(location.hash.slice(1)).get('filter') === {TYPED!r}",
                           timeout=600_000)
    out["typing_27_chars_ms"] = (time.perf_counter() - t0) * 1000
    out["renders_while_typing"] = renders() - before
    page.fill("#filter", "")
    page.wait_for_function("() => !new URLSearchParams(location.hash.slice(1)).get('filter')",
                           timeout=600_000)
    redraws = []
    for colour in ("content_weight", "", "content_weight", ""):
        t0 = time.perf_counter()
        page.select_option("#colour", colour)
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))")
        redraws.append((time.perf_counter() - t0) * 1000)
    out["chart_redraw_ms_median"] = statistics.median(redraws)
    pages = []
    for _ in range(10):
        pages.append(page.evaluate("""() => new Promise(res => { const t = performance.now();
            document.getElementById('next').click();
            requestAnimationFrame(() => setTimeout(() => res(performance.now() - t), 0)); })"""))
    out["page_change_ms_median"] = statistics.median(pages)
    return out


def main(argv: list[str]) -> int:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not argv or not chromium:
        print(__doc__ if not argv else "needs Debian's chromium", file=sys.stderr)
        return 2
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for report in map(Path, argv):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            size = report.with_name(report.stem + ".data.js").stat().st_size
            print(f"{report} (data file {size / 2**20:.1f} MiB)")
            for name, value in measure(page, report).items():
                print(f"  {name:28s} {value:10.0f}")
            page.close()
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
