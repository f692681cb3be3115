"""Rhythmic constraint of Tomczak, Southall & Hockman (DAFx 2018): beat-segmented transfer.

Both inputs are cut at their beats, the i-th beat segment of the content is transferred with the
i-th beat segment of the style (each segment optimised on its own, with the same random network),
and the results are concatenated on one input's beat grid, so the output keeps that input's beat
positions. The authors used madmom's RNN downbeat tracker; madmom does not install on current
Pythons, so librosa's beat tracker stands in (same role: beat positions in STFT frames).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .transfer import LossTerms, StyleTransfer, TraceRow, TransferError, match_length, row_filters


def beat_frames(audio: np.ndarray, sample_rate: int, hop_length: int) -> np.ndarray:
    """Beat positions in STFT frames (librosa.beat.beat_track on the onset envelope)."""
    import librosa

    _, beats = librosa.beat.beat_track(y=audio, sr=sample_rate, hop_length=hop_length, units="frames")
    return np.unique(np.asarray(beats, dtype=int))


def paired_segments(
    content_beats: np.ndarray, style_beats: np.ndarray, content_frames: int, style_frames: int
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Pair the i-th beat-to-beat segment of each input, trimmed to the common number of beats."""
    cb = content_beats[content_beats < content_frames]
    sb = style_beats[style_beats < style_frames]
    n = min(len(cb), len(sb)) - 1
    return [((int(cb[i]), int(cb[i + 1])), (int(sb[i]), int(sb[i + 1]))) for i in range(max(n, 0))]


class SegmentedTransfer:
    """The StyleTransfer interface (step, finished, trace, result, state) over beat segments,
    optimised one after the other, so the job, its checkpoints and its records need not care."""

    def __init__(
        self,
        content_spec: torch.Tensor,
        style_spec: torch.Tensor,
        segments: list[tuple[tuple[int, int], tuple[int, int]]],
        params: dict[str, Any],
        device: torch.device,
        weight: torch.Tensor | None = None,
    ):
        if not segments:
            raise TransferError("rhythm=beats: fewer than two beats found in an input; use rhythm=none")
        self.segments: list[StyleTransfer] = []
        # One network for all segments: a copy each would hold n_segments x 180 MB at default size.
        self.weight = weight if weight is not None else row_filters(params, content_spec.shape[0], device)
        on_style_grid = params["beat_grid"] == "style"
        for (c0, c1), (s0, s1) in segments:
            content_seg, style_seg = content_spec[:, c0:c1], style_spec[:, s0:s1]
            frames = (s1 - s0) if on_style_grid else (c1 - c0)
            if frames < params["kernel_size"]:
                raise TransferError(
                    f"rhythm=beats: a beat segment is {frames} frames, shorter than kernel_size "
                    f"{params['kernel_size']}: use a smaller hop_length or kernel_size"
                )
            # The output segment follows the grid input's length; the other input is stretched to it.
            self.segments.append(
                StyleTransfer(match_length(content_seg, frames), style_seg, params, device, self.weight)
            )
        self.index = 0
        self.iteration = 0
        self.trace: list[TraceRow] = []

    @property
    def finished(self) -> bool:
        return self.index >= len(self.segments)

    @property
    def evaluations(self) -> int:
        return sum(seg.evaluations for seg in self.segments)

    @property
    def style_form(self) -> str:
        return ",".join(sorted({seg.style_form for seg in self.segments}))

    @property
    def stop_reason(self) -> str:
        if not self.finished:
            return ""
        reasons = sorted({seg.stop_reason for seg in self.segments})
        return f"{len(self.segments)} beat segments: " + ", ".join(reasons)

    def step(self) -> bool:
        if self.finished:
            return False
        current = self.segments[self.index]
        current.step()
        self.trace.append((self.iteration, *current.trace[-1][1:]))
        self.iteration += 1
        if current.finished:
            self.index += 1
        return not self.finished

    def result(self) -> tuple[torch.Tensor, LossTerms]:
        parts = [seg.result() for seg in self.segments]
        x = torch.cat([spec for spec, _ in parts], dim=-1)
        terms = LossTerms(
            total=sum(t.total for _, t in parts),
            content=sum(t.content for _, t in parts),
            style=sum(t.style for _, t in parts),
        )
        return x, terms

    def state_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "iteration": self.iteration,
            "trace": list(self.trace),
            "segments": [seg.state_dict() for seg in self.segments[: self.index + 1]],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["segments"]) > len(self.segments):
            raise TransferError("checkpoint has more beat segments than the inputs give: inputs changed?")
        for seg, seg_state in zip(self.segments, state["segments"], strict=False):
            seg.load_state_dict(seg_state)
        self.index = state["index"]
        self.iteration = state["iteration"]
        self.trace = list(state["trace"])
