"""Hostile and careless input, one test (or more) per item of the round-2 audit: every problem is a
clear message naming the row, the file and the problem; nothing finished is lost or rewritten."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import batch_ast
from batch_ast import index as index_module
from batch_ast.backends import child_pids, get_backend, local_job_alive
from batch_ast.claims import claim_path
from batch_ast.cli import main
from batch_ast.config import ConfigError, coerce, load_config
from batch_ast.dispatch import submit_arrays
from batch_ast.job import TransferJob
from batch_ast.liveness import claim_unless_live
from batch_ast.loop import run_row
from batch_ast.manifest import load_manifest
from batch_ast.plan import make_plan, row_id
from batch_ast.row import load_inputs
from batch_ast.status import log_tail
from batch_ast.store import ResultsRoot
from batch_ast.submissions import valid_submissions

from .conftest import REPO, tiny_columns, write_manifest


def plan_one(folder: Path, results: ResultsRoot, content="content.wav", style="style.wav", **extra):
    head, vals = tiny_columns(**extra)
    m = write_manifest(folder, [f"{content},{style},{vals}"], header=f"content,style,{head}")
    (spec,) = make_plan(load_manifest(m, load_config()), results, m).to_run
    return spec, m


def cli(*args: str) -> int:
    return main([*args])


def endless_manifest(audio_dir: Path, contents: tuple[str, ...] = ("content.wav",)) -> Path:
    """Rows that run until cancelled (100,000 iterations, no early stop): jobs to catch in flight."""
    head, vals = tiny_columns(iterations=100_000, patience=1_000_000, n_filters=32)
    return write_manifest(
        audio_dir, [f"{c},style.wav,{vals}" for c in contents], header=f"content,style,{head}"
    )


# --- 1. a planted checkpoint never runs code; a bad one is moved aside ---------------------------


class Payload:
    """Pickles to a call of os.system: what an attacker would plant."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["payload", "garbage", "other-row", "not-a-dict"])
def test_a_planted_or_bad_checkpoint_is_moved_aside_and_the_row_starts_afresh(kind, audio_dir, tmp_path):
    results = ResultsRoot(tmp_path / "results")
    spec, _ = plan_one(audio_dir, results)
    ckpt = results.checkpoint_path(spec.id)
    ckpt.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    if kind == "payload":
        torch.save({"x": Payload(marker), "row_id": spec.id}, ckpt)
    elif kind == "garbage":
        ckpt.write_bytes(b"\x80\x04not a checkpoint at all")
    elif kind == "other-row":
        torch.save({"row_id": "0123456789abcdef", "format": 1, "settings": "{}"}, ckpt)
    else:
        torch.save([1, 2, 3], ckpt)
    record = run_row(spec, results)
    assert not marker.exists(), "the planted pickle ran"
    assert record["status"] == "ok", record["error"]
    assert record["resumes"] == 0 and record["resumed_from_iteration"] == 0
    assert str(ckpt) in record["checkpoint_error"] and "checkpoint.pt.bad" in record["checkpoint_error"]
    assert ckpt.with_name("checkpoint.pt.bad").exists() and not ckpt.exists()
    batch_ast.collect(results.root)
    assert "checkpoint.pt.bad" in batch_ast.load_index(results.root)["checkpoint_error"].iloc[0]


def test_a_genuine_checkpoint_still_resumes(audio_dir, tmp_path):
    from batch_ast.runopts import Paused

    results = ResultsRoot(tmp_path / "results")
    spec, _ = plan_one(audio_dir, results, iterations=30, patience=1000)
    calls = iter(range(1000))
    with pytest.raises(Paused):
        run_row(spec, results, should_pause=lambda: next(calls) >= 5)
    record = run_row(spec, results)
    assert (
        record["status"] == "ok"
        and record["resumed_from_iteration"] == 5
        and not record.get("checkpoint_error")
    )


# --- 2. YAML bombs and huge values ---------------------------------------------------------------


