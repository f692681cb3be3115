"""The ``export`` section: a study of real rows exported to each tracker, as a user runs it.

One ``quick`` row is run by the real job code on the demo clips (its trace as long as early
stopping makes it), then copied into a study of N rows (``grow_study``: each its own record and
trace, audio and figures hard-linked). Each target is exported by ``batch-ast export`` in a child
process, timed whole (start-up and imports included) with its peak memory, then exported again
with nothing changed. The reference, measured in the same run, is ``collect`` of the same study.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import DEMO, Result
from benchmarks.pipeline import grow_study, row_record

TARGETS = ("mlflow", "tensorboard", "aim", "wandb")


# The child reports its own high-water mark (VmHWM, reset at exec): the rusage a parent gets
# (wait4, RUSAGE_CHILDREN) counts the forked parent's pages from before the exec, so a child of
# this torch-holding benchmark would always seem as large as it.
_CHILD = ("import sys; from batch_ast.cli import main; rc = main(sys.argv[1:]); "
          "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]; "
          "print('peak_kib', hwm[0].split()[1] if hwm else 0, file=sys.stderr); sys.exit(rc)")


def _child(args: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of ``batch-ast ARGS`` in a fresh process."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, *args], check=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    peak = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("peak_kib ")]
    return wall, int(peak[-1]) * 1024 if peak else 0


# Aim's SDK alone, as this export's floor: runs of a scratch repository with the hyperparameters
# only, then with the same trace (three losses a step, one ``track`` call a step: Aim has no call
# that takes several steps), each closed and indexed, in a fresh process.
_AIM_FLOOR = """
import os, shutil, sys, tempfile, time
from aim import Repo, Run
from aim.sdk.index_manager import RepoIndexManager
steps, runs = int(sys.argv[1]), int(sys.argv[2])
folder = tempfile.mkdtemp()
repo = Repo.from_path(folder, init=True)
indexer = RepoIndexManager.get_index_manager(repo)
for label, n in (("empty", 0), ("trace", steps)):
    t0 = time.perf_counter()
    for i in range(runs):
        run = Run(repo=repo, experiment="floor", system_tracking_interval=None,
                  capture_terminal_logs=False, log_system_params=False)
        run["hparams"] = {"content_weight": 1.0, "optimizer": "lbfgs", "seed": i}
        for step in range(n):
            run.track({"loss_total": 1.0 / (step + 1), "loss_content": 0.5, "loss_style": 0.25},
                      step=step, context={"subset": "trace"})
        run.close()
        indexer.index(run.hash)
    print(label, (time.perf_counter() - t0) / runs, flush=True)
shutil.rmtree(folder, ignore_errors=True)
os._exit(0)  # Aim's exit-time flush of a repository that is gone would wait for ever
"""


def aim_sdk_floor(steps: int, runs: int = 100) -> dict[str, float]:
    """Seconds a run of Aim's SDK takes, empty and with a ``steps``-step trace (see _AIM_FLOOR)."""
    done = subprocess.run([sys.executable, "-c", _AIM_FLOOR, str(steps), str(runs)], check=True,
                          capture_output=True, text=True)
    return {line.split()[0]: float(line.split()[1]) for line in done.stdout.splitlines() if line.strip()}


def bench_export(n_rows: int, targets: tuple[str, ...] = TARGETS) -> list[Result]:
    from batch_ast.index import update_index

    out: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "one"
        record = row_record(torch.device("cpu"), DEMO / "speech_gettysburg.wav", DEMO / "boogie_marabi.wav",
                            "quick", folder)
        root = folder / "results"
        grow_study(root, n_rows)
        t0 = time.perf_counter()
        update_index(root)
        collect_s = time.perf_counter() - t0
        steps = int(record["iterations_run"])
        for target in targets:
            dest = Path(tmp) / target
            args = ["export", str(root), "--to", target, "--dir", str(dest), "--quiet"]
            wall, peak = _child(args)
            again, _ = _child(args)
            per_row = wall / n_rows
            out.append(Result(
                "export", f"{target}: {n_rows} rows, each {steps + 1} trace steps, audio and figures",
                wall, "s", reference=collect_s, ratio=wall / collect_s,
                note=(f"{per_row * 1000:.0f} ms a row; again with nothing changed {again:.1f} s; peak RSS "
                      f"{peak / 2**20:.0f} MiB; reference: collect of the same rows {collect_s:.1f} s"),
                details={"again_s": again, "peak_rss_bytes": peak, "rows": n_rows, "trace_steps": steps + 1}))
            if target == "aim":
                floor = aim_sdk_floor(steps + 1)
                out.append(Result(
                    "export", f"aim: its SDK alone, a run with a {steps + 1}-step trace (one process)",
                    floor["trace"] * 1000, "ms", reference=per_row * 1000, ratio=floor["trace"] / per_row,
                    note=(f"an empty run {floor['empty'] * 1000:.0f} ms; {n_rows} such runs "
                          f"{floor['trace'] * n_rows:.0f} s in one process; reference: the export's "
                          f"{per_row * 1000:.0f} ms a row (its workers included)"),
                    details=floor))
    return out
