"""Phase stage: turn an optimised log-magnitude spectrogram back into audio with Griffin-Lim.

Written with torch.stft/istft (not librosa.griffinlim) so it runs on the job's device, GPU
included; torchaudio's GriffinLim is in maintenance mode and has other defaults. The update is
the "fast Griffin-Lim" of Perraudin et al. (2013), the same recurrence librosa uses.
"""

from __future__ import annotations

import math

import torch


def magnitude_from_log(log_spec: torch.Tensor) -> torch.Tensor:
    """Invert log1p: exp(S) - 1, clamped at 0 (the optimiser is free to go slightly negative)."""
    return torch.expm1(log_spec).clamp_min(0.0)


def _stft(audio: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor) -> torch.Tensor:
    return torch.stft(
        audio, n_fft, hop_length=hop_length, window=window, center=True, return_complex=True
    )


def griffin_lim(
    magnitude: torch.Tensor,
    n_fft: int,
    hop_length: int,
    n_iter: int = 32,
    momentum: float = 0.99,
    seed: int = 0,
    length: int | None = None,
) -> torch.Tensor:
    """Estimate a signal whose |STFT| is ``magnitude`` (bins, frames), starting from random phase."""
    device, dtype = magnitude.device, magnitude.dtype
    window = torch.hann_window(n_fft, device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator, dtype=dtype) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(phase), phase).to(device)
    rebuilt_prev = torch.zeros_like(angles)
    alpha = momentum / (1 + momentum)
    for _ in range(n_iter):
        inverse = torch.istft(
            magnitude * angles, n_fft, hop_length=hop_length, window=window, length=length
        )
        rebuilt = _stft(inverse, n_fft, hop_length, window)
        # sgn(z) = z/|z| (0 at 0) in one kernel: the unit-modulus projection, fused (benchmarks/RESULTS.md)
        angles = torch.sgn(torch.sub(rebuilt, rebuilt_prev, alpha=alpha))
        rebuilt_prev = rebuilt
    return torch.istft(magnitude * angles, n_fft, hop_length=hop_length, window=window, length=length)


def spectral_convergence(
    magnitude: torch.Tensor, audio: torch.Tensor, n_fft: int, hop_length: int
) -> float:
    """||S - |STFT(x)|||_F / ||S||_F: 0 is a perfect phase reconstruction (0 for silent targets)."""
    window = torch.hann_window(n_fft, device=audio.device, dtype=audio.dtype)
    rebuilt = _stft(audio, n_fft, hop_length, window).abs()
    frames = min(rebuilt.shape[-1], magnitude.shape[-1])
    target = magnitude[..., :frames]
    norm = torch.linalg.norm(target)
    if norm == 0:
        return 0.0 if torch.linalg.norm(rebuilt) == 0 else math.inf
    return (torch.linalg.norm(target - rebuilt[..., :frames]) / norm).item()
