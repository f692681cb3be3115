"""Analysis helpers over the index: how a hyperparameter moves a metric, as a table and a plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .store import write_atomic


def hyperparameter_effect(df: pd.DataFrame, param: str, metric: str) -> pd.DataFrame:
    """Mean, std and count of ``metric`` over the ok rows, grouped by ``param`` (sorted by param)."""
    for column in (param, metric):
        if column not in df.columns:
            raise KeyError(f"no column {column!r} in the index (columns: {', '.join(df.columns)})")
    if not pd.api.types.is_numeric_dtype(df[metric]) or pd.api.types.is_bool_dtype(df[metric]):
        numeric = [c for c in df.columns if pd.api.types.is_float_dtype(df[c])]
        raise KeyError(f"--metric {metric!r} is not a numeric column (numeric: {', '.join(numeric)})")
    ok = df[df["status"] == "ok"]
    table = ok.groupby(param, observed=True)[metric].agg(["mean", "std", "count"])
    return table.sort_index()


def plot_effect(table: pd.DataFrame, param: str, metric: str, path: str | Path, log_x: bool = True) -> Path:
    """Line plot with std error bars of a ``hyperparameter_effect`` table, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    numeric = pd.api.types.is_numeric_dtype(table.index)  # e.g. lr; optimizer or preset are not
    x = table.index.astype(float) if numeric else list(range(len(table)))
    ax.errorbar(x, table["mean"], yerr=table["std"].fillna(0), marker="o", capsize=3,
                linestyle="-" if numeric else "none")
    if not numeric:
        ax.set_xticks(x, [str(v) for v in table.index])
    elif log_x and (table.index.astype(float) > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {param} (mean ± std over ok rows)", fontsize=9)
    ax.grid(alpha=0.3)
    path = Path(path)
    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=90))
    plt.close(fig)
    return path