def test_yaml_alias_bombs_and_huge_files_are_refused_quickly(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
        f"*a{i - 1}, *a{i - 1}]"
        for i in range(1, 10)
    ]
    lines.append("defaults: {seed: *a9}")
    bomb.write_text("\n".join(lines))
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="aliases"):
        load_config(bomb)
    huge = tmp_path / "huge.yaml"
    huge.write_text("seed: 1\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="more than the 1048576"):
        load_config(huge)
    assert time.monotonic() - t0 < 30  # generous: the bomb used to hang for minutes at 2 GB+
    long_value = tmp_path / "long.yaml"
    long_value.write_text("n_fft: " + "9" * 100_000 + "x\n")
    with pytest.raises(ConfigError) as info:
        load_config(long_value)
    assert len(str(info.value)) < 400  # the value is cut in the message


# --- 3. published files follow the umask ---------------------------------------------------------


def test_published_files_and_folders_follow_the_umask(audio_dir, tmp_path):
    old = os.umask(0o022)
    try:
        results = ResultsRoot(tmp_path / "results")
        spec, _ = plan_one(audio_dir, results)
        assert run_row(spec, results)["status"] == "ok"
        batch_ast.collect(results.root)
        from batch_ast.report import write_report

        write_report(results.root)
    finally:
        os.umask(old)
    files = [p for p in results.root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert {"record.json", "output.wav", "trace.parquet", "index.parquet", "report.html"} <= {
        p.name for p in files
    }
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    for path in [results.root, *[p for p in results.root.rglob("*") if p.is_dir()]]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path


# --- 4. sizes before hashing, a persistent hash cache -------------------------------------------


def test_a_huge_sparse_input_is_refused_before_hashing(audio_dir, tmp_path, capsys):
    huge = audio_dir / "huge.wav"
    with huge.open("wb") as fh:
        fh.truncate(1 << 40)  # 1 TB, sparse: reading it would take hours
    m = write_manifest(audio_dir, ["huge.wav,style.wav"])
    assert cli("submit", str(m), "--results", str(tmp_path / "r"), "--dry-run") == 2
    err = capsys.readouterr().err
    assert "row 1 (line 2): column 'content'" in err and "huge.wav" in err and "input limit" in err


def test_the_hash_cache_skips_rereading_unchanged_inputs(audio_dir, tmp_path, monkeypatch, private_state):
    from batch_ast import plan as plan_module

    results = ResultsRoot(tmp_path / "results")
    spec, m = plan_one(audio_dir, results)
    assert (private_state / "sha256.json").exists()  # private: never in the (shared) root

    def no_reading(*args, **kwargs):
        raise AssertionError("an unchanged input was hashed again")

    with monkeypatch.context() as patch:
        patch.setattr(plan_module, "file_sha256", no_reading)
        (again,) = make_plan(load_manifest(m, load_config()), results, m).to_run
    assert again.id == spec.id
    sf.write(audio_dir / "style.wav", np.zeros(8000, dtype=np.float32) + 0.1, 8000)  # changed file
    (changed,) = make_plan(load_manifest(m, load_config()), results, m).to_run
    assert changed.id != spec.id


# --- 5. memory checked from the header, only max_seconds decoded --------------------------------


def many_channels(path: Path, seconds: float, channels: int = 8, rate: int = 96000) -> Path:
    rng = np.random.default_rng(0)
    sf.write(
        path,
        (rng.standard_normal((int(seconds * rate), channels)) * 0.1).astype(np.float32),
        rate,
        subtype="PCM_16",
    )
    return path


def test_the_memory_budget_is_checked_from_the_header_before_decoding(audio_dir, tmp_path, monkeypatch):
    many_channels(audio_dir / "wide.wav", 4.0)
    results = ResultsRoot(tmp_path / "results")
    spec, _ = plan_one(audio_dir, results, content="wide.wav", max_memory_gb=0.001)
    import batch_ast.audio as audio_module

    monkeypatch.setattr(audio_module, "load_audio", lambda *a, **k: pytest.fail("decoded before the check"))
    with pytest.raises(Exception, match="above max_memory_gb=0.001"):
        load_inputs(spec)


def test_decoding_mixes_many_channels_block_by_block(audio_dir):
    from batch_ast.audio import load_audio

    path = many_channels(audio_dir / "wide.wav", 10.0)
    all_channels = 10 * 96000 * 8 * 4  # what decoding every channel at once would hold
    load_audio(audio_dir / "content.wav", 8000, 0.1)  # first-call imports are not the decode's memory
    tracemalloc.start()
    audio = load_audio(path, 8000, 2.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(audio) == 16000  # only max_seconds decoded
    assert peak < all_channels / 4, f"peak {peak / 2**20:.1f} MiB"


# --- 6. one clear line and the right exit code instead of a traceback ---------------------------


def test_config_problems_are_one_line(audio_dir, tmp_path, capsys):
    m = write_manifest(audio_dir, ["content.wav,style.wav"])
    cases = {
        "latin1.yaml": ("seed: 1 # caf\xe9\n".encode("latin-1"), "not UTF-8"),
        "defaults.yaml": (b"defaults: [1, 2]\n", "defaults: must be a mapping"),
        "presets.yaml": (b"presets: 3\n", "presets: must be a mapping"),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert (
            cli(
                "submit",
                str(m),
                "--results",
                str(tmp_path / "r"),
                "--config",
                str(tmp_path / name),
                "--dry-run",
            )
            == 2
        )
        err = capsys.readouterr().err
        assert expected in err and name in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_a_file_name_too_long_is_one_line(audio_dir, tmp_path, capsys):
    m = write_manifest(audio_dir, ["content.wav,style.wav"])
    long_root = tmp_path / ("x" * 10_000)
    assert cli("submit", str(m), "--results", str(long_root), "--quiet") == 2
    err = capsys.readouterr().err
    assert "File name too long" in err and len(err) < 600 and "Traceback" not in err


def test_a_text_file_named_wav_says_what_it_is(audio_dir, tmp_path):
    (audio_dir / "notes.wav").write_text("these are my notes, not audio\n" * 50)
    results = ResultsRoot(tmp_path / "results")
    spec, _ = plan_one(audio_dir, results, content="notes.wav")
    record = run_row(spec, results)
    assert record["status"] == "failed" and not record["retryable"]
    assert "notes.wav: cannot decode audio: no decoder recognises it" in record["error"]


def test_analyse_on_a_missing_or_truncated_index(audio_dir, tmp_path, capsys):
    results = ResultsRoot(tmp_path / "results")
    spec, _ = plan_one(audio_dir, results)
    run_row(spec, results)
    assert cli("analyse", str(results.root)) == 2
    assert "no index.parquet" in capsys.readouterr().err
    batch_ast.collect(results.root)
    results.index_path.write_bytes(results.index_path.read_bytes()[:100])
    assert cli("analyse", str(results.root)) == 2
    assert "cannot be read" in capsys.readouterr().err
    with pytest.raises(batch_ast.ResultsError):
        batch_ast.load_index(results.root)


def test_a_full_disk_while_collecting_or_writing_the_wav(audio_dir, tmp_path, monkeypatch, capsys):
    results = ResultsRoot(tmp_path / "results")
    spec, m = plan_one(audio_dir, results)
    import batch_ast.audio as audio_module

    real_write_atomic = audio_module.write_atomic

    def disk_full(target, writer, root=None):
        def full(fh):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_atomic(target, full if target.name == "output.wav" else writer, root)

    with monkeypatch.context() as patch:
        patch.setattr(audio_module, "write_atomic", disk_full)
        record = run_row(spec, results)
    assert record["status"] == "failed" and record["retryable"]
    assert "No space left on device" in record["error"] and not results.output_path(spec.id).exists()
    assert run_row(spec, results)["status"] == "ok"
    batch_ast.collect(results.root)
    before = results.index_path.read_bytes()

    def full(table, where, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))

    capsys.readouterr()
    results.collect_state_path.unlink()  # else nothing changed and the collect writes nothing
    with monkeypatch.context() as patch:
        patch.setattr(index_module.pq, "write_table", full)
        assert cli("collect", str(results.root)) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.splitlines()) == 1
    assert results.index_path.read_bytes() == before  # the previous index is intact


def test_output_piped_into_head_is_not_a_traceback(audio_dir, tmp_path):
    rows = [f"content.wav,style.wav,{seed}" for seed in range(3000)]
    m = write_manifest(audio_dir, rows, header="content,style,seed")
    cmd = f"{sys.executable} -m batch_ast.cli submit {m} --results {tmp_path / 'r'} --dry-run | head -1"
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert done.stdout.startswith("plan: 3000 row(s)")
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def nobody_can_run_python() -> bool:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    done = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            "import batch_ast",
        ],
        capture_output=True,
        cwd="/",
    )
    return done.returncode == 0


