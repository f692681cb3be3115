"""Benchmarks, shared: the result row, the timing helpers and the signals every section uses."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from batch_ast.features import use_precision

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    """One row of the benchmark table: a measured ``value`` and, where it is a comparison, the
    ``reference`` measured in the same run and their ``ratio``; ``details`` (curves, stage splits)
    go to the JSON only."""

    section: str
    case: str
    value: float
    unit: str
    reference: float | None = None
    ratio: float | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in TABLE_COLUMNS}
        return {**row, **self.details}


def sync_device(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def on_device(device: torch.device, a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


DEMO = REPO / "manifests" / "audio"


# the clips beside the checkout (../shared/audio); BATCH_AST_SHARED_AUDIO points elsewhere (a GPU
# machine gets only the repository, so benchmarks/gpu-check.sh carries the clips it needs)
SHARED = Path(os.environ.get("BATCH_AST_SHARED_AUDIO", REPO.parent / "shared" / "audio"))


def best_time(device: torch.device, fn: Callable[[], Any], repeat: int = 3, warmup: int = 1) -> float:
    """Best-of-`repeat` seconds of fn() (best, not mean: the least disturbed by other load)."""
    for _ in range(warmup):
        fn()
    sync_device(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync_device(device)
        best = min(best, time.perf_counter() - t0)
    return best


def synthetic_signal(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Real audio of the requested length: demo clips looped (no synthetic stand-ins)."""
    import librosa

    clips = [librosa.load(DEMO / f, sr=sample_rate)[0] for f in ("harp_harmony.wav", "speech_gettysburg.wav")]
    clip = np.concatenate(clips[seed % 2 :] + clips[: seed % 2])
    reps = int(np.ceil(seconds * sample_rate / len(clip)))
    return np.tile(clip, reps)[: int(seconds * sample_rate)].astype(np.float32)


def matmul_flops(
    device: torch.device, sizes: tuple[int, ...] = (1024, 2048, 4096), precision: str = "float32"
) -> float:
    """The machine's own float32 matmul rate (FLOP/s): the best over square sizes, best of 5 each.
    The physical reference for the optimisation step. On CUDA, ``precision`` picks IEEE float32
    or TF32 tensor cores (the setting is global, so it is set here each time)."""
    use_precision(precision, device)
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        best = max(best, 2 * n**3 / best_time(device, lambda a=a, b=b: a @ b, repeat=5))
    use_precision("float32", device)
    return best


TABLE_COLUMNS = ("section", "case", "value", "unit", "reference", "ratio", "note")


def print_table(rows: list[Result]) -> None:
    print(f"{'section':<12} {'case':<58} {'value':>12} {'ratio':>8}  unit / note")
    for r in rows:
        ratio = f"{r.ratio:>8.3f}" if r.ratio is not None else f"{'-':>8}"
        print(f"{r.section:<12} {r.case:<58} {r.value:>12.4g} {ratio}  {r.unit}; {r.note}")
