"""Analysis over the index: a metric per group of rows (n, mean, spread, confidence), as a table
and a plot, for the question a study is run to answer ("which content weight gives the lowest style
distance, averaged over seeds, per preset")."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .index import load_index
from .record import DEFAULT_METRIC
from .store import write_atomic

SUMMARY_COLUMNS = ("n", "mean", "std", "sem", "ci_low", "ci_high")


def group_columns(by: str | Sequence[str] | None) -> list[str]:
    """The columns ``by`` names: one, a list, or "a,b" (each may hold commas); ``config`` for None."""
    if by is None:
        return ["config"]
    names = [by] if isinstance(by, str) else list(by)
    out = [part.strip() for name in names for part in str(name).split(",") if part.strip()]
    if not out:
        raise KeyError("by: name at least one column to group by")
    return out


def analyse(data: pd.DataFrame | str | os.PathLike[str], by: str | Sequence[str] | None = None,
            metric: str = DEFAULT_METRIC, *, confidence: float = 0.95, status: str | None = "ok",
            ) -> pd.DataFrame:
    """``metric`` summarised per group of rows: one row per distinct value of the ``by`` columns,
    with ``n``, ``mean``, ``std`` (sample), ``sem`` and the ``confidence`` interval of the mean
    (``ci_low``, ``ci_high``; Student's t, so honest for the few seeds a study runs). A group of
    one row has no spread: its std, sem and interval are NaN.

    ``data`` is ``load_index``'s frame or a results root. ``by`` is a column or several (a list, or
    "a,b"); by default ``config``, each row's configuration less its seed, so the default averages
    over seeds. Only rows of ``status`` count (None: all) and only those with a value of ``metric``.
    Groups are sorted by ``by``; the result is a flat frame, so ``t.loc[t.groupby("preset")
    ["mean"].idxmin()]`` picks the best group per preset.
    """
    from scipy import stats  # import cost: only when a table is made

    if not isinstance(data, pd.DataFrame):
        data = load_index(data)
    columns = group_columns(by)
    for column in (*columns, metric):
        if column not in data.columns:
            raise KeyError(f"no column {column!r} in the index (columns: {', '.join(data.columns)})")
    if not pd.api.types.is_numeric_dtype(data[metric]) or pd.api.types.is_bool_dtype(data[metric]):
        numeric = [c for c in data.columns if pd.api.types.is_float_dtype(data[c])]
        raise KeyError(f"metric {metric!r} is not a numeric column (numeric: {', '.join(numeric)})")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence!r}")
    rows = data if status is None else data[data["status"] == status]
    values = rows[metric].astype("Float64").astype(float)
    values = values.where(np.isfinite(values))
    grouped = values.groupby([rows[c] for c in columns], observed=True, sort=True, dropna=False)
    table = grouped.agg(n="count", mean="mean", std="std")
    table = table[table["n"] > 0]
    table["n"] = table["n"].astype(int)
    table["sem"] = table["std"] / np.sqrt(table["n"])
    half = stats.t.ppf(0.5 + confidence / 2, (table["n"] - 1).clip(lower=1)) * table["sem"]
    table["ci_low"] = table["mean"] - half
    table["ci_high"] = table["mean"] + half
    return table.reset_index()[[*columns, *SUMMARY_COLUMNS]]


def plot_effect(table: pd.DataFrame, by: list[str], metric: str, path: str | Path, log_x: bool = True,
                ) -> Path:
    """An ``analyse`` table as a PNG (written atomically): the metric's mean against the first
    ``by`` column with its confidence interval as error bars, one line per value of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name, others = by[0], by[1:]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    numeric = pd.api.types.is_numeric_dtype(table[x_name])  # e.g. lr; optimizer or preset are not
    categories = [] if numeric else sorted(table[x_name].astype(str).unique())
    series = table.groupby(others, observed=True, sort=True) if others else [((), table)]
    for key, part in series:
        part = part.sort_values(x_name)
        x = (part[x_name].astype(float) if numeric
             else [categories.index(v) for v in part[x_name].astype(str)])
        label = " ".join(f"{name}={value}" for name, value in
                         zip(others, key if isinstance(key, tuple) else (key,), strict=True)) or None
        error = [(part["mean"] - part["ci_low"]).fillna(0), (part["ci_high"] - part["mean"]).fillna(0)]
        ax.errorbar(x, part["mean"], yerr=error, marker="o", capsize=3, label=label,
                    linestyle="-" if numeric else "none")
    if not numeric:
        ax.set_xticks(range(len(categories)), categories)
    elif log_x and (table[x_name].astype(float) > 0).all():
        ax.set_xscale("log")
    if others:
        ax.legend(fontsize=8, title=" ".join(others), title_fontsize=8)
    ax.set_xlabel(x_name)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {', '.join(by)} (mean and confidence interval, ok rows)", fontsize=9)
    ax.grid(alpha=0.3)
    path = Path(path)
    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=90))
    plt.close(fig)
    return path
