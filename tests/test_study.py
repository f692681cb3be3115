"""Study YAML (sweep specs): expansion, row ids equal to the CSV's, clear errors, the CLI."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from batch_ast.cli import main
from batch_ast.config import load_config
from batch_ast.manifest import ManifestError
from batch_ast.plan import make_plan
from batch_ast.store import ResultsRoot
from batch_ast.study import StudyError, load_rows, study_csv, study_rows

from .conftest import REPO, write_manifest


def write_study(folder: Path, text: str, name: str = "study.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def planned_ids(manifest: Path, results: Path) -> list[str]:
    plan = make_plan(load_rows(manifest, load_config()), ResultsRoot(results), manifest)
    return [spec.id for spec in plan.to_run]


def test_a_study_expands_pairs_presets_seeds_and_grid_in_order(audio_dir):
    study = write_study(audio_dir, (
        "contents: ['content*.wav']\n"  # a glob: content.wav, content2.wav (sorted)
        "styles: style.wav\n"
        "presets: [quick]\nseeds: [0, 1]\n"
        "grid: {content_weight: [0.5, 5], n_filters: 64}\n"
        "set: {iterations: 3}\n"
    ))
    rows = study_rows(study)
    assert len(rows) == 2 * 1 * 2 * 2
    assert [Path(r["content"]).name for r in rows[:4]] == ["content.wav"] * 4
    assert [(r["seed"], r["content_weight"]) for r in rows[:4]] == [(0, 0.5), (0, 5), (1, 0.5), (1, 5)]
    assert all(r["iterations"] == 3 and r["n_filters"] == 64 and r["preset"] == "quick" for r in rows)
    # default names say what varies
    assert rows[0]["id"] == "content+style seed=0 content_weight=0.5"
    assert all(Path(r["content"]).is_absolute() for r in rows)
    zipped = write_study(
        audio_dir,
        "contents: [content.wav, content2.wav]\nstyles: [style.wav, content.wav]\npair: zip\n"
        "name: '{content} in the style of {style}'\n",
        "zip.yaml",
    )
    assert [r["id"] for r in study_rows(zipped)] == [
        "content in the style of style",
        "content2 in the style of content",
    ]


def test_study_rows_have_the_ids_of_the_equal_csv_rows_and_a_new_grid_value_adds_only_its_rows(
    audio_dir, tmp_path
):
    grid = ("contents: content.wav\nstyles: [style.wav]\nset: {{n_filters: 64, sample_rate: 8000}}\n"
            "grid: {{content_weight: [{}]}}\n")
    study = write_study(audio_dir, grid.format("0.5, 5"))
    csv_manifest = write_manifest(
        audio_dir, ["content.wav,style.wav,64,8000,0.5", "content.wav,style.wav,64,8000,5"],
        header="content,style,n_filters,sample_rate,content_weight",
    )
    results = tmp_path / "results"
    assert planned_ids(study, results) == planned_ids(csv_manifest, results)
    # expand -o writes that CSV (paths relative to it), which plans to the same ids
    out = tmp_path / "elsewhere" / "study.csv"
    assert main(["expand", str(study), "-o", str(out)]) == 0
    assert planned_ids(out, results) == planned_ids(study, results)
    assert not Path(next(csv.DictReader(io.StringIO(out.read_text())))["content"]).is_absolute()
    bigger = write_study(audio_dir, grid.format("0.5, 5, 50"), "bigger.yaml")
    old, new = set(planned_ids(study, results)), planned_ids(bigger, results)
    assert old < set(new) and len(set(new) - old) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("contents: a.wav\n", "missing 'styles'"),
        ("contents: a.wav\nstyles: b.wav\ngrdi: {}\n", "unknown key(s) 'grdi'"),
        ("contents: 'nothing*.wav'\nstyles: style.wav\n", "'nothing*.wav' matches no file"),
        (
            "contents: [content.wav, content2.wav]\nstyles: style.wav\npair: zip\n",
            "as many contents as styles, got 2 and 1",
        ),
        ("contents: content.wav\nstyles: style.wav\npair: all\n", "'pair' must be one of product, zip"),
        (
            "contents: content.wav\nstyles: style.wav\ngrid: {content_wieght: [1, 2]}\n",
            "unknown hyperparameter 'content_wieght'",
        ),
        ("contents: content.wav\nstyles: style.wav\ngrid: {lr: []}\n", "'grid: lr' is an empty list"),
        (
            "contents: content.wav\nstyles: style.wav\nset: {lr: [1, 2]}\n",
            "takes one value (use grid: for several)",
        ),
        (
            "contents: content.wav\nstyles: style.wav\nseed: 1\nseeds: [1, 2]\n",
            "give 'seed' or 'seeds', not both",
        ),
        ("contents: content.wav\nstyles: style.wav\nname: '{colour}'\n", "cannot be filled"),
        ("- a list\n", "must be a YAML mapping"),
    ],
)
def test_bad_studies_say_what_is_wrong(audio_dir, text, message):
    study = write_study(audio_dir, text)
    with pytest.raises(StudyError, match=re.escape(message)):
        study_csv(study)


def test_submit_takes_a_study_and_reports_its_rows_problems_like_a_manifest(audio_dir, tmp_path, capsys):
    study = write_study(
        audio_dir, "contents: [content.wav, missing.wav]\nstyles: style.wav\ngrid: {lr: [1, -2]}\n"
    )
    with pytest.raises(ManifestError) as caught:
        load_rows(study, load_config())
    text = str(caught.value)
    assert "study.yaml" in text and "missing.wav" in text and "'lr'" in text
    assert main(["submit", str(study), "--results", str(tmp_path / "r"), "--dry-run"]) == 2
    good = write_study(
        audio_dir, "contents: content.wav\nstyles: style.wav\ngrid: {content_weight: [1, 2]}\n", "good.yaml"
    )
    assert main(["submit", str(good), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    assert "2 to run" in capsys.readouterr().out


def test_the_bundled_study_expands_to_twelve_named_rows():
    rows = study_rows(REPO / "manifests" / "study.yaml")
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    assert all(Path(r["content"]).is_file() and Path(r["style"]).is_file() for r in rows)
