"""Phase stage: turn an optimised log-magnitude spectrogram back into audio with Griffin-Lim.

Written with torch.stft/istft (not librosa.griffinlim) so it runs on the job's device, GPU
included; torchaudio's GriffinLim is in maintenance mode and has other defaults. The update is
the "fast Griffin-Lim" of Perraudin et al. (2013), the same recurrence librosa uses.
"""

from __future__ import annotations

import math

import torch


def magnitude_from_log(log_spec: torch.Tensor) -> torch.Tensor:
    """Linear magnitude from a log1p magnitude spectrogram.

    Parameters
    ----------
    log_spec : torch.Tensor, shape (n_bins, frames)
        ``log1p(|STFT|)`` as ``transfer.log_spectrogram`` makes it (or as the optimiser left it).

    Returns
    -------
    torch.Tensor, shape (n_bins, frames)
        ``exp(log_spec) - 1`` clamped at 0 (the optimiser is free to go slightly negative).
    """
    return torch.expm1(log_spec).clamp_min(0.0)


def _stft(audio: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor) -> torch.Tensor:
    return torch.stft(
        audio, n_fft, hop_length=hop_length, window=window, center=True, return_complex=True
    )


class InverseSTFT:
    """Inverse of a centred, Hann-windowed STFT of fixed shape, for Griffin-Lim's hundreds of calls.

    torch.istft recomputes the window envelope and overlap-adds with a generic fold on every call;
    here the envelope is computed once and, when ``hop_length`` divides ``n_fft``, the overlap-add
    is n_fft/hop shifted block sums (5x faster than torch.istft at 10 s, n_fft 2048, hop 512 on
    the CPU: ``python -m benchmarks.bench --only gl``). Other shapes use torch.istft itself.
    Equal to torch.istft(center=True) up to float rounding (tests/test_math.py)."""

    def __init__(
        self, n_fft: int, hop_length: int, frames: int, window: torch.Tensor, length: int | None = None
    ):
        self.n_fft, self.hop, self.frames, self.window = n_fft, hop_length, frames, window
        full = n_fft + hop_length * (frames - 1)
        self.length = full - n_fft if length is None else length  # torch.istft's default when None
        self.blocks = n_fft // hop_length if n_fft % hop_length == 0 else 0
        if self.blocks:
            envelope = self._overlap_add((window**2).expand(frames, n_fft))
            kept = envelope[n_fft // 2 : n_fft // 2 + self.length]
            if kept.numel() < self.length or bool((kept.abs() < 1e-11).any()):
                self.blocks = 0  # not invertible here (NOLA): torch.istft raises its own error
            else:
                self.inverse_envelope = 1.0 / kept

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """Sum of windowed frames (frames, n_fft) placed every hop samples: a 1-D signal."""
        blocks = frames.reshape(self.frames, self.blocks, self.hop)
        out = torch.zeros(self.frames + self.blocks - 1, self.hop, dtype=frames.dtype, device=frames.device)
        for j in range(self.blocks):
            out[j : j + self.frames] += blocks[:, j]
        return out.flatten()

    def __call__(self, spec: torch.Tensor) -> torch.Tensor:
        """Audio (length,) from a complex spectrogram (n_fft // 2 + 1, frames)."""
        if not self.blocks:
            return torch.istft(spec, self.n_fft, hop_length=self.hop, window=self.window, length=self.length)
        frames = torch.fft.irfft(spec.T, n=self.n_fft, dim=1) * self.window
        start = self.n_fft // 2
        return self._overlap_add(frames)[start : start + self.length] * self.inverse_envelope


def griffin_lim(
    magnitude: torch.Tensor,
    n_fft: int,
    hop_length: int,
    n_iter: int = 32,
    momentum: float = 0.99,
    seed: int = 0,
    length: int | None = None,
    istft: str = "overlap-add",
) -> torch.Tensor:
    """Estimate a signal whose |STFT| is ``magnitude`` (bins, frames), starting from random phase.

    Parameters
    ----------
    magnitude : torch.Tensor, shape (n_fft // 2 + 1, frames)
        Target linear magnitude (not log), on the device to run on.
    n_fft, hop_length : int
        STFT size and hop in samples (centred, Hann window), as the spectrogram was made.
    n_iter : int
        Griffin-Lim iterations (spectral convergence vs iterations: benchmarks/RESULTS.md).
    momentum : float
        The fast Griffin-Lim momentum (0.99 as librosa).
    seed : int
        Seeds the initial random phase.
    length : int, optional
        Output length in samples; default ``hop_length * (frames - 1)``.
    istft : {"overlap-add", "torch"}
        The inverse STFT used: ``InverseSTFT`` (default) or torch.istft (the benchmark's reference).

    Returns
    -------
    torch.Tensor, shape (length,)
        The reconstructed audio, float, on ``magnitude``'s device.
    """
    device, dtype = magnitude.device, magnitude.dtype
    window = torch.hann_window(n_fft, device=device, dtype=dtype)
    if istft == "torch":
        def inverse(spec: torch.Tensor) -> torch.Tensor:
            return torch.istft(spec, n_fft, hop_length=hop_length, window=window, length=length)
    else:
        inverse = InverseSTFT(n_fft, hop_length, magnitude.shape[-1], window, length)
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator, dtype=dtype) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(phase), phase).to(device)
    rebuilt_prev = torch.zeros_like(angles)
    alpha = momentum / (1 + momentum)
    for _ in range(n_iter):
        rebuilt = _stft(inverse(magnitude * angles), n_fft, hop_length, window)
        # sgn(z) = z/|z| (0 at 0) in one kernel: the unit-modulus projection, fused (benchmarks/RESULTS.md)
        angles = torch.sgn(torch.sub(rebuilt, rebuilt_prev, alpha=alpha))
        rebuilt_prev = rebuilt
    return inverse(magnitude * angles)


def spectral_convergence(
    magnitude: torch.Tensor, audio: torch.Tensor, n_fft: int, hop_length: int
) -> float:
    """How well a signal's magnitude matches a target magnitude.

    Parameters
    ----------
    magnitude : torch.Tensor, shape (n_fft // 2 + 1, frames)
        Target linear magnitude S.
    audio : torch.Tensor, shape (samples,)
        The reconstructed signal x.
    n_fft, hop_length : int
        STFT size and hop in samples (centred, Hann window), as S was made.

    Returns
    -------
    float
        ``||S - |STFT(x)|||_F / ||S||_F`` over their common frames: 0 is a perfect phase
        reconstruction (0 also for a silent target and signal; inf for a silent target only).
    """
    window = torch.hann_window(n_fft, device=audio.device, dtype=audio.dtype)
    rebuilt = _stft(audio, n_fft, hop_length, window).abs()
    frames = min(rebuilt.shape[-1], magnitude.shape[-1])
    target = magnitude[..., :frames]
    norm = torch.linalg.norm(target)
    if norm == 0:
        return 0.0 if torch.linalg.norm(rebuilt) == 0 else math.inf
    return (torch.linalg.norm(target - rebuilt[..., :frames]) / norm).item()
