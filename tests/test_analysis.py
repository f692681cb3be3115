"""``batch_ast.analyse`` and the index's derived columns (``content_name``, ``style_name``,
``config``): the pandas path from a study to its answer, on frames whose statistics are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import batch_ast
from batch_ast.cli import main
from batch_ast.index import ONE_CONFIG, config_keys, varying_params, with_study_columns


def study_frame() -> pd.DataFrame:
    """Two presets x two content weights x three seeds, a failed row and a row without a metric."""
    rows = []
    for preset in ("quick", "paper"):
        for weight in (0.43, 4.3):
            for seed in (0, 1, 2):
                value = (1.0 if preset == "quick" else 2.0) + weight + seed * 0.5
                rows.append({"status": "ok", "preset": preset, "content_weight": weight, "seed": seed,
                             "optimizer": "lbfgs", "style_distance": value,
                             "content": f"/data/in/speech {preset}.wav", "style": "/data/blues.wav"})
    rows.append({**rows[0], "status": "failed", "style_distance": 100.0, "seed": 7})
    rows.append({**rows[1], "style_distance": float("nan"), "seed": 8})
    frame = pd.DataFrame(rows)
    frame["preset"] = frame["preset"].astype("category")
    return with_study_columns(frame)


def test_config_is_the_varying_hyperparameters_but_seed():
    df = study_frame()
    assert varying_params(df) == ["preset", "content_weight", "seed"]
    assert df["config"].iloc[0] == "preset=quick content_weight=0.43"
    assert df["config"].nunique() == 4  # the seeds of one configuration share its key
    assert df["content_name"].iloc[0] == "speech quick.wav" and df["style_name"].iloc[0] == "blues.wav"
    only_seeds = df[(df["preset"] == "quick") & (df["content_weight"] == 0.43)]
    assert set(config_keys(only_seeds)) == {ONE_CONFIG}
    missing = pd.DataFrame({"lr": [0.1, None], "seed": [0, 0]})
    assert list(config_keys(missing)) == ["lr=0.1", "lr=-"]


def test_analyse_gives_n_mean_std_sem_and_a_students_t_interval():
    df = study_frame()
    table = batch_ast.analyse(df, by=["preset", "content_weight"], metric="style_distance")
    assert list(table.columns) == ["preset", "content_weight", "n", "mean", "std", "sem", "ci_low", "ci_high"]
    quick = table[(table["preset"] == "quick") & (table["content_weight"] == 0.43)].iloc[0]
    # seeds 0, 1, 2 -> 1.43, 1.93, 2.43 (the failed row and the row without a value left out)
    assert quick["n"] == 3 and quick["mean"] == pytest.approx(1.93)
    assert quick["std"] == pytest.approx(0.5) and quick["sem"] == pytest.approx(0.5 / math.sqrt(3))
    t_975_2 = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (tables)
    assert quick["ci_high"] - quick["mean"] == pytest.approx(t_975_2 * 0.5 / math.sqrt(3))
    assert quick["mean"] - quick["ci_low"] == pytest.approx(t_975_2 * 0.5 / math.sqrt(3))
    assert len(table) == 4 and (table["n"] == 3).all()
    wide = batch_ast.analyse(df, by="preset,content_weight", metric="style_distance", confidence=0.99)
    assert (wide["ci_high"] > table["ci_high"]).all()
    everything = batch_ast.analyse(df, by="preset", metric="style_distance", status=None)
    assert everything.set_index("preset").loc["quick", "n"] == 7  # the failed row counts too
    # the question the README answers: the best content weight per preset, averaged over seeds
    best = table.loc[table.groupby("preset", observed=True)["mean"].idxmin()]
    assert dict(zip(best["preset"], best["content_weight"], strict=True)) == {"quick": 0.43, "paper": 0.43}


def test_analyse_defaults_to_the_configuration_and_says_what_is_wrong():
    df = study_frame()
    table = batch_ast.analyse(df, metric="style_distance")
    assert list(table.columns[:2]) == ["config", "n"] and (table["n"] == 3).all()
    one = batch_ast.analyse(df[df["seed"] == 0], metric="style_distance", by="preset")
    assert (one["n"] == 2).all() and one["std"].notna().all()
    single = batch_ast.analyse(df[(df["seed"] == 0) & (df["preset"] == "quick")], by="content_weight",
                               metric="style_distance")
    assert (single["n"] == 1).all() and single[["std", "sem", "ci_low", "ci_high"]].isna().all().all()
    with pytest.raises(KeyError, match="no column 'nope'"):
        batch_ast.analyse(df, by="nope", metric="style_distance")
    with pytest.raises(KeyError, match="not a numeric column"):
        batch_ast.analyse(df, by="preset", metric="optimizer")
    with pytest.raises(ValueError, match="confidence"):
        batch_ast.analyse(df, by="preset", metric="style_distance", confidence=95)
    inf = df.assign(style_distance=np.where(df["seed"] == 2, np.inf, df["style_distance"]))
    assert (batch_ast.analyse(inf, by="config", metric="style_distance")["n"] == 2).all()


def test_the_analyse_command_groups_by_several_columns(tmp_path, capsys, monkeypatch):
    df = study_frame()
    monkeypatch.setattr("batch_ast.index.load_index", lambda root: df)  # the command imports it when run
    monkeypatch.setattr("batch_ast.cli.ResultsRoot.require_results_root", lambda self: None)
    out = tmp_path / "effect.png"
    assert main(["analyse", str(tmp_path), "--param", "content_weight,preset", "--metric", "style_distance",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "by content_weight, preset" in text and "ci_high" in text and out.stat().st_size > 5000
    assert main(["analyse", str(tmp_path), "--param", "preset", "--param", "content_weight",
                 "--metric", "style_distance"]) == 0
    assert "by preset, content_weight" in capsys.readouterr().out
    assert main(["analyse", str(tmp_path), "--metric", "style_distance"]) == 0
    text = capsys.readouterr().out
    assert "config: preset content_weight (the varying hyperparameters but seed)" in text
    assert "preset=paper content_weight=4.3" in text
    assert main(["analyse", str(tmp_path), "--param", "preset,nope"]) == 2
    assert "no column 'nope'" in capsys.readouterr().err
