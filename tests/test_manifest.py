"""Manifest and config validation: every bad input gets an error naming row, column and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_ast.config import ConfigError, load_config
from batch_ast.manifest import ManifestError, load_manifest
from batch_ast.study import load_rows

from .conftest import write_manifest


@pytest.fixture
def config():
    return load_config()


def problems(path: Path, config) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, config)
    return info.value.problems


def test_valid_manifest_resolves_paths_presets_and_overrides(audio_dir, config):
    m = write_manifest(
        audio_dir,
        ["content.wav,style.wav,,", f"{audio_dir / 'content2.wav'},style.wav,quick,0.5"],
        header="content,style,preset,lr",
    )
    rows = load_manifest(m, config)
    assert [r.row for r in rows] == [1, 2]
    assert rows[0].content == audio_dir / "content.wav"
    assert rows[0].params.n_filters == config.defaults["n_filters"]
    assert rows[1].params.n_filters == config.presets["quick"]["n_filters"]
    assert rows[1].params.lr == 0.5 and rows[0].params.lr == config.defaults["lr"]


def test_bom_whitespace_and_case_are_tolerated(audio_dir, config):
    m = audio_dir / "bom.csv"
    m.write_text("\ufeff Content , STYLE ,id\n content.wav , style.wav , a b \n", encoding="utf-8")
    (row,) = load_manifest(m, config)
    assert row.name == "a b" and row.style == audio_dir / "style.wav"


@pytest.mark.parametrize(
    "header,row,expected",
    [
        ("content,style,colour", "content.wav,style.wav,red", "unknown column 'colour'"),
        ("content,style", "missing.wav,style.wav", "row 1 (line 2): column 'content'"),
        ("content,style,lr", "content.wav,style.wav,fast", "column 'lr': expected a number, got 'fast'"),
        ("content,style,lr", "content.wav,style.wav,-1", "column 'lr': must be a number > 0"),
        ("content,style,lr", "content.wav,style.wav,nan", "expected a finite float32 number"),
        ("content,style,content_weight", "content.wav,style.wav,inf", "expected a finite float32 number"),
        ("content,style,iterations", "content.wav,style.wav,2.5", "expected an integer"),
        ("content,style,n_fft", "content.wav,style.wav,0", "column 'n_fft': must be an integer in"),
        ("content,style,optimizer", "content.wav,style.wav,sgd", "must be one of lbfgs, adam, adamw"),
        ("content,style,device", "content.wav,style.wav,tpu", "column 'device'"),
        ("content,style,preset", "content.wav,style.wav,nope", "unknown preset 'nope'"),
        ("content,style,n_fft,hop_length", "content.wav,style.wav,256,512", "must be below n_fft 256"),
        ("content,style,n_fft,hop_length", "content.wav,style.wav,256,256", "hop_length 256 must be below"),
        ("content,style", "content.wav,", "column 'style' is empty"),
        ("content,style", "content.wav,style.wav,extra", "expected 2 fields, got 3"),
        ("content", "content.wav", "missing column(s) style"),
        ("content.wav,style.wav", "content.wav,style.wav", "is the header missing?"),
    ],
)
def test_bad_inputs_are_named(audio_dir, config, header, row, expected):
    found = problems(write_manifest(audio_dir, [row], header=header), config)
    assert any(expected in p for p in found), found


def test_all_problems_reported_at_once(audio_dir, config):
    m = write_manifest(
        audio_dir,
        ["nope1.wav,style.wav,1", "content.wav,nope2.wav,abc", "content.wav,style.wav,1"],
        header="content,style,lr",
    )
    found = problems(m, config)
    assert len(found) == 3
    assert found[0].startswith("row 1 (line 2)") and "nope1.wav" in found[0]
    assert found[1].startswith("row 2 (line 3)") and "nope2.wav" in found[1]
    assert found[2].startswith("row 2 (line 3)") and "'lr'" in found[2]


def test_empty_and_headless_manifests(audio_dir, config):
    empty = audio_dir / "empty.csv"
    empty.write_text("", encoding="utf-8")
    assert "manifest is empty" in problems(empty, config)[0]
    only_header = write_manifest(audio_dir, [])
    assert "no rows" in problems(only_header, config)[0]


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(bad)


def test_yaml_is_parsed_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("lr: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_yaml_overrides_defaults_and_adds_presets(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("lr: 0.25\noptimizer: ADAM\n")
    cfg = load_config(flat)
    assert cfg.defaults["lr"] == 0.25 and cfg.defaults["optimizer"] == "adam"
    sections = tmp_path / "sections.yaml"
    sections.write_text("defaults: {seed: 7}\npresets: {mine: {n_filters: 32}}\n")
    cfg = load_config(sections)
    assert cfg.defaults["seed"] == 7 and cfg.resolve({"preset": "mine"})["n_filters"] == 32
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("learning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown hyperparameter 'learning_rate'"):
        load_config(unknown)


def test_resource_columns_are_parsed_and_not_hyperparameters(audio_dir, config):
    m = write_manifest(
        audio_dir,
        ["content.wav,style.wav,30,1,", "content.wav,style.wav,x,,"],
        header="content,style,timeout_min,gpus,mem_gb",
    )
    found = problems(m, config)
    assert found == ["row 2 (line 3): column 'timeout_min': expected an integer >= 1, got 'x'"]
    m = write_manifest(
        audio_dir,
        ["content.wav,style.wav,30,1,", "content.wav,style.wav,,,4.5"],
        header="content,style,timeout_min,gpus,mem_gb",
    )
    rows = load_manifest(m, config)
    assert rows[0].resources == {"timeout_min": 30, "gpus": 1} and rows[1].resources == {"mem_gb": 4.5}
    assert "gpus" not in rows[0].params.to_dict()


def test_bundled_manifests_are_valid_and_keep_their_row_ids(config, tmp_path, capsys):
    """`batch-ast submit manifests/pairs.csv` (the design card's example) plans as written, and
    rows the demo also has keep their ids."""
    from batch_ast.cli import main

    repo = Path(__file__).resolve().parents[1]
    pairs = load_manifest(repo / "manifests" / "pairs.csv", config)
    assert len(pairs) == 7 and {r.params.preset for r in pairs} == {"quick"}
    assert (
        main(["submit", str(repo / "manifests" / "pairs.csv"), "--dry-run", "--results", str(tmp_path / "r")])
        == 0
    )
    out = capsys.readouterr().out
    assert "7 to run" in out and "[1176b45be15fc20d]" in out and "[5bd905c8820af76e]" in out  # as in demo.csv


def test_version_and_module_entry_point():
    import subprocess
    import sys

    import batch_ast

    done = subprocess.run([sys.executable, "-m", "batch_ast", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"batch-ast {batch_ast.__version__}"


def test_a_studys_bad_values_are_reported_once_at_their_yaml_line_with_the_rows_they_hit(audio_dir):
    """Not "row 1 (line 2)" of an expansion the user never saw, twelve times over."""
    study = audio_dir / "study.yaml"
    study.write_text("contents: [content.wav, content2.wav]\nstyles: [style.wav]\npreset: quik\n"
                     "grid:\n  content_weight: [0.1, -1, 10]\n")
    with pytest.raises(ManifestError) as exc:
        load_rows(study, load_config())
    assert exc.value.problems == [
        "column 'preset': unknown preset 'quik' (known: quick, student-adamw, tomczak-dafx18, ulyanov-tf) "
        "(line 3: preset: quik; all 6 rows)",
        "column 'content_weight': must be a number >= 0, got '-1' (line 5: content_weight: [0.1, -1, 10]; "
        "rows 2, 5 of 6)",
    ]


def test_the_cli_lists_a_manifest_s_problems_one_per_line_and_inert(audio_dir, tmp_path, capsys):
    """Every problem on a line of its own; a cell with a newline or an escape sequence in it
    cannot clear the screen or forge a line of the listing."""
    from batch_ast.cli import main

    m = audio_dir / "bad.csv"
    m.write_text('content,style\n"a\x1b[2Jb\nforged line.wav",missing.wav\n', encoding="utf-8")
    assert main(["submit", str(m), "--results", str(tmp_path / "r"), "--dry-run"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("error: ") and lines[0].endswith("bad.csv: 2 problem(s)")
    assert len(lines) == 3 and all(line.startswith("  row 1 (line 3): column '") for line in lines[1:])
    assert "\\x1b[2Jb\\nforged line.wav: file not found" in lines[1] and "\x1b" not in "".join(lines)
