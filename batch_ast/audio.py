"""Audio I/O: decoding with soundfile/librosa (any rate, mono/stereo, WAV/MP3/OGG/AIFF) and WAV writing."""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .store import write_atomic

BLOCK_FRAMES = 1 << 16  # frames decoded at a time: a many-channel file is mixed to mono block by block


class AudioError(ValueError):
    """An input file that cannot be used as audio."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, read without decoding it."""

    seconds: float
    channels: int
    sample_rate: int

    def decode_bytes(self, max_seconds: float) -> int:
        """Peak bytes of decoding ``max_seconds`` of it: one block of all channels, the mono signal
        at the native rate, and its resampled copy (float32; resampling needs about 2x)."""
        seconds = min(self.seconds, max_seconds)
        return 4 * (BLOCK_FRAMES * self.channels + 3 * math.ceil(seconds * self.sample_rate))


def _require_regular(path: Path) -> None:
    """A FIFO would block the decoder for good and a device never ends: only regular files (a
    symlink to one is fine: inputs are the user's own files) are decoded."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise AudioError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise AudioError(f"{path}: not a regular file (a FIFO, device or folder)")


def probe_audio(path: str | Path) -> AudioInfo | None:
    """What a file holds, from its header alone (no decoding).

    Parameters
    ----------
    path : str or Path
        An audio file.

    Returns
    -------
    AudioInfo or None
        Duration (s), channels and native rate; None when soundfile cannot open the format (MP3
        on an old libsndfile, AAC...): then the memory check runs after decoding instead.
    """
    try:
        _require_regular(Path(path))
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - any format soundfile does not know
        return None
    if info.samplerate <= 0 or info.frames < 0:
        return None
    return AudioInfo(info.frames / info.samplerate, info.channels, info.samplerate)


def decoded_samples(info: AudioInfo, sample_rate: int, max_seconds: float) -> int:
    """Length in samples of the signal ``load_audio`` will return for a file described by ``info``
    (resampled to ``sample_rate`` Hz, truncated to ``max_seconds`` s)."""
    return math.ceil(min(info.seconds, max_seconds) * sample_rate)


def _read_mono_blocks(path: Path, max_seconds: float) -> tuple[np.ndarray, int]:
    """Decode only the first ``max_seconds``, mixed to mono block by block, so a long 8-channel file
    never sits in memory with all its channels (librosa.load decodes every channel first)."""
    with sf.SoundFile(str(path)) as fh:
        native = fh.samplerate
        wanted = (
            min(fh.frames, math.ceil(max_seconds * native))
            if fh.frames > 0
            else math.ceil(max_seconds * native)
        )
        parts, got = [], 0
        while got < wanted:
            block = fh.read(min(BLOCK_FRAMES, wanted - got), dtype="float32", always_2d=True)
            if not len(block):
                break
            parts.append(block.mean(axis=1, dtype=np.float32))
            got += len(block)
    mono = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return mono, native


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """soxr's high-quality resampler, called directly: what ``librosa.resample(res_type="soxr_hq")``
    runs, without librosa, whose first use in a process with a cold numba cache (a new user, a
    fresh node, a container) compiles for 20-30 s, and fails where no cache folder is writable."""
    import soxr

    return np.asarray(soxr.resample(audio, orig_sr, target_sr, quality="HQ"), dtype=audio.dtype)


def load_audio(path: str | Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Decode an audio file to a mono signal.

    Parameters
    ----------
    path : str or Path
        Any format soundfile reads (WAV, FLAC, OGG, MP3 on libsndfile >= 1.1), else librosa's
        audioread fallback.
    sample_rate : int
        Output rate in Hz (resampled with soxr_hq when the file's differs).
    max_seconds : float
        Only the first ``max_seconds`` seconds are decoded.

    Returns
    -------
    numpy.ndarray, shape (samples,), float32
        Channels averaged, samples in [-1, 1] as decoded; never empty, never NaN/inf.

    Raises
    ------
    AudioError
        Missing, undecodable, empty or non-finite audio; the message names the file.
    """
    path = Path(path)
    _require_regular(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # audioread fallback warnings say nothing actionable
            if probe_audio(path) is not None:
                audio, native = _read_mono_blocks(path, max_seconds)
                if native != sample_rate and audio.size:
                    audio = resample(audio, native, sample_rate)
            else:  # MP3 on old libsndfile, AAC...: librosa's audioread fallback
                import librosa  # deferred: its first use compiles numba code (tens of seconds, cold)

                audio, _ = librosa.load(path, sr=sample_rate, mono=True, duration=max_seconds)
    except FileNotFoundError:
        raise AudioError(f"{path}: file not found") from None
    except Exception as exc:  # decoders raise many unrelated types for corrupt data
        if type(exc).__name__ == "NoBackendError" or not str(exc).strip():
            raise AudioError(
                f"{path}: cannot decode audio: no decoder recognises it (corrupt, or not audio)"
            ) from None
        raise AudioError(f"{path}: cannot decode audio: {type(exc).__name__}: {str(exc)[:300]}") from None
    if audio.size == 0:
        raise AudioError(f"{path}: audio has no samples (zero length)")
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return audio.astype(np.float32, copy=False)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int, root: Path | None = None) -> float:
    """Write a signal as a 16-bit PCM WAV, atomically.

    Encoded in memory first and written with Python's file I/O, so a full disk is an OSError that
    says so ("No space left on device") rather than libsndfile's "System error".

    Parameters
    ----------
    path : Path
        Target file; appears only complete (written beside it, then renamed).
    audio : numpy.ndarray, shape (samples,)
        The signal; scaled down (never up) so its peak is at most 0.99.
    sample_rate : int
        Rate in Hz written in the header.
    root : Path, optional
        The results root ``path`` lies in: no symlink below it is followed (``store.write_atomic``).

    Returns
    -------
    float
        The gain applied (1.0 unless the signal would have clipped); the record keeps it.
    """
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    gain = 0.99 / peak if peak > 0.99 else 1.0
    buffer = io.BytesIO()
    sf.write(buffer, audio * gain, sample_rate, subtype="PCM_16", format="WAV")
    write_atomic(path, lambda fh: fh.write(buffer.getvalue()), root)
    return gain
