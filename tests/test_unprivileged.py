"""Unprivileged users on a shared cluster (issue #30): a group umask runs every row, a setgid group
root stays usable by the whole group whatever each member's umask, jobs start from a read-only
install with a read-only HOME, and nothing a group member plants in the shared root runs, forges,
blocks or hangs (round 4: H1-H14).

`make test` runs these as an unprivileged user at umask 002 (tests/as-user.sh); the two-user test
needs that harness (a second user reached through sudo) and the SLURM cluster."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batch_ast
import batch_ast.report
from batch_ast.cli import main
from batch_ast.progress import Progress
from batch_ast.store import ResultsRoot, root_lock
from batch_ast.submissions import read_submissions, valid_submissions

from .conftest import DEMO_AUDIO, REPO, tiny_columns, write_manifest
from .test_hostile import endless_manifest
from .test_hostile_root import ok_root, submission_json, wait_until

CLI = str(Path(sys.executable).with_name("batch-ast"))


def cli(*args: str) -> int:
    return main([*args])


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def one_row(folder: Path, name: str = "m.csv", seeds: tuple[int, ...] = (0,), **extra) -> Path:
    head, vals = tiny_columns(**extra)
    return write_manifest(folder, [f"content.wav,style.wav,{s},{vals}" for s in seeds],
                          header=f"content,style,seed,{head}", name=name)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed ``batch-ast`` command in a process of its own (its umask, cwd and env)."""
    return subprocess.run(
        [CLI, *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=3600
    )


def a_group_of_mine() -> int:
    """A group this user is in other than the primary one where there is one (tests/as-user.sh
    puts its users in `batchast`), else the primary group."""
    others = [g for g in os.getgroups() if g != os.getegid()]
    return others[0] if others else os.getegid()


def shared_folder(parent: Path, name: str = "proj") -> Path:
    """A project folder as sites make them: setgid, group-writable (2770), the project's group."""
    folder = parent / name
    folder.mkdir()
    os.chown(folder, -1, a_group_of_mine())
    folder.chmod(0o2770)
    return folder


# --- 1. a group umask runs every row --------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o002, 0o007])
def test_a_group_umask_runs_every_row_and_its_job_folder_stays_private(
    mask, audio_dir, tmp_path, private_state
):
    m = one_row(audio_dir)
    with umask(mask):
        assert (
            cli(
                "submit", str(m), "--results", str(tmp_path / "r"), "--executor", "local", "--wait", "--quiet"
            )
            == 0
        )
    (job_folder,) = [p for p in (private_state / "submitit").glob("*/*") if p.is_dir() and p.name.isdigit()]
    # submitit made it with the user's umask (group-writable at 002): private all the same, as a
    # folder nobody else may enter (0700) lies above it
    assert stat.S_IMODE(job_folder.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE(job_folder.parent.stat().st_mode) == 0o700
    assert set(batch_ast.load_index(tmp_path / "r")["status"]) == {"ok"}


# --- 2. a group-shared root --------------------------------------------------------------------------


def test_a_root_made_in_a_setgid_project_folder_is_the_groups_whatever_the_umask(audio_dir, reachable_tmp):
    project = shared_folder(reachable_tmp)
    m = one_row(audio_dir)
    with umask(0o022):  # the colleague with a private umask
        assert (
            cli("submit", str(m), "--results", str(project / "r"), "--executor", "local", "--wait", "--quiet")
            == 0
        )
    group = project.stat().st_gid
    made = [p for p in (project / "r").rglob("*")] + [project / "r"]
    assert len(made) > 8
    for path in made:
        st = path.lstat()
        assert st.st_gid == group, path
        wanted = 0o2070 if stat.S_ISDIR(st.st_mode) else 0o060  # folders g+rwxs, files g+rw
        assert st.st_mode & wanted == wanted, (path, oct(st.st_mode))


def test_a_lock_file_this_user_may_not_write_still_locks(audio_dir, tmp_path):
    """A colleague at umask 022 left the lock files 0644: flock needs no write access."""
    results, _ = ok_root(audio_dir, tmp_path)
    for name in (".collect.lock", ".claims.lock"):
        (results.root / name).touch()
        (results.root / name).chmod(0o444)
    results.collect_state_path.unlink(missing_ok=True)
    assert batch_ast.collect(results.root).rows == 1
    with root_lock(results, ".claims.lock", wait_s=0):
        pass


def test_a_lock_held_for_ever_by_a_reader_is_named_after_a_bounded_wait(
    audio_dir, tmp_path, capsys, monkeypatch
):
    """H6: a member who can only read the root holds a shared flock on its lock file: collect,
    report and submit wait a bounded time, then name the lock; status takes no lock."""
    results, _ = ok_root(audio_dir, tmp_path)
    (results.root / ".claims.lock").touch()
    monkeypatch.setenv("BATCH_AST_LOCK_WAIT_S", "0.5")
    submit = [
        "submit",
        str(one_row(audio_dir, seeds=(5,))),
        "--results",
        str(results.root),
        "--executor",
        "local",
    ]
    for lock, command, code in (
        (".collect.lock", ["collect", str(results.root)], 2),
        (".collect.lock", ["report", str(results.root)], 0),  # the last index, said so
        (".claims.lock", submit, 2),
    ):
        fd = os.open(results.root / lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            assert cli(*command) == code
            err = capsys.readouterr().err
            assert lock in err and "held by another process" in err, err
            assert cli("status", str(results.root)) in (0, 1)  # no lock to be starved of
        finally:
            os.close(fd)


# --- 3. cold caches and read-only installs ----------------------------------------------------------


def test_a_row_runs_with_a_read_only_home_and_writes_nothing_there(audio_dir, reachable_tmp, tmp_path):
    home = reachable_tmp / "home"
    home.mkdir()
    home.chmod(0o555)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "NUMBA_", "MPLCONFIG"))}
    env.update(HOME=str(home), BATCH_AST_STATE_DIR=str(state / "batch-ast"))
    done = subprocess.run(
        [
            CLI,
            "submit",
            str(one_row(audio_dir)),
            "--results",
            str(tmp_path / "r"),
            "--executor",
            "local",
            "--wait",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(home.iterdir()) == []
    assert (state / "batch-ast" / "cache" / "numba").is_dir() and (
        state / "batch-ast" / "cache" / "matplotlib"
    ).is_dir()


def test_jobs_point_numba_and_matplotlib_into_the_state_folder_unless_the_user_did(tmp_path, monkeypatch):
    from batch_ast.private import use_private_caches

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mine"))
    use_private_caches(state)
    assert os.environ["NUMBA_CACHE_DIR"] == str(state / "cache" / "numba")
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "mine")
    assert stat.S_IMODE((state / "cache" / "numba").stat().st_mode) == 0o700


# --- 4. the newcomer's commands ----------------------------------------------------------------------


def test_make_demo_runs_locally_and_the_package_declares_its_assets():
    makefile = (REPO / "Makefile").read_text()
    assert "EXECUTOR ?= local" in makefile and "--executor $(EXECUTOR)" in makefile
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"batch_ast.report_assets"' in pyproject


# --- 5. round 4: what a group member plants in the shared root --------------------------------------


def test_h1_modules_planted_where_the_user_stands_never_run(audio_dir, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    marker = tmp_path / "ran"
    for package in ("submitit", "batch_ast"):
        (root / package).mkdir()
        (root / package / "__init__.py").write_text(f"open({str(marker / package)!r}, 'w')\n")
    marker.mkdir()
    done = run_cli(
        "submit", str(one_row(audio_dir)), "--results", str(root), "--executor", "local", "--wait", cwd=root
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(marker.iterdir()) == []
    assert set(batch_ast.load_index(root)["status"]) == {"ok"}


def test_h2_a_forged_index_with_matching_stamps_is_rebuilt_from_the_records(audio_dir, tmp_path):
    results, rid = ok_root(audio_dir, tmp_path)
    truth = batch_ast.load_index(results.root).set_index("id").loc[rid, "final_style"]
    table = pq.read_table(results.index_path)
    forged = table.set_column(table.schema.get_field_index("final_style"), "final_style",
                              pa.array([2e-9], pa.float64()))
    results.write(results.index_path, lambda fh: pq.write_table(forged, fh))
    # the strongest forger: the collect state (the user's own, in the private state folder) has
    # stamps that match the forged file; only the digest it keeps tells them apart
    state = json.loads(results.collect_state_path.read_text())
    st = results.index_path.stat()
    state["outputs"][0] = [st.st_mtime_ns, st.st_size, st.st_ino]
    results.collect_state_path.write_text(json.dumps(state))
    (results.root / ".cache").mkdir(exist_ok=True)
    (results.root / ".cache" / "collect.json").write_text(json.dumps(state))  # where versions < 0.4 kept it
    batch_ast.collect(results.root)
    assert batch_ast.load_index(results.root).set_index("id").loc[rid, "final_style"] == truth


def test_h3_a_planted_submission_and_claim_do_not_block_a_row(audio_dir, tmp_path, capsys):
    m = one_row(audio_dir)
    results = ResultsRoot(tmp_path / "r")
    assert cli("submit", str(m), "--results", str(results.root), "--dry-run") == 0
    rid = next(iter(batch_ast.api.prepare(m, results.root, "local", dry_run=True).plan.to_run)).id
    future = "20991231T235959.000000-abcdef"
    planted = {**submission_json(future, rid, "1", "/nowhere/submitit/" + future), "host": "elsewhere"}
    results.write_json(results.submissions_dir / f"{future}.json", planted)
    results.write_json(results.run_dir(rid) / "claim.json",
                       {"submission_id": future, "host": "elsewhere", "pid": 1, "created": time.time()})
    # a fresh claim of a queue nobody here can ask is believed for a while; --force takes it at once
    assert cli("submit", str(m), "--results", str(results.root), "--executor", "local", "--wait") == 0
    assert "in flight" in capsys.readouterr().out
    assert (
        cli("submit", str(m), "--results", str(results.root), "--executor", "local", "--wait", "--force") == 0
    )
    assert batch_ast.load_index(results.root).set_index("id").loc[rid, "status"] == "ok"
    capsys.readouterr()
    assert cli("status", str(results.root)) == 0
    out = capsys.readouterr().out
    assert future not in out.splitlines()[0]  # "latest" is the user's own newest, never a future id
    # and an old claim of such a submission is taken over without --force
    results.write_json(
        results.run_dir(rid) / "claim.json",
        {"submission_id": future, "host": "elsewhere", "pid": 1, "created": time.time() - 13 * 3600},
    )
    (results.run_dir(rid) / "record.json").unlink()
    assert (
        cli("submit", str(m), "--results", str(results.root), "--executor", "local", "--wait", "--quiet") == 0
    )


def test_h4_cancel_refuses_a_submission_that_copies_a_running_ones_folder(audio_dir, tmp_path, capsys):
    results = ResultsRoot(tmp_path / "r")
    sub = batch_ast.submit(endless_manifest(audio_dir), results.root, executor="local")
    try:
        wait_until(lambda: sub.status().counts.get("running"), "the row running")
        (real,) = valid_submissions(results)
        copy = {**real.to_dict(), "submission_id": "20261130T000000.000000-abcdef"}
        results.write_json(results.submissions_dir / "20261130T000000.000000-abcdef.json", copy)
        assert cli("cancel", str(results.root), "--submission", "20261130T000000.000000-abcdef") == 2
        assert "not yours to cancel" in capsys.readouterr().err
        assert sub.status().counts.get("running") == 1
    finally:
        sub.cancel()
    wait_until(lambda: not sub.backend.jobs_running(sub.jobs), "the job ended")
    assert sub.status().counts["cancelled"] == 1


def test_h5_a_trace_of_millions_of_rows_is_refused_from_its_footer(audio_dir, tmp_path):
    results, rid = ok_root(audio_dir, tmp_path)
    rows = batch_ast.index.MAX_TRACE_ROWS + 1
    bomb = pa.table({"iteration": pa.array(np.zeros(rows, np.int64)), "total": pa.array(np.zeros(rows))})
    results.write(results.trace_path(rid), lambda fh: pq.write_table(bomb, fh, compression="zstd"))
    assert results.trace_path(rid).stat().st_size < 1 << 20  # small on disk, a million rows inside
    report = batch_ast.collect(results.root)
    assert any("more than the" in s and "a trace may have" in s for s in report.skipped), report.skipped
    assert len(batch_ast.load_traces(results.root)) == 0


def test_h7_a_heartbeat_of_absurd_speed_or_time_is_shown_not_fatal():
    beat = Progress.from_json({"iteration": 1, "iterations": 10**9, "loss": 1.0, "iterations_per_s": 5e-324,
                               "updated": time.time() + 86400, "host": "n1"})
    line = beat.describe(time.time())
    assert "ETA" not in line and "dated in the future" in line
    slow = Progress.from_json({"iteration": 0, "iterations": 10**9, "loss": 1.0, "iterations_per_s": 1e-3,
                               "updated": time.time()})
    assert "ETA ≤ over 100 days" in slow.describe(time.time())


def test_h8_a_trace_value_at_the_edge_of_float_range_does_not_stop_the_report(audio_dir, tmp_path):
    results, rid = ok_root(audio_dir, tmp_path)
    trace = pq.read_table(results.trace_path(rid)).to_pandas()
    trace.loc[trace.index[-1], "total"] = 1.797e308
    results.write(results.trace_path(rid), lambda fh: trace.to_parquet(fh, index=False))
    assert cli("report", str(results.root)) == 0
    assert "Infinity" not in (results.root / "report.data.js").read_text()
    assert "Infinity" not in (results.root / "report.traces.js").read_text()


def test_h9_a_huge_sparse_input_is_never_hashed_for_a_portable_report(audio_dir, tmp_path, monkeypatch):
    results, rid = ok_root(audio_dir, tmp_path)
    huge = tmp_path / "huge.wav"
    with huge.open("wb") as fh:
        fh.truncate(30 << 30)  # 30 GB, sparse
    record = json.loads(results.record_path(rid).read_text())
    record["content"] = str(huge)
    results.write_json(results.record_path(rid), record)
    hashed = []
    real = batch_ast.report.file_sha256
    monkeypatch.setattr(batch_ast.report, "file_sha256", lambda p, *a: hashed.append(Path(p)) or real(p, *a))
    assert cli("report", str(results.root), "--portable") == 0
    assert huge not in hashed and hashed  # the style was hashed and copied; the 30 GB never


def test_h10_an_oversized_or_phantom_submission_floods_nothing(audio_dir, tmp_path, capsys, monkeypatch):
    results, rid = ok_root(audio_dir, tmp_path)
    monkeypatch.setenv("BATCH_AST_MAX_ROWS", "100")
    fake = [f"{i:016x}" for i in range(150)]
    big = {**submission_json("20261130T000001.000000-abcdef", fake[0], "1", "/x/submitit/y"),
           "rows": {r: i for i, r in enumerate(fake)}, "jobs": [{"job_id": "1", "rows": fake, "log": ""}]}
    results.write_json(results.submissions_dir / "20261130T000001.000000-abcdef.json", big)
    small = {
        **big,
        "submission_id": "20261130T000002.000000-abcdef",
        "rows": {r: i for i, r in enumerate(fake[:50])},
        "jobs": [{"job_id": "1", "rows": fake[:50], "log": ""}],
    }
    results.write_json(results.submissions_dir / "20261130T000002.000000-abcdef.json", small)
    subs, problems = read_submissions(results)
    assert any("150 rows, more than the 100" in p for p in problems)
    assert [s.submission_id for s in subs] == ["20261130T000002.000000-abcdef"]
    batch_ast.collect(results.root)
    assert list(batch_ast.load_index(results.root)["id"]) == [rid]  # no phantom rows


def test_h11_escape_sequences_from_the_root_are_printed_inert(audio_dir, tmp_path, capsys):
    results, rid = ok_root(audio_dir, tmp_path)
    (results.submissions_dir).mkdir(exist_ok=True)
    (results.submissions_dir / "\x1b[2J\x1b[Hfake.json").write_text("{")
    sub = {**submission_json("20261130T000003.000000-abcdef", "f" * 16, "1", "/x"),
           "host": "\x1b]0;pwned\x07"}
    results.write_json(results.submissions_dir / "20261130T000003.000000-abcdef.json", sub)
    cli("status", str(results.root), "--all")
    out = capsys.readouterr()
    assert "\x1b" not in out.out + out.err and "\\x1b[2J" in out.out + out.err


def test_h12_planted_report_files_are_moved_aside_not_fatal(audio_dir, tmp_path, capsys):
    results, _ = ok_root(audio_dir, tmp_path)
    os.mkfifo(results.root / "report.data.js")
    (results.root / "report-inputs").symlink_to(tmp_path)
    assert cli("report", str(results.root), "--portable") == 0
    assert (results.root / "report.data.js").read_text().startswith("window.BATCH_AST = ")
    assert (results.root / "report-inputs").is_dir() and not (results.root / "report-inputs").is_symlink()
    assert {p.name for p in results.root.glob("*.bad*")} >= {"report.data.js.bad", "report-inputs.bad"}


def test_h13_a_strangers_record_does_not_make_the_report_probe_its_paths(tmp_path):
    exists, missing = tmp_path / "exists.wav", tmp_path / "missing.wav"
    exists.write_bytes(b"x")
    base = {"status": "ok", "style": str(exists), "content_sha256": None, "style_sha256": None}
    df = pd.DataFrame([{**base, "id": "a" * 16, "content": str(exists), "record_uid": os.geteuid() + 1},
                       {**base, "id": "b" * 16, "content": str(missing), "record_uid": os.geteuid() + 1}])
    data = batch_ast.report.report_data(df, tmp_path, tmp_path)
    rows = [dict(zip(data["keys"], r, strict=False)) for r in data["rows"]]
    urls = [data["inputs"][r["ci"]] for r in rows]
    assert all(urls) and urls[0].endswith("exists.wav") and urls[1].endswith("missing.wav")
    mine = df.assign(record_uid=os.geteuid())
    data = batch_ast.report.report_data(mine, tmp_path, tmp_path)
    rows = [dict(zip(data["keys"], r, strict=False)) for r in data["rows"]]
    assert [data["inputs"][r["ci"]] is None for r in rows] == [False, True]  # the user's own: looked at


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None and os.environ.get("CI") != "true", reason="node is not installed")
def test_h14_the_filter_tokeniser_is_linear_and_joins_spaced_operators():
    """Runs the report's own tokeniser (report-filter.js) in node on a deep link's 2,000,000 spaces
    (the quadratic regex took 23 s on 160,000; 2,000,000 would take about an hour)."""
    script = (REPO / "batch_ast" / "report_assets" / "report-filter.js").read_text()
    start = script.index("const STARTS_WITH_OPERATOR")
    end = script.index("function parseTerms")
    code = (
        script[start:end]
        + """
const out = [filterTokens('status = ok  content_weight >1 x= 2 <3'),
             filterTokens(' '.repeat(2000000) + 'x').length];
console.log(JSON.stringify(out));"""
    )
    done = subprocess.run([NODE or "node", "-e", code], capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["status=ok", "content_weight>1", "x=2<3"], 1]


# --- root's own umask: one smoke test --------------------------------------------------------------


@pytest.mark.root_only
@pytest.mark.skipif(os.geteuid() != 0, reason="the root smoke test runs as root")
def test_as_root_at_umask_022_a_row_runs_and_its_files_are_world_readable(audio_dir, tmp_path):
    with umask(0o022):
        assert cli("submit", str(one_row(audio_dir)), "--results", str(tmp_path / "r"), "--executor", "local",
                   "--wait", "--quiet") == 0
    (record,) = (tmp_path / "r" / "runs").glob("*/record.json")
    assert stat.S_IMODE(record.stat().st_mode) == 0o644
    assert stat.S_IMODE(record.parent.stat().st_mode) == 0o755


# --- two users of one group, one root, the three-node cluster ---------------------------------------

USER_B = os.environ.get("BATCH_AST_TEST_USER_B", "")


def as_user_b(*command: str, mask: str = "022", cwd: str = "/") -> subprocess.CompletedProcess:
    """A command as the colleague (tests/as-user.sh lets this user sudo to them), with their umask
    and their own HOME and state folder."""
    home = os.path.expanduser(f"~{USER_B}")
    env = [f"HOME={home}", f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}", "LANG=C.UTF-8",
           f"BATCH_AST_STATE_DIR={home}/.local/state/batch-ast"]
    shell = f"umask {mask}; cd {cwd} && exec \"$@\""
    return subprocess.run(["sudo", "-n", "-u", USER_B, "env", "-i", *env, "bash", "-c", shell, "b", *command],
                          capture_output=True, text=True, timeout=3600)


@pytest.mark.slurm
@pytest.mark.skipif(not USER_B, reason="needs the second user of tests/as-user.sh (make test as root)")
def test_two_users_of_one_group_share_a_setgid_root_on_the_cluster(reachable_tmp):
    from batch_ast.backends import get_backend

    if not get_backend("slurm").available():
        pytest.fail("no SLURM controller answers") if os.environ.get("CI") == "true" else pytest.skip(
            "no SLURM"
        )
    inputs = reachable_tmp / "inputs"
    inputs.mkdir()
    for name, src in (("content.wav", "speech_gettysburg.wav"), ("style.wav", "boogie_marabi.wav")):
        shutil.copy(DEMO_AUDIO / src, inputs / name)
    m_a = one_row(inputs, "a.csv", seeds=(0, 1, 2, 3), iterations=60, patience=100000)
    m_b = one_row(inputs, "b.csv", seeds=(2, 3, 4, 5), iterations=60, patience=100000)
    for path in (inputs, *inputs.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    project = shared_folder(reachable_tmp)
    root = project / "study"
    state = reachable_tmp / "state-a"
    state.mkdir(mode=0o700)
    env_a = {"BATCH_AST_STATE_DIR": str(state / "batch-ast")}
    # both submit at once: A at umask 002, B at umask 022
    a = subprocess.Popen(
        [
            "bash",
            "-c",
            'umask 002; exec "$@"',
            "a",
            CLI,
            "submit",
            str(m_a),
            "--results",
            str(root),
            "--executor",
            "slurm",
            "--wait",
        ],
        env={**os.environ, **env_a},
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    b = as_user_b(CLI, "submit", str(m_b), "--results", str(root), "--executor", "slurm", "--wait")
    out_a = a.communicate(timeout=3600)[0]
    assert b.returncode == 0, b.stdout + b.stderr
    assert a.returncode == 0, out_a
    index = batch_ast.load_index(root)
    assert len(index) == 6 and set(index["status"]) == {"ok"}, index[["id", "status"]]
    # no row computed twice: one record per row, each written by one submission, owned by its writer
    subs = {s.submission_id: s for s in valid_submissions(ResultsRoot(root))}
    assert len(subs) == 2
    owners = {sid: (root / "submissions" / f"{sid}.json").stat().st_uid for sid in subs}
    assert set(owners.values()) == {os.geteuid(), int(subprocess.check_output(["id", "-u", USER_B]))}
    for _, row in index.iterrows():
        assert row["record_uid"] == owners[row["submission_id"]]
    first, second = subs.values()
    shared = set(index[index["seed"].isin([2, 3])]["id"])
    assert (
        len(shared) == 2
    )  # in both manifests: each ran in one submission; the other skipped it (in flight or done)
    for rid in shared:
        assert (rid in first.rows) != (rid in second.rows), rid
    # either collects, reports and follows after the other
    for command in (["collect", str(root)], ["report", str(root)], ["status", str(root)]):
        done_b = as_user_b(CLI, *command)
        assert done_b.returncode == 0, done_b.stdout + done_b.stderr
        done_a = run_cli(*command, env=env_a)
        assert done_a.returncode == 0, done_a.stdout + done_a.stderr
    # each cancels only their own
    b_sub = next(s for s, uid in owners.items() if uid != os.geteuid())
    refused = run_cli("cancel", str(root), "--submission", b_sub, env=env_a)
    assert refused.returncode == 2 and "not yours" in refused.stderr
    mine = next(s for s, uid in owners.items() if uid == os.geteuid())
    assert run_cli("cancel", str(root), "--submission", mine, env=env_a).returncode == 0


HIDDEN_FORMULAS = ["=1+1", " =1", "\n=cmd", "\u200b=x", "\u202e+x", "\uff1dSUM(A1)", "\t@x", "-2"]
PLAIN = ["abc", "a=b", " ok", "x-1"]


def test_held_spreadsheet_cells_behind_spaces_or_invisible_characters_are_quoted():
    from batch_ast.study import spreadsheet_safe

    assert all(spreadsheet_safe(t) == "'" + t for t in HIDDEN_FORMULAS)
    assert all(spreadsheet_safe(t) == t for t in PLAIN)


@pytest.mark.skipif(NODE is None and os.environ.get("CI") != "true", reason="node is not installed")
def test_held_the_reports_csv_export_quotes_the_same_cells():
    script = (REPO / "batch_ast" / "report_assets" / "report-widgets.js").read_text()
    start = script.index("const FORMULA")
    end = script.index("function exportRows")
    code = (
        script[start:end]
        + f"console.log(JSON.stringify({json.dumps(HIDDEN_FORMULAS + PLAIN)}.map(csvCell)));"
    )
    done = subprocess.run([NODE or "node", "-e", code], capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr
    cells = json.loads(done.stdout)
    quoted = [c.strip('"').startswith("'") for c in cells]
    assert quoted == [True] * len(HIDDEN_FORMULAS) + [False] * len(PLAIN), cells


def test_a_root_shared_with_a_group_one_is_not_in_is_named_at_submit(reachable_tmp, monkeypatch):
    """Files this user makes there could not be given the root's group: one line says what to do."""
    root = reachable_tmp / "r"
    root.mkdir()
    root.chmod(0o2775)
    monkeypatch.setattr(os, "geteuid", lambda: 4242)  # not root, in no group of the root's
    monkeypatch.setattr(os, "getgroups", lambda: [4242])
    monkeypatch.setattr(os, "getegid", lambda: 4242)
    from batch_ast.store import check_shared_root

    assert "which you are not in" in check_shared_root(root)
    monkeypatch.setattr(os, "getgroups", lambda: [root.stat().st_gid])
    assert check_shared_root(root) == ""


def test_a_lock_that_cannot_be_taken_at_all_is_named(tmp_path, monkeypatch):
    """NFS emulates flock with POSIX locks, which need a descriptor open for writing: a lock file
    another user made 0644 then gives EBADF, said in one line naming the file."""
    import batch_ast.store

    real = fcntl.flock

    def nfs_flock(fd, operation):
        if operation & fcntl.LOCK_EX:
            raise OSError(9, "Bad file descriptor")
        return real(fd, operation)

    monkeypatch.setattr(batch_ast.store.fcntl, "flock", nfs_flock)
    with pytest.raises(batch_ast.store.LockTimeout, match=r"\.claims\.lock: cannot be locked .*chmod g\+w"), \
            root_lock(ResultsRoot(tmp_path), ".claims.lock", wait_s=0):
        pass
