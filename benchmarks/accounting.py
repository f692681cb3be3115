"""Benchmarks, accounting: what measuring a row's usage costs the row, and how the memory estimate
behind ``max_memory_gb`` compares with what whole rows really used (their ``peak_rss_bytes``)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import soundfile as sf
import torch

from batch_ast import usage
from batch_ast.config import load_config
from batch_ast.features import stft_frames
from batch_ast.transfer import estimate_memory_bytes
from benchmarks.common import DEMO, REPO, Result, synthetic_signal
from benchmarks.pipeline import row_record

QUICK_PAIR = (DEMO / "speech_gettysburg.wav", DEMO / "boogie_marabi.wav")


class TimedLedger(usage.UsageLedger):
    """The real ledger, with the time spent in its calls (and its sampler's) added up."""

    spent_s = 0.0
    calls = 0

    def _timed(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            TimedLedger.spent_s += time.perf_counter() - t0
            TimedLedger.calls += 1

    def enter(self, *a: Any, **k: Any) -> None:
        return self._timed(super().enter, *a, **k)

    def assign(self, *a: Any, **k: Any) -> None:
        return self._timed(super().assign, *a, **k)

    def so_far(self, *a: Any, **k: Any) -> dict[str, float]:
        return self._timed(super().so_far, *a, **k)

    def optimising(self, *a: Any, **k: Any) -> None:
        return self._timed(super().optimising, *a, **k)

    def leave(self, *a: Any, **k: Any) -> dict[str, Any]:
        return self._timed(super().leave, *a, **k)

    def drop(self, *a: Any, **k: Any) -> None:
        return self._timed(super().drop, *a, **k)

    def sample(self) -> None:
        return self._timed(super().sample)


class NoLedger:
    """Accounting switched off: the reference a row's time is compared with."""

    def enter(self, key: str) -> None: ...
    def assign(self, key: str, device: str | None = None, carried: Any = None) -> None: ...
    def optimising(self, key: str, on: bool) -> None: ...
    def so_far(self, key: str) -> dict[str, float]:
        return {}
    def leave(self, key: str) -> dict[str, Any]:
        return {}
    def drop(self, key: str) -> None: ...


def bench_accounting_overhead(device: torch.device, pairs: int) -> list[Result]:
    """A ``quick`` row with accounting against the same row without it, alternated ``pairs`` times
    (medians), and the time spent inside the ledger's calls, measured directly."""
    timed = TimedLedger()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        row_record(device, *QUICK_PAIR, "quick", folder / "warm-up", iterations=2, griffin_lim_iters=2)
        with_s, without_s, inside = [], [], []
        for k in range(pairs):
            for on in (True, False):
                ledger = timed if on else NoLedger()
                TimedLedger.spent_s = 0.0
                with mock.patch("batch_ast.row.process_ledger", lambda ledger=ledger, **_: ledger):
                    record = row_record(device, *QUICK_PAIR, "quick", folder / f"{k}-{on}")
                (with_s if on else without_s).append(record["time_total_s"])
                if on:
                    inside.append(TimedLedger.spent_s / record["time_total_s"])
    with_s.sort(), without_s.sort(), inside.sort()
    median = len(with_s) // 2
    return [
        Result(section="cost", case="quick row: time inside the accounting calls", value=100 * inside[median],
               unit="% of the row's time", reference=1.0, ratio=inside[median] / 0.01,
               note=f"{TimedLedger.calls} calls in {pairs} row(s); median of {pairs}; target <= 1 %"),
        Result(section="cost", case="quick row with accounting vs without", value=with_s[median],
               unit="s per row (median)", reference=without_s[median],
               ratio=with_s[median] / without_s[median],
               note=f"with {', '.join(f'{t:.1f}' for t in with_s)} s; without "
                    f"{', '.join(f'{t:.1f}' for t in without_s)} s (L-BFGS runs differ by more than 1 % "
                    "under load: the direct measure above is the one to read)"),
    ]


def memory_row_child(device: torch.device, seconds: float, optimizer: str, out: str) -> None:
    """Fresh process: a tiny warm-up row, then one whole row at default settings (4096 filters) of
    ``seconds`` content with enough iterations to fill the L-BFGS history: its peak RSS beside the
    estimate."""
    p = load_config().params({"optimizer": optimizer, "lr": 0.1 if optimizer != "lbfgs" else 1.0})
    folder = Path(out).with_suffix("")
    folder.mkdir()
    pair = (folder / "content.wav", folder / "style.wav")
    for i, path in enumerate(pair):
        sf.write(path, synthetic_signal(seconds, p.sample_rate, i), p.sample_rate)
    # a tiny row first: what the first row of a process loads once (libraries, caches: ~200 MB
    # measured) is not the row's
    row_record(device, *pair, "quick", folder / "warm-up", iterations=2, griffin_lim_iters=2, max_seconds=1.0)
    status = Path("/proc/self/status").read_text().splitlines()
    base = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    record = row_record(device, *pair, "", folder / "row", optimizer=optimizer, max_seconds=seconds,
                        iterations=p.lbfgs_history + 2, patience=p.lbfgs_history + 2,
                        griffin_lim_iters=8, lr=0.1 if optimizer != "lbfgs" else 1.0)
    frames = stft_frames(int(seconds * p.sample_rate), p.hop_length)
    estimate = estimate_memory_bytes(p.n_fft // 2 + 1, frames, frames, p.replace(optimizer=optimizer))
    Path(out).write_text(json.dumps({"peak": record["peak_rss_bytes"], "base": base, "estimate": estimate,
                                     "scope": record["usage_scope"], "iterations": record["iterations_run"]}))


def bench_memory_estimate(device: torch.device, lengths: list[float]) -> list[Result]:
    """Whole rows' peak RSS above their process's size before the row, against
    ``estimate_memory_bytes`` (what ``max_memory_gb`` and right-sizing rely on)."""
    rows = []
    for seconds in lengths:
        for optimizer in ("lbfgs", "adam"):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "out.json"
                subprocess.run([sys.executable, "-m", "benchmarks.bench", "--device", device.type,
                                "--_memory_row", str(seconds), optimizer, str(out)], check=True, cwd=REPO)
                d = json.loads(out.read_text())
            used = d["peak"] - d["base"]
            rows.append(Result(
                section="cost", case=f"{seconds:g} s content, {optimizer}, default settings: whole row",
                value=used / 2**20, unit="MB peak RSS above the process before the row",
                reference=d["estimate"] / 2**20, ratio=used / d["estimate"],
                note=f"process peak {d['peak'] / 2**20:.0f} MB incl. {d['base'] / 2**20:.0f} MB before the "
                     f"row (interpreter, libraries, a warm-up row's); usage_scope {d['scope']}; "
                     f"{d['iterations']} iterations (L-BFGS history full); reference: estimate_memory_bytes",
            ))
    return rows