def as_nobody(*args: str) -> subprocess.CompletedProcess:
    cmd = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        sys.executable,
        "-m",
        "batch_ast.cli",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=300)


@pytest.mark.root_only  # acts as user nobody through setpriv
@pytest.mark.skipif(not nobody_can_run_python(), reason="needs root and setpriv to act as a second user")
def test_a_second_user_reads_results_and_meets_clear_errors(audio_dir, reachable_tmp):
    """A colleague (user nobody) on the same filesystem: can read everything published under a 022
    umask; cannot write into the root, and is told so in one line; meets a folder they cannot enter."""
    audio = reachable_tmp / "audio"
    shutil.copytree(audio_dir, audio)
    for path in [audio, *audio.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    head, vals = tiny_columns()
    m = write_manifest(audio, [f"content.wav,style.wav,{vals}"], header=f"content,style,{head}")
    m.chmod(0o644)
    results = reachable_tmp / "results"
    old = os.umask(0o022)
    try:
        assert cli("submit", str(m), "--results", str(results), "--executor", "debug", "--quiet") == 0
    finally:
        os.umask(old)
    index = batch_ast.load_index(results)
    for rel in (
        "index.parquet",
        index["output"].iloc[0],
        index["trace"].iloc[0],
        f"runs/{index['id'].iloc[0]}/record.json",
    ):
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(results / rel)],
            capture_output=True,
        )
        assert done.returncode == 0, (rel, done.stderr)
    done = as_nobody("submit", str(m), "--results", str(results), "--force", "--executor", "local")
    assert done.returncode == 2 and "is not writable: " in done.stderr and "Permission denied" in done.stderr
    assert "Traceback" not in done.stderr
    done = as_nobody("report", str(results), "-o", str(reachable_tmp / "nobody-report.html"))
    assert "Traceback" not in done.stderr and done.returncode in (0, 2), done.stderr
    assert done.returncode == 2 or "using the existing index" in done.stderr
    closed = reachable_tmp / "closed"
    closed.mkdir(mode=0o700)
    shutil.copy(audio / "content.wav", closed / "content.wav")
    m2 = audio / "m2.csv"
    m2.write_text(f"content,style\n{closed / 'content.wav'},style.wav\n")
    m2.chmod(0o644)
    done = as_nobody("submit", str(m2), "--results", str(reachable_tmp / "r2"), "--dry-run")
    assert done.returncode == 2 and "row 1 (line 2): column 'content'" in done.stderr
    assert "Permission denied" in done.stderr and "Traceback" not in done.stderr


