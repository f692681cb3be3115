"""How much of A's rhythm survives the warp onto B's beat grid alone (no optimisation): A's
spectrogram warped onto B's beats (`rhythm.time_warp`) and inverted by Griffin-Lim, measured by
`benchmarks.research.rhythm_measures`, for beats tracked at several hops. The ceiling of a rhythmic
transfer's onset similarity with A on B's grid. Needs ../shared/audio (not bundled). About a minute.

    .venv/bin/python -m benchmarks.rhythm_warp_check
"""

from __future__ import annotations

import librosa
import numpy as np
import torch

from batch_ast import rhythm, transfer
from batch_ast.audio import load_audio
from benchmarks import common, research

SR, N_FFT, HOP = 22050, 2048, 512


def tracked(audio: np.ndarray, tracking_hop: int) -> tuple[float, ...]:
    """Beats at 120 BPM tracked at ``tracking_hop``, in (fractional) frames of HOP."""
    _, beats = librosa.beat.beat_track(y=audio, sr=SR, hop_length=tracking_hop, units="frames", bpm=120.0)
    return tuple(float(b) * tracking_hop / HOP for b in beats)


def main() -> None:
    for pair in (1, 2):
        a, b = (
            load_audio(common.SHARED / "seed" / f"{name}{pair}.wav", SR, 8.0) for name in ("content", "style")
        )
        spec_a = transfer.log_spectrogram(torch.from_numpy(a), N_FFT, HOP)
        spec_b = transfer.log_spectrogram(torch.from_numpy(b), N_FFT, HOP)
        for tracking_hop in (512, 256, 128, 64):
            warp = rhythm.time_warp(
                tracked(b, tracking_hop), tracked(a, tracking_hop), spec_b.shape[-1], spec_a.shape[-1]
            )
            warped = rhythm.warp_to_grid(spec_a, warp).numpy()
            audio = librosa.griffinlim(np.expm1(warped), n_iter=64, hop_length=HOP, n_fft=N_FFT)
            m = research.rhythm_measures(audio, a, b, SR)
            print(f"pair {pair}, beats tracked at hop {tracking_hop}: onset cosine with A "
                  f"{m['onset_cos_a']:.3f}, with B {m['onset_cos_b']:.3f}", flush=True)


if __name__ == "__main__":
    main()
