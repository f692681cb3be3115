"""The HTML report: structure, relative links, failed rows; and a real headless-Chromium render."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from batch_ast.cli import main
from batch_ast.report import write_report

from .conftest import tiny_columns, write_manifest


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.img: list[str] = []
        self.audio: list[str] = []
        self.rows = 0
        self.in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.img.append(a["src"])
        elif tag == "audio":
            self.audio.append(a["src"])
        elif tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows += 1

    def handle_endtag(self, tag):
        if tag == "tbody":
            self.in_body = False


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A results root with two ok rows and one failed row, run through the local executor."""
    from .conftest import DEMO_AUDIO

    folder = tmp_path_factory.mktemp("report")
    audio = folder / "audio"
    audio.mkdir()
    shutil.copy(DEMO_AUDIO / "speech_gettysburg.wav", audio / "content.wav")
    shutil.copy(DEMO_AUDIO / "boogie_marabi.wav", audio / "style.wav")
    (audio / "broken.wav").write_bytes(b"not audio at all")
    head, vals = tiny_columns()
    m = write_manifest(
        audio,
        [f"one,content.wav,style.wav,4.3,{vals}", f"two,content.wav,style.wav,0.5,{vals}", f"bad,broken.wav,style.wav,1,{vals}"],
        header=f"id,content,style,content_weight,{head}",
    )
    results = folder / "results"
    assert main(["submit", str(m), "--results", str(results), "--executor", "local", "--quiet"]) == 1
    return results


def test_report_links_every_figure_and_audio_file(finished, tmp_path):
    out = write_report(finished, tmp_path / "elsewhere" / "report.html")
    text = out.read_text()
    links = Links()
    links.feed(text)
    assert links.rows == 3
    assert len(links.img) == 4  # two figures per ok row
    assert len(links.audio) == 3 * 2 + 2  # content and style of every row, output of ok rows
    for src in links.img + links.audio:
        assert not Path(src).is_absolute()
        assert (out.parent / src).resolve().is_file(), src
    assert "broken.wav: cannot decode audio" in text
    assert "<li>ok: 2</li>" in text and "<li>failed: 1</li>" in text
    assert "Best 5 by final_style" in text


def test_report_command(finished, capsys):
    assert main(["report", str(finished), "--metric", "spectral_convergence", "--top", "1"]) == 0
    assert (finished / "report.html").exists()
    assert "Best 1 by spectral_convergence" in (finished / "report.html").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
def test_report_renders_in_headless_chromium(finished, tmp_path):
    if not CHROMIUM:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but chromium is not installed (make test installs it as root)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    report = write_report(finished)
    flags = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'profile'}",
        "--allow-file-access-from-files", "--virtual-time-budget=8000",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    check = re.search(r'id="media-check"[^>]*', dom)
    assert check, dom[:2000]
    # Every figure and player loads in the browser, except the input that is not audio at all.
    summary = re.search(r'id="media-check".*?</p>', dom, re.S).group(0)
    assert 'data-total="12"' in check.group(0), summary
    assert 'data-broken="1"' in check.group(0) and summary.endswith("../audio/broken.wav</p>"), summary
    assert dom.count("<tr class=") == 3
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1400,2000", report.as_uri()],
        capture_output=True, timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 10_000


def test_analysis_groups_by_hyperparameter_and_plots(finished, tmp_path, capsys):
    import batch_ast
    from batch_ast.analysis import hyperparameter_effect

    df = batch_ast.load_index(finished)
    table = hyperparameter_effect(df, "content_weight", "style_distance_heldout")
    assert list(table.index) == [0.5, 4.3]  # the failed row (weight 1) is left out
    assert (table["count"] == 1).all() and table["mean"].notna().all()
    with pytest.raises(KeyError, match="no column 'nope'"):
        hyperparameter_effect(df, "nope", "final_style")
    out = tmp_path / "effect.png"
    assert main(["analyse", str(finished), "--param", "content_weight", "--metric", "content_distance", "-o", str(out)]) == 0
    assert "content_distance" not in capsys.readouterr().err
    assert out.stat().st_size > 5000
    # a categorical hyperparameter plots by category (it crashed converting "lbfgs" to float)
    by_optimizer = tmp_path / "optimizer.png"
    assert main(["analyse", str(finished), "--param", "optimizer", "-o", str(by_optimizer)]) == 0
    assert by_optimizer.stat().st_size > 5000
    # integers stay integers with a failed row among them; text settings are categoricals
    assert str(df["iterations_run"].dtype) == "Int64" and df["iterations_run"].isna().any()
    assert all(str(df[c].dtype) == "category" for c in ("optimizer", "activation", "precision", "style_form"))
