"""Integration tests on a three-node SLURM cluster on this machine (`slurm/start.sh --nodes 3`):
every node's slurmd runs in its own UTS and PID namespace, so a job on n2 sees hostname n2 and
its own pids, as on a real cluster. They cover what only several hosts have: rows spread over
hosts writing one results root, claims made on another host, a node lost under its rows.

Like tests/test_slurm.py they skip where no such cluster answers, except in CI (CI=true).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

import batch_ast
from batch_ast.cli import main
from batch_ast.record import record_dict
from batch_ast.store import ResultsRoot
from batch_ast.submissions import valid_submissions

from .conftest import LONG, REPO, long_rows, tiny_columns, write_manifest
from .test_slurm import cancel_own_jobs, slurm_submit, squeue_ids, wait_for  # noqa: F401 - an autouse fixture

pytestmark = pytest.mark.slurm

NODES = ("n1", "n2", "n3")
STATE = Path(os.environ.get("BATCH_AST_SLURM_STATE", "/var/lib/batch-ast-slurm"))


def node_states() -> dict[str, str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True)
    return dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)


def node_daemons() -> dict[str, int]:
    """{node: its slurmd's pid as this machine sees it}, from the marker slurm/start.sh writes."""
    try:
        lines = (STATE / "started-by-start.sh").read_text().splitlines()
    except OSError:
        return {}
    return {parts[1]: int(parts[2]) for parts in map(str.split, lines)
            if len(parts) == 3 and parts[0] == "slurmd" and parts[2].isdigit()}


@pytest.fixture(scope="module", autouse=True)
def three_nodes():
    """The cluster must be the three-node one this repository's script started (the tests kill
    its nodes): that is what `make test` starts, as root."""
    missing = None
    if os.geteuid() != 0 and not os.environ.get("BATCH_AST_TEST_ADMIN"):
        missing = ("these tests kill and restart nodes: they run as root, or as the user of tests/as-user.sh "
                   "(which may run tests/cluster-admin.sh through sudo)")
    elif set(node_states()) != set(NODES) or set(node_daemons()) != set(NODES):
        missing = "no three-node cluster of slurm/start.sh answers: run `sudo bash slurm/start.sh --nodes 3`"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {missing}")
        pytest.skip(missing)


@pytest.fixture(autouse=True)
def nodes_back():
    """After each test, every node is up again (a test that lost one, passed or not)."""
    yield
    if any(node_states().get(n) not in ("idle", "mixed", "allocated") for n in NODES) or any(
        open(f"/proc/{pid}/comm").read().strip() != "slurmd" if os.path.exists(f"/proc/{pid}") else True
        for pid in node_daemons().values()
    ):
        restart_lost_nodes()


def admin(*args: str) -> subprocess.CompletedProcess:
    """tests/cluster-admin.sh: as root directly, else through sudo (tests/as-user.sh allows exactly it)."""
    script = os.environ.get("BATCH_AST_TEST_ADMIN") or str(REPO / "tests" / "cluster-admin.sh")
    command = ["bash", script, *args] if os.geteuid() == 0 else ["sudo", "-n", script, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def restart_lost_nodes() -> None:
    """start.sh starts again the nodes of its cluster whose slurmd is gone, and resumes them."""
    done = admin("restart", str(len(NODES)))
    assert done.returncode == 0, done.stdout + done.stderr
    # start.sh saw them all up; a node may pass through "completing" as a job ends meanwhile
    wait_for(lambda: all(node_states().get(n) in ("idle", "mixed", "allocated") for n in NODES),
             what=f"three nodes up (now {node_states()})")


def lose_node(node: str) -> None:
    """The node dies: its slurmd is killed, which ends its namespace and every process of its jobs
    (SIGKILL, no warning signal); the controller is told at once instead of after SlurmdTimeout."""
    done = admin("lose-node", node)
    assert done.returncode == 0, done.stdout + done.stderr


def task_nodes(array_id: str) -> dict[str, str]:
    """{array task's job id (ARRAY_i): the node it runs on} for the running tasks of an array."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", array_id, "-t", "RUNNING", "-o", "%i %N"],
                         capture_output=True, text=True)
    return dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)


def row_logs(results: Path) -> str:
    """Every job log of the root's submissions, stdout and stderr."""
    texts = []
    for sub in valid_submissions(ResultsRoot(results)):
        texts += [p.read_text(errors="replace") for p in Path(sub.submitit_folder).rglob("*_log.*")]
    return "\n".join(texts)


def test_an_array_spreads_over_three_hosts_while_collect_and_status_read(audio_dir, tmp_path, capsys):
    """Twelve quick rows, two per array task; each task takes a node's two CPUs, so the first three
    start on three nodes at once. collect and status run over and over while the nodes write."""
    head, vals = tiny_columns()
    m = write_manifest(audio_dir, [f"content.wav,style.wav,{seed},{vals}" for seed in range(12)],
                       header=f"content,style,seed,{head}")
    results = tmp_path / "results"
    assert slurm_submit(m, results, "--rows-per-job", "2") == 0
    (sub,) = valid_submissions(ResultsRoot(results))
    array_id = sub.array_job_id
    assert len(sub.jobs) == 6
    reads = 0
    while any(i.split("_")[0] == array_id for i in squeue_ids()):  # the array is queued or running
        assert main(["collect", str(results), "--quiet"]) in (0, 1)
        assert main(["status", str(results)]) in (0, 1)
        reads += 1
    assert reads >= 1
    capsys.readouterr()
    assert main(["collect", str(results), "--quiet"]) == 0
    index = batch_ast.load_index(results)
    assert len(index) == 12 and set(index["status"]) == {"ok"}, index[["row", "status", "error"]]
    assert set(index["hostname"]) == set(NODES)
    assert main(["status", str(results)]) == 0
    assert "ok=12" in capsys.readouterr().out


def running_on(array_id: str) -> str:
    """The node the (one) task of ``array_id`` runs on, once it runs."""
    nodes = wait_for(
        lambda: list(task_nodes(array_id).values()), every_s=0.2, what="a running task", jobs=array_id
    )
    return nodes[0]


def long_row_checkpointed_on_a_node(audio_dir: Path, tmp_path: Path) -> tuple[Path, Path, Any, str, str]:
    """(manifest, results root, submission, row id, node) of a long row submitted to the cluster,
    once it runs on a node and has written a checkpoint (every 0.5 s)."""
    m = long_rows(audio_dir, 1, iterations=LONG)
    results = tmp_path / "results"
    assert slurm_submit(m, results, "--checkpoint-every", "0.5") == 0
    (sub,) = valid_submissions(ResultsRoot(results))
    rid = sub.jobs[0]["rows"][0]
    node = running_on(sub.array_job_id)
    wait_for(
        ResultsRoot(results).checkpoint_path(rid).exists,
        every_s=0.2,
        what="a checkpoint",
        jobs=sub.array_job_id,
    )
    return m, results, sub, rid, node


def test_a_lost_node_requeues_its_row_which_resumes_elsewhere_to_the_same_result(
    audio_dir, tmp_path, reference_wav
):
    """A long row's node dies (no warning signal) once the row has a checkpoint. SLURM requeues the
    task; it runs on another node and resumes from the checkpoint to the result of an uninterrupted
    run (same inputs, same threads), computed to completion once."""
    _, results, sub, rid, node = long_row_checkpointed_on_a_node(audio_dir, tmp_path)
    root = ResultsRoot(results)
    lose_node(node)
    record = wait_for(lambda: record_dict(root, rid), what="the record", jobs=sub.array_job_id)
    assert record["status"] == "ok", record.get("error")
    assert record["hostname"] in NODES and record["hostname"] != node and record["slurm_restart_count"] >= 1
    assert record["resumed_from_iteration"] > 0 and record["iterations_run"] == LONG
    np.testing.assert_allclose(sf.read(results / record["output"])[0], reference_wav, atol=2e-3)
    assert row_logs(results).splitlines().count(f"[row {rid}] ok") == 1  # computed to completion once


def test_claims_from_another_host_skip_a_row_in_flight_and_are_taken_over_when_node_and_job_are_gone(
        audio_dir, tmp_path, reference_wav):
    """Submission A (from this host) runs a long row on one node. The same manifest submitted from
    another node sees A's claim and skips the row. Then A's node dies and A is cancelled (reported
    lost): a third submit takes the claim over and resumes the row from its checkpoint, on a node
    that is still up, to the uninterrupted result."""
    m, results, a, rid, node = long_row_checkpointed_on_a_node(audio_dir, tmp_path)
    root = ResultsRoot(results)
    other = next(n for n in NODES if n != node)

    cli = Path(sys.executable).with_name("batch-ast")
    b = subprocess.run(
        [
            "srun",
            "-w",
            other,
            "-c",
            "1",
            "-t",
            "10",
            "sh",
            "-c",
            f"hostname && {cli} submit {m} --results {results} --executor slurm",
        ],
        capture_output=True,
        text=True,
    )
    assert b.returncode == 0, b.stdout + b.stderr
    assert b.stdout.splitlines()[0] == other  # it ran there, under that node's host name
    assert f"in flight in submission {a.submission_id}" in b.stdout and "nothing to run" in b.stdout, b.stdout
    assert len(valid_submissions(root)) == 1  # B submitted nothing

    lose_node(node)
    subprocess.run(["scancel", a.array_job_id], check=True)
    wait_for(
        lambda: not any(i.split("_")[0] == a.array_job_id for i in squeue_ids()), what="A out of the queue"
    )
    assert slurm_submit(m, results, "--wait") == 0  # C takes the claim over
    record = record_dict(root, rid)
    assert record["status"] == "ok" and record["submission_id"] != a.submission_id, record.get("error")
    assert record["hostname"] in NODES and record["hostname"] != node and record["resumed_from_iteration"] > 0
    np.testing.assert_allclose(sf.read(results / record["output"])[0], reference_wav, atol=2e-3)


def processes_naming(text: str) -> list[int]:
    """Pids (as this machine sees them, every node's included) whose command line names ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode("utf-8", "replace"):
                found.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            continue
    return found


def test_a_local_submission_on_another_host_is_running_there_not_lost(
    audio_dir, tmp_path, private_state, capsys
):
    """`submit --executor local` run on n1 (inside a batch job there): its jobs are n1's processes.
    From this host, status must not call its rows lost (their pids mean nothing here), a second
    submit must skip them as in flight instead of computing them twice, and cancel must say where
    to cancel — and there, on n1, it cancels. (scancel of the batch job alone would leave the local
    executor's processes running: orphaned to the node's init, they escape proctrack/linuxproc.)"""
    m = long_rows(audio_dir, 1, iterations=20 * LONG)
    results = tmp_path / "results"
    cli = Path(sys.executable).with_name("batch-ast")
    script = private_state / "local-on-n1.sh"  # in the private state: cancel_own_jobs finds the job
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!/bin/sh\nexec {cli} submit {m} --results {results} --executor local --quiet\n")
    script.chmod(0o700)
    done = subprocess.run(
        ["sbatch", "--parsable", "-w", "n1", "-c", "1", "-o", str(tmp_path / "n1.out"), str(script)],
        capture_output=True,
        text=True,
        check=True,
    )  # one CPU: n1 keeps one for the cancel
    job = done.stdout.strip().split(";")[0]
    root = ResultsRoot(results)
    (a,) = wait_for(lambda: valid_submissions(root), every_s=0.2, what="the local submission", jobs=job)
    assert a.executor == "local" and a.host == "n1"
    rid = a.jobs[0]["rows"][0]

    capsys.readouterr()
    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "pending=1" in out and "lost=" in out and "lost=0" in out
    assert "its local jobs run on host n1" in out
    assert slurm_submit(m, results, "--no-wait") == 0  # B, from this host
    assert len(valid_submissions(root)) == 1 and record_dict(root, rid) is None  # B submitted nothing
    assert main(["cancel", str(results)]) == 2
    assert "runs local jobs on host n1: cancel it there" in capsys.readouterr().err
    there = subprocess.run(
        ["srun", "-w", "n1", "-c", "1", "-t", "10", str(cli), "cancel", "--results", str(results)],
        capture_output=True,
        text=True,
    )
    assert there.returncode == 0 and "cancelled 1 job(s)" in there.stdout, there.stdout + there.stderr
    wait_for(
        lambda: not processes_naming(str(private_state)), what="the local job's processes gone", jobs=job
    )
    wait_for(lambda: job not in squeue_ids(), what="the batch job ended (its submit saw the cancel)")
