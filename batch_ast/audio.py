"""Audio I/O: decoding with librosa (any rate, mono/stereo, WAV/MP3/OGG/AIFF) and WAV writing."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

from .store import write_atomic


class AudioError(ValueError):
    """An input file that cannot be used as audio."""


def load_audio(path: str | Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate``, truncated to ``max_seconds``."""
    import librosa  # deferred: librosa's import costs ~1 s and only jobs need it

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # audioread fallback warnings say nothing actionable
            audio, _ = librosa.load(path, sr=sample_rate, mono=True, duration=max_seconds)
    except FileNotFoundError:
        raise AudioError(f"{path}: file not found") from None
    except Exception as exc:  # decoders raise many unrelated types for corrupt data
        raise AudioError(f"{path}: cannot decode audio: {type(exc).__name__}: {exc}") from None
    if audio.size == 0:
        raise AudioError(f"{path}: audio has no samples (zero length)")
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return audio.astype(np.float32, copy=False)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> float:
    """Write 16-bit PCM atomically; scale down (never up) so the peak fits. Returns the gain used."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    gain = 0.99 / peak if peak > 0.99 else 1.0
    write_atomic(
        path,
        lambda tmp: sf.write(tmp, audio * gain, sample_rate, subtype="PCM_16", format="WAV"),
    )
    return gain