# --- 7. deterministic failures are not retryable; a diverged row leaves no output ---------------


def test_out_of_range_settings_are_refused_up_front(audio_dir, tmp_path, capsys):
    with pytest.raises(ConfigError, match="finite float32"):
        coerce("lr", "1e308")
    m = write_manifest(audio_dir, ["content.wav,style.wav,0"], header="content,style,timeout_min")
    assert cli("submit", str(m), "--results", str(tmp_path / "r"), "--dry-run") == 2
    assert "column 'timeout_min': expected an integer >= 1, got '0'" in capsys.readouterr().err
    m = write_manifest(audio_dir, ["content.wav,style.wav"], name="plain.csv")
    assert cli("submit", str(m), "--results", str(tmp_path / "r"), "--timeout-min", "0", "--dry-run") == 2
    assert "timeout_min must be an integer >= 1, not 0" in capsys.readouterr().err


def test_a_diverged_row_fails_and_leaves_no_output(audio_dir, tmp_path):
    results = ResultsRoot(tmp_path / "results")
    spec, m = plan_one(audio_dir, results, optimizer="adam", lr=1e30)
    record = run_row(spec, results)
    assert record["status"] == "failed" and not record["retryable"]
    assert record["stop_reason"] == "diverged" and "non-finite" in record["error"]
    run_dir = results.run_dir(spec.id)
    assert not list(run_dir.glob("*.wav")) and not list(run_dir.glob("*.png"))
    plan = make_plan(load_manifest(m, load_config()), results, m, retry_failed=True)
    assert not plan.to_run  # --retry-failed does not rerun it forever


