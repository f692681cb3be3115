"""Per-row figures: content / style / output log-spectrograms on one colour scale, and loss curves.

Written by the job (the arrays are already in memory there, and the work spreads over the
cluster); matplotlib's Agg backend needs no display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .store import write_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def spectrogram_figure(
    path: Path,
    spectrograms: dict[str, np.ndarray],
    sample_rate: int,
    hop_length: int,
    title: str = "",
    beats: dict[str, list[float]] | None = None,
    root: Path | None = None,
) -> None:
    """Side-by-side log1p|STFT| panels (bins, frames) sharing one colour scale; ``beats`` (seconds
    per panel name) are drawn as vertical lines (the grid a beat-segmented row followed)."""
    plt = _pyplot()
    vmax = max(float(np.max(s)) for s in spectrograms.values()) or 1.0
    fig, axes = plt.subplots(
        1, len(spectrograms), figsize=(4.2 * len(spectrograms), 3.6), sharey=True, constrained_layout=True
    )
    image = None
    for ax, (name, spec) in zip(np.atleast_1d(axes), spectrograms.items(), strict=True):
        seconds = spec.shape[1] * hop_length / sample_rate
        image = ax.imshow(
            spec,
            origin="lower",
            aspect="auto",
            vmin=0.0,
            vmax=vmax,
            cmap="magma",
            extent=(0.0, seconds, 0.0, sample_rate / 2000.0),
        )
        for t in (beats or {}).get(name, []):
            ax.axvline(t, color="white", alpha=0.45, linewidth=0.7)
        ax.set_title(name)
        ax.set_xlabel("time (s)")
    np.atleast_1d(axes)[0].set_ylabel("frequency (kHz)")
    fig.colorbar(image, ax=list(np.atleast_1d(axes)), label="log(1 + |STFT|)")
    if title:
        fig.suptitle(title, fontsize=9)
    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=80), root)
    plt.close(fig)


def loss_figure(path: Path, trace: list[tuple[int, float, float, float]], title: str = "",
                root: Path | None = None) -> None:
    """Total, content and style loss per iteration on a log y-axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    if trace:
        data = np.asarray(trace, dtype=float)
        for column, label in ((1, "total"), (2, "content"), (3, "style")):
            values = np.where(data[:, column] > 0, data[:, column], np.nan)  # log axis: hide zeros
            ax.plot(data[:, 0], values, label=label)
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=80), root)
    plt.close(fig)
