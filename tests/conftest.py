"""Shared fixtures: tiny real audio clips and tiny hyperparameters so tests run in seconds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_AUDIO = REPO / "manifests" / "audio"
SHARED_AUDIO = REPO.parent / "shared" / "audio"

# The device the math, transfer, phase and batched tests compute on: cpu here, cuda in
# benchmarks/gpu-check.sh (BATCH_AST_TEST_DEVICE=cuda).
TEST_DEVICE_NAME = os.environ.get("BATCH_AST_TEST_DEVICE", "cpu")

# Small enough for 2 CPU cores in about a second per row, large enough to be real.
TINY = {
    "sample_rate": 8000,
    "max_seconds": 1.5,
    "n_fft": 256,
    "hop_length": 64,
    "n_filters": 64,
    "kernel_size": 5,
    "iterations": 12,
    "griffin_lim_iters": 8,
}


@pytest.fixture(autouse=True)
def no_site_profile(tmp_path_factory, monkeypatch):
    """Tests never pick up the machine's default profile ($BATCH_AST_PROFILE, ~/.config)."""
    monkeypatch.delenv("BATCH_AST_PROFILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config-home")))


def tiny_columns(**extra: object) -> tuple[str, str]:
    """Header suffix and row suffix for a manifest using the TINY settings (plus extras)."""
    values = {**TINY, **extra}
    return ",".join(values), ",".join(str(v) for v in values.values())


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    """A scratch folder with copies of two demo clips (content.wav, style.wav)."""
    folder = tmp_path / "audio"
    folder.mkdir()
    shutil.copy(DEMO_AUDIO / "speech_gettysburg.wav", folder / "content.wav")
    shutil.copy(DEMO_AUDIO / "boogie_marabi.wav", folder / "style.wav")
    shutil.copy(DEMO_AUDIO / "harp_harmony.wav", folder / "content2.wav")
    return folder


def small_study(folder: Path, **columns: str) -> Path:
    """A results root with two ok rows (``one``, ``two``: content weights 4.3 and 0.5) and one
    failed row (``bad``: undecodable content), TINY settings and ``columns`` (one value for every
    row), run through the local executor."""
    from batch_ast.cli import main

    audio = folder / "audio"
    audio.mkdir()
    shutil.copy(DEMO_AUDIO / "speech_gettysburg.wav", audio / "content.wav")
    shutil.copy(DEMO_AUDIO / "boogie_marabi.wav", audio / "style.wav")
    (audio / "broken.wav").write_bytes(b"not audio at all")
    head, vals = tiny_columns(**columns)
    manifest = write_manifest(audio, [f"one,content.wav,style.wav,4.3,{vals}",
                                      f"two,content.wav,style.wav,0.5,{vals}",
                                      f"bad,broken.wav,style.wav,1,{vals}"],
                              header=f"id,content,style,content_weight,{head}")
    results = folder / "results"
    assert main(["submit", str(manifest), "--results", str(results), "--executor", "local", "--quiet"]) == 1
    return results


def write_manifest(folder: Path, rows: list[str], header: str = "content,style", name: str = "m.csv") -> Path:
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def device_under_test():
    """torch.device of BATCH_AST_TEST_DEVICE; the tests that use it fail (not skip) when it is asked
    for and absent, so a GPU check cannot pass on the CPU by accident."""
    import torch

    device = torch.device(TEST_DEVICE_NAME)
    if device.type == "cuda":
        assert torch.cuda.is_available(), "BATCH_AST_TEST_DEVICE=cuda but torch sees no CUDA device"
        # cuDNN's default convolution backward is not run-to-run deterministic; the tests that
        # compare two runs exactly (resume, evaluation cache) check our logic, not cuDNN's
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return device


@pytest.fixture(autouse=True)
def private_state(tmp_path_factory, monkeypatch):
    """Each test's own private state folder (submitit's files, the hash cache): never the
    machine user's ~/.local/state."""
    folder = tmp_path_factory.mktemp("state")
    folder.chmod(0o700)
    monkeypatch.setenv("BATCH_AST_STATE_DIR", str(folder / "batch-ast"))
    return folder / "batch-ast"


@pytest.fixture
def reachable_tmp():
    """A scratch folder that other users can reach (under the system's /tmp, mode 0755). pytest's
    own tmp_path sits below a 0700 folder: nothing there is reachable by anyone else, so a check
    for what other users could replace rightly passes there."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="batch-ast-test-", dir="/tmp" if os.path.isdir("/tmp") else None))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# The long rows of the SLURM tests (tests/test_slurm.py, tests/test_multinode.py).
def long_rows(audio_dir: Path, n: int, iterations: int = 4000) -> Path:
    head, vals = tiny_columns(iterations=iterations, patience=100000, n_filters=128)
    return write_manifest(
        audio_dir,
        [f"content.wav,style.wav,{seed},{vals}" for seed in range(n)],
        header=f"content,style,seed,{head}",
        name="long.csv",
    )


LONG = 600  # iterations: ~20-40 s on 2 cores, long enough to interrupt, short enough for CI


def uninterrupted_wav(folder: Path, iterations: int) -> numpy.ndarray:
    """The output of the long row run without interruption (local executor), for comparisons."""
    import soundfile as sf

    import batch_ast
    from batch_ast.cli import main

    audio = folder / "audio"
    audio.mkdir(parents=True)
    for name, src in (("content.wav", "speech_gettysburg.wav"), ("style.wav", "boogie_marabi.wav")):
        (audio / name).write_bytes((DEMO_AUDIO / src).read_bytes())
    m = long_rows(audio, 1, iterations=iterations)
    results = folder / "results"
    assert main(["submit", str(m), "--results", str(results), "--executor", "local", "--quiet"]) == 0
    (rel,) = batch_ast.load_index(results)["output"]
    return sf.read(results / rel)[0]


@pytest.fixture(scope="session")
def reference_wav(tmp_path_factory) -> numpy.ndarray:
    """The long row's uninterrupted output, computed once for every SLURM test that compares."""
    return uninterrupted_wav(tmp_path_factory.mktemp("reference"), LONG)