# --- 8. silent inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["content", "style"])
def test_a_silent_input_fails_with_its_level(which, audio_dir, tmp_path):
    sf.write(audio_dir / "silence.wav", np.full(16000, 1e-6, dtype=np.float32), 8000, subtype="FLOAT")
    results = ResultsRoot(tmp_path / "results")
    pair = {"content": "content.wav", "style": "style.wav", which: "silence.wav"}
    spec, _ = plan_one(audio_dir, results, **pair)
    record = run_row(spec, results)
    assert record["status"] == "failed" and not record["retryable"]
    assert f"{which} input" in record["error"] and "silence.wav is silent (peak -120 dBFS" in record["error"]


# --- 10. two submissions into one root ----------------------------------------------------------


def test_a_second_submission_skips_rows_in_flight(audio_dir, tmp_path, capsys):
    m = endless_manifest(audio_dir)
    results = ResultsRoot(tmp_path / "results")
    assert (
        cli("submit", str(m), "--results", str(results.root), "--executor", "local", "--no-wait", "--quiet")
        == 0
    )
    (first,) = valid_submissions(results)
    try:
        rid = next(iter(first.rows))
        assert json.loads(claim_path(results, rid).read_text())["submission_id"] == first.submission_id
        capsys.readouterr()
        assert cli("submit", str(m), "--results", str(results.root), "--executor", "local", "--force") == 0
        out = capsys.readouterr().out
        assert f"in flight in submission {first.submission_id}" in out and "nothing to run" in out
        assert len(valid_submissions(results)) == 1  # the second submitted nothing
        assert cli("cancel", str(results.root)) == 0
    finally:  # a failed assertion must not leave a 100,000-iteration job running
        get_backend("local").cancel([job["job_id"] for job in first.jobs], first.submitit_folder)
    deadline = time.monotonic() + 300
    # the cancelled job leaves a stale claim: the next submission takes the row over
    while True:
        claimed, busy = claim_unless_live(results, [type("S", (), {"id": rid})()], "next-submission")
        if claimed:
            break
        assert time.monotonic() < deadline, busy
        time.sleep(0.5)
    assert json.loads(claim_path(results, rid).read_text())["submission_id"] == "next-submission"


def test_a_claim_of_a_dead_submitter_is_stale(tmp_path):
    results = ResultsRoot(tmp_path / "results")
    spec = type("S", (), {"id": "00000000000000aa"})()
    path = claim_path(results, spec.id)
    path.parent.mkdir(parents=True)
    import socket

    path.write_text(
        json.dumps(
            {"submission_id": "gone", "host": socket.gethostname(), "pid": 2**22 + 7, "created": time.time()}
        )
    )
    claimed, busy = claim_unless_live(results, [spec], "mine")
    assert claimed == [spec] and not busy


# --- 11. status shows each row its own log lines --------------------------------------------------


