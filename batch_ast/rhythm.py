"""Rhythmic constraint of Tomczak, Southall & Hockman (DAFx 2018): beat-segmented losses.

The other input is warped in time onto one input's beat grid (``beat_grid``: the style input B by
default): beats are paired by their position from the start, and each beat segment of the other is
stretched onto its partner.
The output is then optimised in **one** piece over the grid input's whole length: one conv over
the whole output (features at segment borders see their true neighbours), and per segment i a
content term against segment i of each content target and a Gram term against segment i of each
style target, so the output's texture follows the style segment by segment and its rhythm the
grid. (The paper optimised each segment on its own; with a 16-frame kernel a ~21-frame beat left
~6 feature frames per segment, and every evaluation still read the whole network for them.)

The authors used madmom's RNN downbeat tracker; madmom does not install on current Pythons, so
librosa's beat tracker stands in, with a tempo hint (``bpm``), a tempo-consistency check between the
two inputs (octave errors: 60/120/240), and the grid extended to both ends by the median beat period
(librosa drops weak first and last beats), so that the pre-roll and the tail are segments too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .features import TransferError
from .losses import StyleTargets, content_loss, style_form_for, style_terms
from .transfer import StyleTransfer

OCTAVE_TOLERANCE = 0.08  # |log2(tempo ratio) - k| below this is an octave error (~6 %)
MIN_COVERAGE = 0.9  # an output shorter than this share of the grid input fails its row


# Beats are tracked at a quarter of the row's hop (5.8 ms at 22.05 kHz, hop 512): whole STFT frames
# (23 ms) put the two inputs' beats up to a frame apart where their hits coincide, which the warp
# turns into flams and which alone took the onset similarity of the warped content input with
# itself from 0.48-0.51 down to 0.34 on Tomczak et al.'s pair 1 (benchmarks/RESULTS.md).
TRACKING_SUBDIVISION = 4


@dataclass(frozen=True)
class BeatGrid:
    """One input's beats in (fractional) STFT frames, extended to both ends, and its tempo."""

    frames: tuple[float, ...]
    bpm: float

    def times(self, sample_rate: int, hop_length: int) -> list[float]:
        return [round(f * hop_length / sample_rate, 4) for f in self.frames]


def beat_period(beats: np.ndarray) -> float:
    """The median distance between consecutive beats (frames)."""
    return float(np.median(np.diff(beats)))


def extend_to_edges(beats: np.ndarray, n_frames: int) -> np.ndarray:
    """Beats extended backwards to the start and forwards to the end by the median beat period."""
    beats = np.unique(np.asarray(beats, dtype=float))
    beats = beats[(beats >= 0) & (beats < n_frames)]
    if len(beats) < 2:
        return beats
    period = beat_period(beats)
    before = np.arange(beats[0] - period, 0, -period)[::-1]
    after = np.arange(beats[-1] + period, n_frames - 0.5 * period, period)
    return np.concatenate([before, beats, after])


