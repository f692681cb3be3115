"""Features stage: what a row's losses are computed on — the device, the log spectrogram and the
random-weight conv network (with the float32 arithmetic it runs in).

Small pure functions; the losses over these features are losses.py's, the optimisation transfer.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .config import Params


class TransferError(ValueError):
    """Inputs that cannot be transferred with the given settings (e.g. shorter than the kernel)."""


def pick_device(name: str) -> torch.device:
    """Resolve the ``device`` hyperparameter: ``auto`` takes CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TransferError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def stft_frames(n_samples: int, hop_length: int) -> int:
    """Frames of a centred STFT (``torch.stft(center=True)``): ``1 + n_samples // hop_length``."""
    return 1 + n_samples // hop_length


def check_length(n_samples: int, params: Params, what: str) -> None:
    """Refuse audio too short for the STFT (reflect padding needs > n_fft/2 samples) or the kernel."""
    n_fft, kernel = params.n_fft, params.kernel_size
    frames = stft_frames(n_samples, params.hop_length)
    if n_samples <= n_fft // 2 or frames < kernel:
        raise TransferError(
            f"{what} is {n_samples} samples ({frames} STFT frames) long, shorter than kernel_size "
            f"{kernel} frames or n_fft/2: use longer audio or a smaller n_fft/kernel_size/hop_length"
        )