def test_log_tail_of_one_row_in_a_shared_log(tmp_path):
    log = tmp_path / "job.err"
    log.write_text(
        "submitit INFO starting\n[row aaaa] start (manifest row 1)\nA says 1\n[row aaaa] ok\n"
        "[row bbbb] start (manifest row 2)\nB says 1\nB crashed\n[row cccc] start (manifest row 3)\nC says "
        "1\n"
    )
    assert log_tail(str(log), 5, row_id="bbbb").splitlines() == [
        "[row bbbb] start (manifest row 2)",
        "B says 1",
        "B crashed",
    ]
    assert "B says" not in log_tail(str(log), 5, row_id="aaaa")
    assert log_tail(str(log), 5, row_id="dddd") == ""


# --- 12. figures that failed are regenerated ------------------------------------------------------


def test_missing_figures_are_recorded_and_regenerated_by_collect(audio_dir, tmp_path, monkeypatch):
    import batch_ast.row as row_module

    results = ResultsRoot(tmp_path / "results")
    spec, _ = plan_one(audio_dir, results)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(row_module, "spectrogram_figure", disk_full)
        record = run_row(spec, results)
    assert record["status"] == "ok" and "No space left" in record["figure_error"]
    assert not list(results.run_dir(spec.id).glob("*.png"))
    wav_before = results.output_path(spec.id).read_bytes()
    report = batch_ast.collect(results.root)
    assert report.figures_regenerated == 1
    index = batch_ast.load_index(results.root)
    assert index["figure_error"].isna().all() and (results.root / index["spectrogram_png"].iloc[0]).exists()
    assert results.output_path(spec.id).read_bytes() == wav_before  # the result itself is untouched
    assert batch_ast.collect(results.root).figures_regenerated == 0


# --- 13. links that survive odd names, integers parsed exactly ------------------------------------


def test_report_links_are_url_encoded(audio_dir, tmp_path):
    from batch_ast.report import write_report

    shutil.copy(audio_dir / "content.wav", audio_dir / "take #1 ?100%.wav")
    results = ResultsRoot(tmp_path / "results")
    spec, _ = plan_one(audio_dir, results, content='"take #1 ?100%.wav"')
    assert run_row(spec, results)["status"] == "ok"
    report = write_report(results.root)
    data = report.with_name("report.data.js").read_text()
    assert "take%20%231%20%3F100%25.wav" in data and "audio/take #1" not in data


def test_large_seeds_are_exact_integers(audio_dir, tmp_path):
    assert coerce("seed", "9007199254740993") == 9007199254740993
    assert coerce("seed", str(2**63 - 1)) == 2**63 - 1
    with pytest.raises(ConfigError, match=r"an integer in \[0, 2\*\*63 - 1\]"):
        coerce("seed", str(2**63))
    params = load_config().params()
    assert row_id("a", "b", params.replace(seed=9007199254740993)) != row_id(
        "a", "b", params.replace(seed=9007199254740992)
    )
    results = ResultsRoot(tmp_path / "results")
    spec, _ = plan_one(audio_dir, results, seed=2**63 - 1)
    assert run_row(spec, results)["status"] == "ok"


# --- 16/17. every submitted row in the index; stale temp files; thread count recorded -----------


def test_the_index_lists_rows_without_records_and_stale_temp_files_go(audio_dir, tmp_path):
    m = endless_manifest(audio_dir, ("content.wav", "content2.wav"))
    results = ResultsRoot(tmp_path / "results")
    specs = make_plan(load_manifest(m, load_config()), results, m).to_run
    submission, (job,) = submit_arrays(
        specs, results, get_backend("local"), m, rows_per_job=2, job=TransferJob()
    )
    try:
        (results.root / ".tmp-index.parquet.abandoned").write_bytes(b"half")
        batch_ast.collect(results.root)
        index = batch_ast.load_index(results.root)
        assert list(index["row"]) == [1, 2] and set(index["status"]) <= {"running", "pending"}
        assert index["n_filters"].tolist() == [32, 32] and set(index["submission_id"]) == {
            submission.submission_id
        }
        assert not list(results.root.glob(".tmp-*"))
    finally:  # a failed check must not leave a 100,000-iteration job running
        # batch-ast's own cancel (SIGKILL), not submitit's job.cancel(): that sends SIGINT, which a
        # suite started in the background of a non-interactive shell ignores, and so do its jobs
        get_backend("local").cancel([str(job.job_id)], submission.submitit_folder)
    deadline = time.monotonic() + 3600
    while local_job_alive(str(job.job_id)):
        assert time.monotonic() < deadline, "the cancelled local job did not end"
        time.sleep(0.2)
    batch_ast.collect(results.root)
    assert set(batch_ast.load_index(results.root)["status"]) == {"lost"}