def track_beats(audio: np.ndarray, sample_rate: int, hop_length: int, bpm: float = 0.0) -> BeatGrid:
    """librosa's beat tracker on the onset envelope, at a finer hop (``TRACKING_SUBDIVISION``);
    ``bpm`` > 0 fixes the tempo (a hint such as 120 for loops of known tempo), 0 estimates it.
    Beats are returned in fractional frames of ``hop_length``."""
    import librosa

    fine = max(1, hop_length // TRACKING_SUBDIVISION)
    tempo, beats = librosa.beat.beat_track(
        y=audio, sr=sample_rate, hop_length=fine, units="frames", bpm=bpm or None
    )
    n_frames = 1 + len(audio) // hop_length
    tempo = float(np.atleast_1d(tempo)[0])
    frames = np.asarray(beats, dtype=float) * fine / hop_length
    return BeatGrid(tuple(float(b) for b in extend_to_edges(frames, n_frames)), tempo)


def octave_error(bpm_a: float, bpm_b: float) -> int:
    """k when bpm_a ≈ bpm_b · 2^k for k ≠ 0 (one tracker locked on half or double time), else 0."""
    if bpm_a <= 0 or bpm_b <= 0:
        return 0
    ratio = math.log2(bpm_a / bpm_b)
    k = round(ratio)
    return k if k != 0 and abs(ratio - k) < OCTAVE_TOLERANCE else 0


def consistent_grids(
    content: np.ndarray, style: np.ndarray, sample_rate: int, hop_length: int, bpm: float = 0.0
) -> tuple[BeatGrid, BeatGrid, list[str]]:
    """Both inputs' beat grids, with an octave error between them corrected: the input whose tempo
    is further from 120 BPM (the tracker's prior) is tracked again at the other's tempo. Returns
    the grids and warnings for the record."""
    grids = [track_beats(audio, sample_rate, hop_length, bpm) for audio in (content, style)]
    warnings = []
    k = octave_error(grids[0].bpm, grids[1].bpm)
    if k and not bpm:
        wrong = max((0, 1), key=lambda i: abs(math.log2(grids[i].bpm / 120.0)))
        right = 1 - wrong
        retracked = track_beats((content, style)[wrong], sample_rate, hop_length, grids[right].bpm)
        names = ("content", "style")
        warnings.append(
            f"tempo octave error: {names[wrong]} read as {grids[wrong].bpm:.1f} BPM, {names[right]} as "
            f"{grids[right].bpm:.1f}; {names[wrong]} re-tracked at {grids[right].bpm:.1f} BPM "
            "(set the bpm column to fix the tempo)"
        )
        grids[wrong] = retracked
    elif min(g.bpm for g in grids) > 0 and abs(math.log2(grids[0].bpm / grids[1].bpm)) >= OCTAVE_TOLERANCE:
        warnings.append(
            f"tempi differ: content {grids[0].bpm:.1f} BPM, style {grids[1].bpm:.1f}: beat segments are "
            "stretched to the grid"
        )
    return grids[0], grids[1], warnings


def segment_bounds(beats: tuple[float, ...], n_frames: int, beats_per_segment: int) -> list[int]:
    """Segment borders in whole frames: the start, every ``beats_per_segment``-th beat, the end."""
    inner = sorted({round(b) for b in beats[::beats_per_segment]} & set(range(1, n_frames)))
    return [0, *inner, n_frames]


def pairing_offset(grid_beats: np.ndarray, other_beats: np.ndarray) -> int:
    """k such that the grid's beat i pairs with the other input's beat i + k (numbered on past its
    first beat by its period: k may make i + k negative).

    Beats are paired by their position counted in beats from the start of their input (inputs are
    taken to start on a beat, as loops do), not by index: the tracker often misses a weak first beat
    in one input and not in the other, and pairing by index then shifts one input by a whole beat
    (on Tomczak et al.'s pair 1 it put A's hits half a second early, onto B's off-beats)."""
    return round(grid_beats[0] / beat_period(grid_beats) - other_beats[0] / beat_period(other_beats))


def time_warp(
    grid_beats: tuple[float, ...], other_beats: tuple[float, ...], grid_frames: int, other_frames: int
) -> np.ndarray:
    """For each of the grid's frames, the (fractional) frame of the other input that plays there:
    piecewise linear through the paired beats (``pairing_offset``), so every beat segment of the
    other is stretched onto its partner; before the first and after the last pair it runs on at
    the ratio of the two tempi. Before the other's start it holds its first frame; past its end the
    other's beats repeat from its first one (loops repeat)."""
    grid, other = np.asarray(grid_beats, dtype=float), np.asarray(other_beats, dtype=float)
    grid_period, other_period = beat_period(grid), beat_period(other)
    j = np.arange(len(grid)) + pairing_offset(grid, other)
    partner = np.where(  # the other's beat j, numbered on past both its ends by its period
        j < 0,
        other[0] + j * other_period,
        np.where(
            j >= len(other),
            other[-1] + (j - len(other) + 1) * other_period,
            other[np.clip(j, 0, len(other) - 1)],
        ),
    )
    t = np.arange(grid_frames, dtype=float)
    ratio = other_period / grid_period
    position = np.interp(t, grid, partner)
    position = np.where(t < grid[0], partner[0] - (grid[0] - t) * ratio, position)
    position = np.where(t > grid[-1], partner[-1] + (t - grid[-1]) * ratio, position)
    span = other[-1] - other[0]  # whole beats, first to last
    last = other_frames - 1
    past = position > last
    position[past] -= span * np.ceil((position[past] - last) / span)
    return np.clip(position, 0.0, last)


def warp_to_grid(other: torch.Tensor, position: np.ndarray) -> torch.Tensor:
    """``other`` (bins, T_o) read at the fractional frames ``position`` (``time_warp``), linearly
    interpolated between neighbouring frames: the result has the grid's length."""
    pos = torch.as_tensor(position, dtype=other.dtype, device=other.device)
    low = pos.floor().long()
    high = (low + 1).clamp(max=other.shape[-1] - 1)
    frac = pos - low
    return other[:, low] * (1 - frac) + other[:, high] * frac


def feature_ranges(
    bounds: list[int], n_frames: int, kernel_size: int, min_frames: int = 2
) -> list[tuple[int, int]]:
    """Segment borders in frames -> ranges of VALID-conv feature frames, tiling [0, n_frames - k + 1).

    Feature t sees frames t … t + k − 1; it belongs to the segment holding its centre frame. A range
    shorter than ``min_frames`` (a Gram over one frame says little) joins its neighbour."""
    n_features = n_frames - kernel_size + 1
    centre = (kernel_size - 1) // 2
    edges = sorted({min(max(b - centre, 0), n_features) for b in bounds} | {0, n_features})
    ranges = [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]
    merged: list[tuple[int, int]] = []
    for a, b in ranges:
        if merged and (b - a < min_frames or merged[-1][1] - merged[-1][0] < min_frames):
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


@dataclass
class BeatAlignment:
    """What the beat tracker found, for the record and the figures."""

    content: BeatGrid
    style: BeatGrid
    grid: str  # "style" or "content": whose beats the output follows
    segments: int
    warnings: list[str] = field(default_factory=list)

    def record(self, sample_rate: int, hop_length: int) -> dict[str, Any]:
        return {
            "content_bpm": self.content.bpm,
            "style_bpm": self.style.bpm,
            "beat_segments": self.segments,
            "content_beat_times": self.content.times(sample_rate, hop_length),
            "style_beat_times": self.style.times(sample_rate, hop_length),
        }


class BeatTransfer(StyleTransfer):
    """One optimisation of the whole output with beat-segment-wise losses.

    ``content_spec`` and ``style_spec`` are both aligned to the grid (same length, see
    ``time_warp``); ``ranges`` are the segments in feature frames. Per segment r:
    α·c(A_r) + β·c(B_r) + γ·s(A_r) + δ·s(B_r), each content term per frame of its segment and each
    Gram over the segment's own frames, summed over segments (so the weights mean what they meant
    when each segment was optimised on its own)."""

    def __init__(
        self,
        content_spec: torch.Tensor,
        style_spec: torch.Tensor,
        ranges: list[tuple[int, int]],
        params: dict[str, Any],
        device: torch.device,
        weight: torch.Tensor | None = None,
    ):
        self.ranges = ranges  # before the base class builds the style targets through the hook
        super().__init__(content_spec, style_spec, params, device, weight)

    def _set_style_targets(self, gram_targets: list[torch.Tensor]) -> None:
        """One set of Gram targets per segment, each in the form cheaper for its length."""
        n_filters = self.weight.shape[0]
        self.segment_targets = []
        for a, b in self.ranges:
            form = style_form_for(n_filters, b - a, [b - a] * len(gram_targets))
            self.segment_targets.append(StyleTargets.of([f[:, a:b] for f in gram_targets], form))
        self.style_form = ",".join(sorted({t.form for t in self.segment_targets}))

    def _content_term(self, feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.stack([content_loss(feats[:, a:b], target[:, a:b]) for a, b in self.ranges]).sum()

    def _style_terms(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                style_terms(feats[:, a:b], targets)
                for (a, b), targets in zip(self.ranges, self.segment_targets, strict=True)
            ]
        ).sum(dim=0)


def beat_transfer(
    content: np.ndarray,
    style: np.ndarray,
    content_spec: torch.Tensor,
    style_spec: torch.Tensor,
    params: dict[str, Any],
    device: torch.device,
    weight: torch.Tensor | None = None,
) -> tuple[BeatTransfer, BeatAlignment]:
    """Track both inputs' beats, align them on the grid input's beats and build the transfer."""
    p = params
    sr, hop = p.sample_rate, p.hop_length
    content_grid, style_grid, warnings = consistent_grids(content, style, sr, hop, p.bpm)
    for name, grid in (("content", content_grid), ("style", style_grid)):
        if len(grid.frames) < 2:
            raise TransferError(
                f"rhythm=beats: fewer than two beats found in the {name} input; set the bpm column or use "
                "rhythm=none"
            )
    if p.beat_grid == "style":
        grid, n_frames = style_grid, style_spec.shape[-1]
        warp = time_warp(style_grid.frames, content_grid.frames, n_frames, content_spec.shape[-1])
        content_spec = warp_to_grid(content_spec, warp)
    else:
        grid, n_frames = content_grid, content_spec.shape[-1]
        warp = time_warp(content_grid.frames, style_grid.frames, n_frames, style_spec.shape[-1])
        style_spec = warp_to_grid(style_spec, warp)
    ranges = feature_ranges(
        segment_bounds(grid.frames, n_frames, p.beats_per_segment), n_frames, p.kernel_size
    )
    alignment = BeatAlignment(content_grid, style_grid, p.beat_grid, len(ranges), warnings)
    return BeatTransfer(content_spec, style_spec, ranges, p, device, weight), alignment


def check_coverage(output_frames: int, grid_frames: int) -> None:
    """Refuse an output that lost part of the grid input (the old per-segment mode dropped the
    pre-roll and the tail: 1.5 s of a 4-s loop). Checked on the optimised spectrogram."""
    if grid_frames and output_frames < MIN_COVERAGE * grid_frames:
        raise TransferError(
            f"rhythm=beats: the output covers {output_frames / grid_frames:.0%} of the grid input "
            f"({output_frames} of {grid_frames} frames), less than {MIN_COVERAGE:.0%}"
        )
