"""slurm/start.sh and slurm/stop.sh on a machine shared with other work: they stop only what they
started (the marker), never someone else's daemons or jobs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from batch_ast.backends import get_backend

from .conftest import REPO

pytestmark = [
    pytest.mark.root_only,
    pytest.mark.skipif(os.geteuid() != 0, reason="the cluster scripts run as root"),
]


def script(name: str, state, args: tuple[str, ...] | list[str] = (), **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "slurm" / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BATCH_AST_SLURM_STATE": str(state), **env},
    )


def test_stop_stops_only_daemons_its_marker_names_and_that_are_slurm_daemons(tmp_path):
    """A marker naming a process that is not a SLURM daemon (a pid reused by another program) and
    a pid that is gone: stop.sh kills nothing, cancels nothing, and says so."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        (tmp_path / "started-by-start.sh").write_text(f"slurmctld {bystander.pid}\nslurmd n1 999999999\n")
        was_up = get_backend("slurm").available()
        done = script("stop.sh", tmp_path)
        assert done.returncode == 0, done.stderr
        assert "nothing that slurm/start.sh started is running" in done.stdout
        assert bystander.poll() is None  # still alive
        assert not (tmp_path / "started-by-start.sh").exists()
        assert get_backend("slurm").available() == was_up  # a cluster this marker did not start still runs
    finally:
        bystander.kill()
        bystander.wait()


def test_start_leaves_a_cluster_that_already_answers_and_claims_nothing(tmp_path):
    if not get_backend("slurm").available():
        pytest.skip("no cluster answers here to leave alone")
    done = script("start.sh", tmp_path)
    assert done.returncode == 0 and "already running" in done.stdout, done.stdout + done.stderr
    assert not (tmp_path / "started-by-start.sh").exists()  # so stop.sh with this state stops nothing


@pytest.mark.parametrize("nodes", ["0", "three", "100", ""])
def test_start_refuses_a_bad_node_count_before_touching_anything(tmp_path, nodes):
    done = script("start.sh", tmp_path, args=["--nodes", nodes])
    assert done.returncode == 2 and "--nodes takes a number of nodes from 1 to 99" in done.stderr, done.stderr
    assert not any(tmp_path.iterdir())  # no marker, no state