def test_cancel_stops_a_local_job_that_is_running_its_rows(audio_dir, tmp_path):
    """A running submitit task bypasses SIGTERM (it waits for SLURM's SIGKILL), so a SIGTERM to the
    local controller left the row computing after `batch-ast cancel` said it was cancelled."""
    m = endless_manifest(audio_dir)
    results = ResultsRoot(tmp_path / "results")
    assert (
        cli("submit", str(m), "--results", str(results.root), "--executor", "local", "--no-wait", "--quiet")
        == 0
    )
    (submission,) = valid_submissions(results)
    (job,) = submission.jobs
    controller = int(job["job_id"])
    try:
        deadline = time.monotonic() + 3600
        while "] start" not in log_tail(job["log"], lines=50):  # the task is running its row
            assert local_job_alive(job["job_id"]) and time.monotonic() < deadline, log_tail(job["log"])
            time.sleep(0.2)
        tasks = child_pids(controller)
        assert tasks
        assert cli("cancel", str(results.root)) == 0
        while local_job_alive(job["job_id"]) or any(local_job_alive(str(t)) for t in tasks):
            assert time.monotonic() < deadline, "the cancelled local job is still running"
            time.sleep(0.2)
    finally:
        for pid in [*child_pids(controller), controller]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    status = batch_ast.find_submission(results.root).status()
    assert status.counts["cancelled"] == 1 and not status.active


# What submitit's local controller does between setting its SIGTERM handler and starting its task,
# slowed down: it waits for a file to appear in between, then starts a task that leaves a marker.
SLOW_CONTROLLER = """
import signal, subprocess, sys, time
from pathlib import Path
folder = Path(sys.argv[-1]).parent
signal.signal(signal.SIGTERM, lambda *_: None)  # forwards to its tasks: none yet
(folder / "handler-set").touch()
while not (folder / "go").exists():
    time.sleep(0.05)
subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[1], 'w').close()", str(folder / "ran")])
"""


def test_cancel_stops_a_local_controller_that_has_not_started_its_task_yet(tmp_path):
    """CI caught `cancel` while submitit's controller had set its SIGTERM handler (which forwards
    the signal to its tasks) but not yet started a task: the SIGTERM was shrugged off and the job ran
    its 100,000 iterations. The controller is stopped, its tasks killed, then it is killed."""
    folder = tmp_path / "submitit"
    folder.mkdir()
    controller = subprocess.Popen(
        [sys.executable, "-c", SLOW_CONTROLLER, "-m", "submitit.local._local", str(folder / "%j")]
    )
    try:
        deadline = time.monotonic() + 3600
        while not (folder / "handler-set").exists():
            assert controller.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        get_backend("local").cancel([str(controller.pid)], str(folder))
        (folder / "go").touch()
        assert controller.wait(timeout=3600) == -9
    finally:
        controller.kill()
        controller.wait()
    assert not (folder / "ran").exists()


def test_the_thread_count_is_recorded(audio_dir, tmp_path):
    results = ResultsRoot(tmp_path / "results")
    spec, _ = plan_one(audio_dir, results)
    assert run_row(spec, results)["torch_threads"] == torch.get_num_threads()


def test_the_slurm_start_script_says_what_slurmctld_i_does():
    text = (REPO / "slurm" / "start.sh").read_text()
    assert "restarts job ids at 1" not in text