def log_spectrogram(audio: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """The log-magnitude spectrogram every loss works on.

    Parameters
    ----------
    audio : torch.Tensor, shape (samples,)
        Mono signal, float, on the device to compute on.
    n_fft : int
        FFT size in samples (Hann window of the same length).
    hop_length : int
        Hop in samples; frames are centred (reflect padding of n_fft // 2).

    Returns
    -------
    torch.Tensor, shape (n_fft // 2 + 1, 1 + samples // hop_length)
        ``log1p(|STFT(audio)|)``, on ``audio``'s device.
    """
    window = torch.hann_window(n_fft, device=audio.device, dtype=audio.dtype)
    spec = torch.stft(
        audio, n_fft, hop_length=hop_length, window=window, center=True, return_complex=True
    )
    return torch.log1p(spec.abs())


def random_filters(n_bins: int, n_filters: int, kernel_size: int, seed: int) -> torch.Tensor:
    """The random conv network's weights, scaled as Ulyanov's reference.

    Parameters
    ----------
    n_bins : int
        Input channels: the spectrogram's frequency bins (n_fft // 2 + 1).
    n_filters : int
        Output channels (feature maps).
    kernel_size : int
        Width of each filter in STFT frames.
    seed : int
        Seeds the draw; drawn on the CPU so the same seed gives the same network on every device.

    Returns
    -------
    torch.Tensor, shape (n_filters, n_bins, kernel_size), float32, on the CPU
        Normal with std ``sqrt(2) * sqrt(2 / ((n_bins + n_filters) * kernel_size))``.
    """
    generator = torch.Generator().manual_seed(seed)
    std = math.sqrt(2.0) * math.sqrt(2.0 / ((n_bins + n_filters) * kernel_size))
    return torch.randn(n_filters, n_bins, kernel_size, generator=generator) * std


# The held-out network of the metrics: same shape, weights drawn from seed + this.
HELDOUT_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Network:
    """The random conv network a row's features come from: everything that decides its weights
    and what it computes, and nothing else. Rows with equal ``key()`` can share one copy of the
    weights (and one batched conv, see batched.py); a job builds it once per group of rows."""

    n_bins: int
    n_filters: int
    kernel_size: int
    seed: int
    activation: str
    precision: str

    @classmethod
    def of(cls, params: Params) -> Network:
        """The network a row's hyperparameters describe."""
        return cls(params.n_bins, params.n_filters, params.kernel_size, params.seed, params.activation,
                   params.precision)

    def key(self) -> tuple:
        """Hashable identity: equal keys, equal weights and features (``Params.network_key``'s
        order, so a plan groups rows by network without importing torch)."""
        return (self.n_bins, self.n_filters, self.kernel_size, self.seed, self.activation, self.precision)

    def heldout(self) -> Network:
        """The same architecture with other weights, for metrics the optimisation never saw."""
        return replace(self, seed=self.seed + HELDOUT_SEED_OFFSET)

    def weights(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The conv weights, shape (n_filters, n_bins, kernel_size), float32 on ``device``; drawn
        on the CPU (``random_filters``), so equal on every device."""
        return random_filters(self.n_bins, self.n_filters, self.kernel_size, self.seed).to(device)


ACTIVATIONS = {"relu": F.relu, "selu": F.selu}


def _set_cuda_tf32(enabled: bool) -> None:
    mode = "tf32" if enabled else "ieee"
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9: per-backend fp32_precision
        torch.backends.cudnn.conv.fp32_precision = mode
        torch.backends.cuda.matmul.fp32_precision = mode
    else:
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled


def use_precision(precision: str, device: torch.device) -> None:
    """Set the float32 arithmetic of convolutions and matmuls (the ``precision`` hyperparameter)
    before computing features; set per evaluation because rows in one job may differ.

    float32: IEEE float32 (on CUDA this must be asked for: cuDNN convolutions default to TF32);
    tf32: TF32 tensor cores for conv and matmul on CUDA, the same as float32 on the CPU;
    bf16: the conv in bfloat16 (see ``conv_features``), everything else IEEE float32.
    The accuracy each costs is measured by ``python -m batch_ast.bench --only precision``."""
    if device.type == "cuda":
        _set_cuda_tf32(precision == "tf32")


def conv_features(
    spec: torch.Tensor, weight: torch.Tensor, activation: str, precision: str = "float32"
) -> torch.Tensor:
    """Features of a batch of spectrograms: ``activation(conv1d(spec, weight))``.

    Parameters
    ----------
    spec : torch.Tensor, shape (batch, n_bins, frames)
        Log spectrograms.
    weight : torch.Tensor, shape (n_filters, n_bins, kernel_size)
        The network (``Network.weights``), on ``spec``'s device.
    activation : {"relu", "selu"}
    precision : {"float32", "tf32", "bf16"}
        bf16 runs only the conv under autocast: the Gram and the losses stay float32 (a bfloat16
        Gram made L-BFGS stall far above the float32 loss: measured, benchmarks/RESULTS.md).

    Returns
    -------
    torch.Tensor, shape (batch, n_filters, frames - kernel_size + 1), float32
        VALID convolution over time, no bias.
    """
    if precision == "bf16":
        with torch.autocast(spec.device.type, dtype=torch.bfloat16):
            out = F.conv1d(spec, weight)
        return ACTIVATIONS[activation](out.float())
    return ACTIVATIONS[activation](F.conv1d(spec, weight))


def features(
    spec: torch.Tensor, weight: torch.Tensor, activation: str = "relu", precision: str = "float32"
) -> torch.Tensor:
    """Features of one spectrogram: ``conv_features`` without the batch axis.

    Parameters
    ----------
    spec : torch.Tensor, shape (n_bins, frames)
    weight : torch.Tensor, shape (n_filters, n_bins, kernel_size)
    activation : {"relu", "selu"}
        ReLU is Ulyanov's choice, SELU the student's and Tomczak et al.'s.
    precision : {"float32", "tf32", "bf16"}

    Returns
    -------
    torch.Tensor, shape (n_filters, frames - kernel_size + 1)
    """
    return conv_features(spec.unsqueeze(0), weight, activation, precision).squeeze(0)


def match_length(spec: torch.Tensor, frames: int) -> torch.Tensor:
    """Stretch or squeeze a spectrogram in time by linear interpolation.

    Parameters
    ----------
    spec : torch.Tensor, shape (n_bins, T)
    frames : int
        Target length.

    Returns
    -------
    torch.Tensor, shape (n_bins, frames)
        ``spec`` itself when it already has ``frames`` frames.
    """
    if spec.shape[-1] == frames:
        return spec
    return F.interpolate(spec.unsqueeze(0), size=frames, mode="linear", align_corners=False).squeeze(0)
