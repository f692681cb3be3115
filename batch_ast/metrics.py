"""Objective metrics of one output, stored as index columns so results can be ranked in pandas.

All of them are computed on the *audio that was written* (re-analysed after Griffin-Lim), not on
the optimised spectrogram, and the feature distances are also measured under a held-out random
network (another seed), so that no metric is just the optimised objective read back.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from .features import Network, features, log_spectrogram, use_precision
from .losses import gram

if TYPE_CHECKING:
    from .config import Params



def relative_feature_distance(out: torch.Tensor, target: torch.Tensor) -> float:
    """||F_out - F_target||² / ||F_target||² over the common frames (0 = identical features)."""
    frames = min(out.shape[-1], target.shape[-1])
    out, target = out[..., :frames], target[..., :frames]
    denom = target.pow(2).sum().item()
    diff = (out - target).pow(2).sum().item()
    return diff / denom if denom > 0 else (0.0 if diff == 0 else float("inf"))


def relative_gram_distance(out: torch.Tensor, target: torch.Tensor) -> float:
    """||G_out - G_target||_F / ||G_target||_F (0 = identical feature statistics)."""
    g_out, g_target = gram(out), gram(target)
    denom = torch.linalg.norm(g_target).item()
    diff = torch.linalg.norm(g_out - g_target).item()
    return diff / denom if denom > 0 else (0.0 if diff == 0 else float("inf"))


def log_spectral_distance(a: torch.Tensor, b: torch.Tensor, n_fft: int, hop_length: int) -> float:
    """Log-spectral distance in dB: mean over frames of the RMS over bins of the power-dB difference."""
    window = torch.hann_window(n_fft, device=a.device, dtype=a.dtype)

    def power_db(x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x, n_fft, hop_length=hop_length, window=window, return_complex=True)
        return 10 * torch.log10(spec.abs().pow(2) + 1e-10)

    pa_, pb = power_db(a), power_db(b)
    frames = min(pa_.shape[-1], pb.shape[-1])
    diff = pa_[..., :frames] - pb[..., :frames]
    return diff.pow(2).mean(dim=0).sqrt().mean().item()


def rms_dbfs(audio: np.ndarray) -> float:
    """Level in dB relative to full scale of the RMS (a sine of peak 1 is −3 dBFS); −200 for silence.
    The report plays content, style and output at matched levels from these."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20 * math.log10(max(rms, 1e-10))


def onset_strength(audio: np.ndarray, sample_rate: int, hop_length: int, n_fft: int) -> np.ndarray:
    """``librosa.onset.onset_strength`` with its defaults (spectral flux of a 128-band log-mel
    spectrogram, centred frames, lag 1), equal to it within float rounding (tests/test_math.py).
    Written out because librosa's STFT and dB helpers compile numba code on first use: 20-30 s of
    every cold job (a new user, a fresh node, a container), and an import error where no numba
    cache folder is writable. Only the mel filterbank (no numba) is librosa's."""
    import librosa.filters

    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    signal = torch.from_numpy(np.asarray(audio, dtype=np.float64))
    spectrum = torch.stft(signal, n_fft, hop_length, window=window, center=True, pad_mode="constant",
                          return_complex=True).abs().square().numpy()
    mel = (
        librosa.filters.mel(sr=sample_rate, n_fft=n_fft, fmax=0.5 * sample_rate, dtype=np.float64) @ spectrum
    )
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    db = np.maximum(db, db.max() - 80.0)  # power_to_db's top_db
    flux = np.maximum(0.0, db[:, 1:] - db[:, :-1]).mean(axis=0)
    return np.pad(flux, (1 + n_fft // (2 * hop_length), 0))[: db.shape[1]]


def onset_correlation(a: np.ndarray, b: np.ndarray, sample_rate: int, hop_length: int, n_fft: int) -> float:
    """Pearson correlation of onset-strength envelopes (rhythm similarity, -1..1)."""
    env_a = onset_strength(a, sample_rate, hop_length, n_fft)
    env_b = onset_strength(b, sample_rate, hop_length, n_fft)
    n = min(len(env_a), len(env_b))
    env_a, env_b = env_a[:n], env_b[:n]
    if n < 2 or env_a.std() == 0 or env_b.std() == 0:
        return 0.0
    return float(np.corrcoef(env_a, env_b)[0, 1])


def output_metrics(
    output: np.ndarray,
    content: np.ndarray,
    style: np.ndarray,
    params: Params,
    device: torch.device,
    input_specs: tuple[torch.Tensor, torch.Tensor] | None = None,
    weight: torch.Tensor | None = None,
) -> dict[str, float]:
    """Every metric column for one output (audio arrays at the row's sample rate). A job passes the
    inputs' log spectrograms and the row's network it already has, so they are not made twice."""
    n_fft, hop = params.n_fft, params.hop_length
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in
               (("output", output), ("content", content), ("style", style))}
    specs = {"output": log_spectrogram(tensors["output"], n_fft, hop)}
    if input_specs is None:
        input_specs = tuple(log_spectrogram(tensors[k], n_fft, hop) for k in ("content", "style"))
    specs["content"], specs["style"] = input_specs
    metrics: dict[str, float] = {}
    use_precision("float32", device)  # metrics in IEEE float32, whatever the row was optimised in
    with torch.no_grad():
        network = Network.of(params)
        for suffix, net in (("", weight if weight is not None else network.weights(device)),
                            ("_heldout", network.heldout().weights(device))):
            feats = {k: features(v, net, params.activation) for k, v in specs.items()}
            metrics[f"content_distance{suffix}"] = relative_feature_distance(
                feats["output"], feats["content"]
            )
            metrics[f"style_distance{suffix}"] = relative_gram_distance(feats["output"], feats["style"])
            # The same measures for the untouched content: where a transfer starts from.
            metrics[f"style_distance{suffix}_of_content"] = relative_gram_distance(
                feats["content"], feats["style"]
            )
    metrics["lsd_to_content_db"] = log_spectral_distance(tensors["output"], tensors["content"], n_fft, hop)
    sr = params.sample_rate
    metrics["onset_corr_content"] = onset_correlation(output, content, sr, hop, n_fft)
    metrics["onset_corr_style"] = onset_correlation(output, style, sr, hop, n_fft)
    for name, audio in (("output", output), ("content", content), ("style", style)):
        metrics[f"{name}_rms_dbfs"] = rms_dbfs(audio)
    return metrics
