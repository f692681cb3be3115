"""What a study cost, from the index: core-hours, GPU-hours and peak memory per group of rows, and
what the next study's jobs will probably need (right-sizing a profile from the last study).

Pure functions of the index's DataFrame (``load_index``); rows written before 0.5, without usage
figures, count as rows but not in the sums (``measured`` says how many were). ``status``, the
report and ``submit --dry-run`` print these tables; ``batch_ast.cost(df)`` returns them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from .progress import duration

GIB = 2**30
JOB_COLUMNS = ["slurm_job_id", "slurm_array_task_id"]
FINISHED = ("ok", "failed")
SIMILAR_LENGTH = 1.25  # an earlier row sizes a planned one when its content is within this factor
MIN_HISTORY = 3  # rows needed before a p95 means anything
OVER_REQUEST = 4.0  # a request this many times the need is called oversized


def _numeric(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df.columns:
        return pd.Series(float("nan"), index=df.index)
    return pd.to_numeric(df[column], errors="coerce").astype("float64")


def _group_columns(df: pd.DataFrame, by: str | Sequence[str] | None) -> list[str]:
    if by is None:
        return []
    names = JOB_COLUMNS if by == "job" else [by] if isinstance(by, str) else list(by)
    missing = [name for name in names if name not in df.columns]
    if missing:
        raise KeyError(f"no column(s) {missing} in the index (by='job' groups by SLURM job and task)")
    return names


def cost(df: pd.DataFrame, by: str | Sequence[str] | None = "preset") -> pd.DataFrame:
    """A study's cost per group of finished rows (``by``: a column, columns, "job" for one line
    per SLURM array task, or None for the whole study).

    Columns: ``rows`` finished, ``measured`` (with usage figures), ``core_hours`` (CPU time, user +
    system), ``gpu_hours`` (seconds rows held a GPU), ``wall_hours`` (the rows' shares of their
    processes' time, requeues included), the peak
    resident memory's ``peak_rss_gib_p50/p95/max``, ``device_peak_gib_max``, and where SLURM's
    grant is known ``alloc_core_hours`` (the job's CPUs × the row's ``wall_s`` ÷ the row processes
    sharing them) with ``cpu_efficiency``, the core-hours of those rows over their grant's."""
    columns = _group_columns(df, by)
    rows = df[df["status"].isin(FINISHED)] if "status" in df.columns else df
    frame = pd.DataFrame({
        "cpu_s": _numeric(rows, "cpu_s"),
        "device_s": _numeric(rows, "device_s"),
        # a row's share of its process's time over all its runs; time_total_s (the last run only)
        # for rows written before usage figures
        "wall_s": _numeric(rows, "wall_s").fillna(_numeric(rows, "time_total_s")),
        "rss": _numeric(rows, "peak_rss_bytes") / GIB,
        "device_peak": _numeric(rows, "device_peak_bytes") / GIB,
    }, index=rows.index)
    frame["alloc_cpu_s"] = (_numeric(rows, "alloc_cpus") * frame["wall_s"]
                            / _numeric(rows, "alloc_rows").fillna(1).clip(lower=1))
    frame["granted_cpu_s"] = frame["cpu_s"].where(frame["alloc_cpu_s"].notna())  # efficiency: like for like
    keys = ([rows[c].astype(object).fillna("").astype(str).rename(c) for c in columns]
            or [pd.Series("all", rows.index)])
    grouped = frame.groupby(keys, observed=True, sort=True)
    table = pd.DataFrame({
        "rows": grouped.size(),
        "measured": grouped["cpu_s"].count(),
        "core_hours": grouped["cpu_s"].sum(min_count=1) / 3600,
        "gpu_hours": grouped["device_s"].sum(min_count=1) / 3600,
        "wall_hours": grouped["wall_s"].sum(min_count=1) / 3600,
        "peak_rss_gib_p50": grouped["rss"].quantile(0.5),
        "peak_rss_gib_p95": grouped["rss"].quantile(0.95),
        "peak_rss_gib_max": grouped["rss"].max(),
        "device_peak_gib_max": grouped["device_peak"].max(),
        "alloc_core_hours": grouped["alloc_cpu_s"].sum(min_count=1) / 3600,
    })
    table["cpu_efficiency"] = grouped["granted_cpu_s"].sum(min_count=1) / 3600 / table["alloc_core_hours"]
    if not columns:
        table.index = pd.Index(["all"], name="study") if len(table) else pd.Index([], name="study")
    return table


def format_cost(table: pd.DataFrame) -> list[str]:
    """``cost``'s table as the lines ``status`` prints (one per group)."""
    lines = []
    for key, row in table.iterrows():
        label = (" / ".join(str(k) or "-" for k in key) if isinstance(key, tuple)
                 else str(key) or "(no preset)")
        if not row["measured"]:
            lines.append(f"  {label}: {int(row['rows'])} row(s), none with usage figures "
                         "(written before 0.5)")
            continue
        gpu = f", {row['gpu_hours']:.3g} GPU-h" if row["gpu_hours"] > 0 else ""
        lines.append(
            f"  {label}: {int(row['measured'])} row(s): {row['core_hours']:.3g} core-h{gpu}, "
            f"{row['wall_hours']:.3g} h wall; peak memory p50 {row['peak_rss_gib_p50']:.2f} / "
            f"p95 {row['peak_rss_gib_p95']:.2f} / max {row['peak_rss_gib_max']:.2f} GiB"
        )
    return lines


def preset_totals(df: pd.DataFrame) -> pd.DataFrame:
    """``cost`` per preset, with the study's total as a last row ("all") when there are several
    presets: what ``status`` and the report show."""
    if "preset" not in df.columns:
        df = df.assign(preset="")
    table = cost(df, "preset")
    return pd.concat([table, cost(df, None)]) if len(table) > 1 else table


def cost_lines(records: list[dict]) -> list[str]:
    """What ``status`` prints of a submission's finished rows (flattened records)."""
    if not records:
        return []
    lines = format_cost(preset_totals(pd.DataFrame(records)))
    return ["  cost (measured in the jobs; core-h = CPU time):", *["  " + line for line in lines]]


# --- right-sizing the next study -----------------------------------------------------------------

@dataclass(frozen=True)
class RowNeed:
    """What earlier similar rows needed (p95 over ``rows`` finished rows)."""

    rows: int
    peak_rss_bytes: float
    wall_s: float


def similar_rows(history: pd.DataFrame, preset: str, content_seconds: float | None) -> pd.DataFrame:
    """Finished rows with usage figures of the same preset whose content length is within
    ``SIMILAR_LENGTH`` of ``content_seconds`` (any length when that is unknown)."""
    if "peak_rss_bytes" not in history.columns or history.empty:
        return history.iloc[0:0]
    rows = history[history["status"].isin(FINISHED) & history["peak_rss_bytes"].notna()
                   & (history["preset"].astype(object).fillna("") == preset)]
    if content_seconds and content_seconds > 0:
        seconds = _numeric(rows, "content_seconds")
        low, high = content_seconds / SIMILAR_LENGTH, content_seconds * SIMILAR_LENGTH
        rows = rows[(seconds >= low) & (seconds <= high)]
    return rows


def row_need(history: pd.DataFrame, preset: str, content_seconds: float | None) -> RowNeed | None:
    """The p95 peak memory and wall time of similar earlier rows; None with fewer than
    ``MIN_HISTORY`` of them."""
    rows = similar_rows(history, preset, content_seconds)
    if len(rows) < MIN_HISTORY:
        return None
    return RowNeed(len(rows), float(_numeric(rows, "peak_rss_bytes").quantile(0.95)),
                   float(_numeric(rows, "time_total_s").quantile(0.95)))


@dataclass(frozen=True)
class JobNeed:
    """What one job of a planned submission will probably need, and what its request says."""

    label: str
    need: RowNeed
    memory_bytes: float  # the job's row processes at their p95 peaks at once
    time_s: float  # its rows, one process's share after another, at their p95 wall time
    requested_memory_bytes: float | None
    requested_time_s: float | None

    def describe(self) -> str:
        return (f"  {self.label}: p95 of {self.need.rows} earlier row(s): "
                f"{self.need.peak_rss_bytes / GIB:.2f} GiB, "
                f"{duration(self.need.wall_s)} per row; per job ~{self.memory_bytes / GIB:.2f} GiB, "
                f"~{duration(self.time_s)}")

    def suggested(self) -> dict[str, int]:
        """Profile values with headroom over the p95 need: mem_gb (+25 %, whole GiB) and
        timeout_min (+50 %, at least 5 minutes: a job also starts Python and torch)."""
        return {"mem_gb": max(1, math.ceil(1.25 * self.memory_bytes / GIB)),
                "timeout_min": max(5, math.ceil(1.5 * self.time_s / 60))}

    def warnings(self) -> list[str]:
        """A line where the request is below the p95 need, or far above it (over ``OVER_REQUEST``
        times, and by more than a slack that no one would trim: 1 GiB, 15 minutes)."""
        out = []
        suggested = self.suggested()
        for what, asked, need, slack, key in (
            ("memory", self.requested_memory_bytes, self.memory_bytes, GIB, "mem_gb"),
            ("time", self.requested_time_s, self.time_s, 900.0, "timeout_min"),
        ):
            if asked is None or need <= 0:
                continue
            shown = (lambda v: f"{v / GIB:.2f} GiB") if what == "memory" else duration
            hint = f"(suggested: {key}: {suggested[key]})"
            if asked < need:
                outcome = ("killed for memory" if what == "memory"
                           else "stopped at the time limit (then requeued)")
                out.append(f"{self.label}: the jobs ask for {shown(asked)} of {what}, below the "
                           f"~{shown(need)} their rows needed before (p95): they may be {outcome} {hint}")
            elif asked > OVER_REQUEST * need and asked - need > slack:
                out.append(f"{self.label}: the jobs ask for {shown(asked)} of {what}, over "
                           f"{OVER_REQUEST:g}x the ~{shown(need)} their rows needed before (p95): "
                           f"smaller requests queue sooner {hint}")
        return out


def job_need(label: str, need: RowNeed, rows_per_job: int, processes: int,
             requested_memory_bytes: float | None, requested_time_s: float | None) -> JobNeed:
    """A job of ``rows_per_job`` rows in ``processes`` row processes, from one row's need."""
    processes = max(1, min(processes, rows_per_job))
    return JobNeed(label, need, processes * need.peak_rss_bytes,
                   math.ceil(rows_per_job / processes) * need.wall_s, requested_memory_bytes,
                   requested_time_s)


