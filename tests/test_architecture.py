"""The typed values the stages pass each other (Params, Network, Record), the executor backends
seen from inside a job, and the Python API that the CLI is a layer over."""

from __future__ import annotations

import dataclasses
import json
import pickle
import signal
import socket
import subprocess
import sys

import pytest
import submitit
import torch

import batch_ast
import batch_ast.features as features_module
import batch_ast.job
from batch_ast.backends import job_environment, preemption_signal
from batch_ast.config import PARAMS, ConfigError, Params, load_config
from batch_ast.features import Network, random_filters
from batch_ast.index import INDEX_SCHEMA, METRIC_COLUMNS
from batch_ast.loop import run_row, run_rows
from batch_ast.manifest import load_manifest
from batch_ast.plan import make_plan
from batch_ast.record import Record, columns
from batch_ast.store import ResultsRoot

from .conftest import REPO, TINY, tiny_columns, write_manifest


def tiny_manifest(folder, rows=("content.wav,style.wav",), **extra):
    head, vals = tiny_columns(**extra)
    return write_manifest(folder, [f"{r},{vals}" for r in rows], header=f"content,style,{head}")


# --- Params -------------------------------------------------------------------------------------

def test_params_are_a_validated_frozen_value_with_every_registered_hyperparameter():
    p = load_config().params(TINY)
    assert [f.name for f in dataclasses.fields(Params)] == list(PARAMS)
    assert p.n_fft == 256 and p.n_bins == 129 and not p.beat_segmented
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seed = 3  # type: ignore[misc]
    assert p.replace(seed="7").seed == 7  # coerced like a manifest cell
    with pytest.raises(ConfigError, match="lr: must be a number > 0"):
        p.replace(lr=0)
    with pytest.raises(ConfigError, match="unknown \\['nope'\\]"):
        Params.from_mapping({**p.to_dict(), "nope": 1})
    with pytest.raises(ConfigError, match="missing \\['seed'\\]"):
        Params.from_mapping({k: v for k, v in p.to_dict().items() if k != "seed"})
    assert Params.from_mapping(p.to_dict()) == p
    older = {k: v for k, v in p.to_dict().items() if k not in ("precision", "bpm")}  # a record from before
    assert Params.from_record(older) == p


def test_a_network_is_what_decides_the_weights_and_nothing_else():
    p = load_config().params(TINY)
    net = Network.of(p)
    assert net.key() == p.network_key()  # what a plan groups rows by, without torch
    assert net.key() == Network.of(p.replace(content_weight=9.0, optimizer="adam", iterations=3)).key()
    assert net.key() != Network.of(p.replace(seed=1)).key()
    torch.testing.assert_close(net.weights(), random_filters(129, 64, 5, p.seed), rtol=0, atol=0)
    held = net.heldout()
    assert held.seed != net.seed and held.key()[:3] == net.key()[:3]


def test_the_job_builds_a_groups_network_once_and_hands_it_to_every_row(audio_dir, tmp_path, monkeypatch):
    results = ResultsRoot(tmp_path / "results")
    m = tiny_manifest(audio_dir, ["content.wav,style.wav", "content2.wav,style.wav"], iterations=3)
    specs = make_plan(load_manifest(m, load_config()), results, m).to_run
    built = []
    real = Network.weights

    def counting(self, device="cpu"):
        built.append(self.seed)
        return real(self, device)

    monkeypatch.setattr(features_module.Network, "weights", counting)
    records = run_rows(specs, results)
    assert [r["status"] for r in records] == ["ok", "ok"]
    seed = specs[0].params.seed
    assert built.count(seed) == 1  # the optimised network: once for the group
    assert len(built) == 3  # plus each row's held-out network for its metrics


def test_a_row_over_its_memory_budget_is_refused_before_the_network_is_built(
    audio_dir, tmp_path, monkeypatch
):
    """The budget exists to refuse a row before allocating it: the network is its largest tensor."""
    results = ResultsRoot(tmp_path / "results")
    m = tiny_manifest(audio_dir, ["content.wav,style.wav"], max_memory_gb=0.0001)
    (spec,) = make_plan(load_manifest(m, load_config()), results, m).to_run
    built = []
    monkeypatch.setattr(features_module.Network, "weights", lambda self, device="cpu": built.append(self))
    record = run_row(spec, results)
    assert record["status"] == "failed" and "MemoryBudgetError" in record["error"]
    assert built == [] and record["device_used"] == "cpu"


# --- Record -------------------------------------------------------------------------------------

def test_a_record_refuses_fields_it_does_not_declare():
    record = Record(id="abc")
    record.update(final_total=1.5, traceback="...")
    assert record.to_dict()["final_total"] == 1.5 and "warning" not in record.to_dict()  # None: not written
    with pytest.raises(KeyError, match="no field.*'finl_total'"):
        record.update(finl_total=1.0)


def test_the_index_schema_and_metric_columns_come_from_the_record():
    declared = [f.name for f in dataclasses.fields(Record)]
    record_only = {"traceback", "resources", "content_beat_times", "style_beat_times"}
    expected = []
    for name in declared:
        if name == "params":
            expected += list(PARAMS)
        elif name not in record_only:
            expected.append(name)
    assert INDEX_SCHEMA.names == expected
    assert METRIC_COLUMNS == columns("metric") and "style_distance_heldout" in METRIC_COLUMNS


def test_every_key_a_real_row_writes_is_a_declared_record_field(audio_dir, tmp_path):
    """A key the job writes but Record does not declare would be dropped on its way to the index."""
    results = ResultsRoot(tmp_path / "results")
    m = tiny_manifest(audio_dir, ["content.wav,style.wav"], iterations=2)
    (spec,) = make_plan(load_manifest(m, load_config()), results, m).to_run
    ok = run_row(spec, results)
    failing = dataclasses.replace(spec, id="f" * 16, content=str(audio_dir / "gone.wav"))
    failed = run_row(failing, results)
    assert ok["status"] == "ok" and failed["status"] == "failed" and failed["traceback"]
    declared = {f.name for f in dataclasses.fields(Record)}
    for written in (ok, failed):
        on_disk = json.loads(results.record_path(written["id"]).read_text())
        assert set(on_disk) <= declared, set(on_disk) - declared
    assert set(METRIC_COLUMNS) <= set(ok)  # every metric column is filled by a real row


# --- backends seen from a job -------------------------------------------------------------------

def test_outside_a_job_the_environment_is_just_the_host(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert job_environment() == {
        "hostname": socket.gethostname(),
        "slurm_job_id": "",
        "slurm_array_task_id": "",
        "slurm_restart_count": 0,
    }
    assert preemption_signal() == signal.SIGUSR2
    monkeypatch.setattr(submitit.JobEnvironment, "USR_SIG", "USR1")  # $SUBMITIT_PREEMPT_SIGNAL at import
    assert preemption_signal() == signal.SIGUSR1


def test_a_local_job_records_its_host_and_no_cluster_ids(tmp_path):
    executor = batch_ast.backends.get_backend("local").make_executor(tmp_path / "%j", {})
    fields = executor.submit(job_environment).result()
    assert fields["hostname"] == socket.gethostname() and fields["slurm_job_id"] == ""


# --- the Python API -----------------------------------------------------------------------------

def test_submit_from_python_wait_status_index_and_find_again(audio_dir, tmp_path):
    m = tiny_manifest(audio_dir, ["content.wav,style.wav", "content2.wav,style.wav"], iterations=3)
    results = tmp_path / "results"
    prepared = batch_ast.prepare(m, results, executor="local", dry_run=True)
    assert len(prepared.plan.to_run) == 2 and prepared.backend.name == "local" and not results.exists()
    sub = batch_ast.submit(m, results, executor="local")
    seen = []
    final = sub.wait(on_progress=lambda status: seen.append(dict(status.counts)), poll_s=0.2)
    assert final.counts["ok"] == 2 and not final.active and seen[-1] == {"ok": 2}
    index = sub.index()
    assert list(index["status"]) == ["ok", "ok"] and set(index["id"]) == set(sub.row_ids())
    again = batch_ast.find_submission(results)
    assert again.id == sub.id and again.status().counts["ok"] == 2
    assert again.cancel() == []  # nothing left to cancel
    report = batch_ast.root_status(results)  # what `batch-ast status` prints, from the API
    assert [st.counts["ok"] for st in report.statuses] == [2] and report.older == 0 and not report.any_failed
    # the same manifest again: nothing to run, and the rows are still this manifest's
    nothing = batch_ast.submit(m, results, executor="local", wait=True)
    assert nothing.record is None and len(nothing.plan.done) == 2 and len(nothing.index()) == 2
    (results / "submissions" / "20990101T000000-abcdef.json").write_text("{}")  # not a submission
    report = batch_ast.root_status(results, every=True)
    assert (
        len(report.statuses) == 1
        and report.older == 0
        and "20990101T000000-abcdef.json" in report.problems[0]
    )


class CrashingJob(batch_ast.job.TransferJob):
    """A job that dies as a whole (not a row's failure): what a broken node or environment does."""

    def __call__(self, specs, root):
        raise RuntimeError("node on fire")


def test_debug_submissions_run_in_process_and_crashed_jobs_are_reported(audio_dir, tmp_path, monkeypatch):
    m = tiny_manifest(audio_dir, ["content.wav,style.wav"], iterations=2)
    sub = batch_ast.submit(m, tmp_path / "results", executor="debug", wait=True)
    assert sub.status().counts["ok"] == 1 and sub.job_errors == []
    prepared = batch_ast.prepare(m, tmp_path / "results", executor="local", force=True)
    # jobs start in their private folder with a safe path: the test's own class is found the way a
    # user's would be, through PYTHONPATH
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    prepared.job = CrashingJob()
    broken = prepared.launch()
    final = broken.wait(poll_s=0.2)
    assert final.counts["lost"] == 1  # its job left the queue without a record
    assert len(broken.job_errors) == 1 and "node on fire" in broken.job_errors[0]


def test_a_job_pickled_by_the_previous_version_still_unpickles():
    """A SLURM job requeued across an upgrade re-runs the pickle written at submission."""
    job = batch_ast.job.TransferJob.__new__(batch_ast.job.TransferJob)
    job.__setstate__({"submission_id": "s1", "force": True, "checkpoint_every_s": 60.0, "max_resumes": 3,
                      "batch_rows": 2})
    options = job.options
    assert (options.submission_id, options.checkpoint_every_s, options.max_retries) == ("s1", 60.0, 3)
    assert job.force and job.batch_rows == 2
    again = pickle.loads(pickle.dumps(job))
    assert again.options == job.options and again.force and again.batch_rows == 2
    # pickled by 0.3 (RunOptions, its knob still called max_resumes)
    job.__setstate__(
        {
            "options": {
                "submission_id": "s2",
                "checkpoint_every_s": 5.0,
                "max_resumes": 4,
                "time_limit_s": 0.0,
                "limit_warning_s": 0.0,
            },
            "force": False,
            "batch_rows": 1,
            "processes": 2,
            "finish_in_background": None,
            "threads": None,
        }
    )
    assert (job.options.submission_id, job.options.max_retries, job.processes) == ("s2", 4, 2)


def test_a_jobs_process_starts_without_torch_or_pandas():
    """What every array task imports before its first row (``python -m batch_ast.job_entry``, the
    job and, with --processes-per-job, the pool that hands rows to row processes) stays light:
    torch and pandas come with the rows (measured: pandas alone cost 0.45 s per task)."""
    import subprocess
    import sys

    code = ("import sys, batch_ast.job_entry, batch_ast.job, batch_ast.pool, batch_ast.backends; "
            "print(sorted(m for m in ('torch', 'pandas', 'librosa') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- layering -----------------------------------------------------------------------------------

# The package's modules from the bottom up: a module imports only from its own layer or below
# (the README's module table follows this order). Within a layer there is no cycle either.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("foundation", frozenset({"text", "version", "private", "runopts", "backends", "usage"})),
    ("files", frozenset({"store"})),
    ("schemas", frozenset({"config", "progress", "claims", "record"})),
    ("numeric core", frozenset({"features", "losses", "audio", "phase", "transfer", "metrics", "figures",
                                "batched", "rhythm", "gpu_usage"})),
    ("inputs", frozenset({"manifest", "study", "plan"})),
    ("row", frozenset({"checkpoint", "row"})),
    ("job", frozenset({"loop", "pool", "job"})),
    ("submission", frozenset({"options", "submissions", "dispatch", "status", "liveness", "index",
                              "freshness", "costing"})),
    ("api", frozenset({"api"})),
    ("people", frozenset({"report", "analysis", "cli", "__init__", "__main__", "job_entry", "exporting",
                          "export_aim", "export_mlflow", "export_tensorboard", "export_wandb"})),
)
# Imports from a lower layer to a higher one that are allowed, each with its reason (at most 2).
UPWARD: dict[tuple[str, str], str] = {}
PACKAGE = REPO / "batch_ast"


def package_imports() -> list[tuple[str, str, int, bool, str]]:
    """(importer, imported, line, function-local, the source line and the one above it) for every
    import of one of the package's own modules, read from the code (TYPE_CHECKING blocks left out)."""
    import ast

    modules = {p.stem for p in PACKAGE.glob("*.py")}
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1 and node.module:
                targets = [node.module.split(".")[0]]
            elif node.level == 1:
                targets = [a.name for a in node.names]
            elif node.module and node.module.startswith("batch_ast."):
                targets = [node.module.split(".")[1]]
            else:
                continue
            local, type_only, up = False, False, node
            while up in parents:
                up = parents[up]
                local = local or isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef))
                type_only = type_only or (isinstance(up, ast.If) and "TYPE_CHECKING" in ast.unparse(up.test))
            text = "\n".join(lines[max(0, node.lineno - 2):node.end_lineno])
            found += [
                (path.stem, t, node.lineno, local, text) for t in targets if t in modules and not type_only
            ]
    return found


def test_every_module_has_a_layer_and_imports_only_from_its_layer_or_below():
    layer_of = {m: i for i, (_, members) in enumerate(LAYERS) for m in members}
    assert sorted(layer_of) == sorted(p.stem for p in PACKAGE.glob("*.py")), "a module without a layer"
    upward = {(a, b) for a, b, *_ in package_imports() if layer_of[b] > layer_of[a]}
    assert upward <= set(UPWARD), (
        f"imports from a lower layer to a higher one: {sorted(upward - set(UPWARD))}"
    )
    assert len(UPWARD) <= 2


def test_the_package_has_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for a, b, *_ in package_imports():
        if a != b:
            graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    cycles = sorted(a for a in graph if reaches(a, a, set()))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_a_function_local_import_of_the_package_says_why_and_is_not_redundant():
    """Only import cost justifies importing one of our modules inside a function (never a cycle),
    and the line says so; a module already imported at the top is not imported again below."""
    imports = package_imports()
    at_top = {(a, b) for a, b, _, local, _ in imports if not local}
    for importer, imported, line, local, text in imports:
        if local:
            assert "import cost" in text, f"batch_ast/{importer}.py:{line} imports {imported} locally: why?"
            assert (importer, imported) not in at_top, (
                f"batch_ast/{importer}.py:{line}: {imported} is at the top"
            )


def test_no_function_is_longer_than_80_lines_and_lines_keep_the_declared_length():
    import ast
    import re

    lint = (REPO / "pyproject.toml").read_text().split("[tool.ruff.lint]")[1].split("\n[")[0]
    assert re.search(r'select = \[[^]]*"E"', lint) and "E501" not in lint  # ruff checks the declared length
    long = []
    for folder in ("batch_ast", "benchmarks", "tests"):
        for path in sorted((REPO / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > 80:
                        long.append(f"{folder}/{path.name}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_the_command_line_loads_no_stage_it_does_not_run():
    """`batch-ast` imports pandas, the index and the report only in the commands that use them:
    every command paid 0.7 s for them, and `report` with nothing new takes less than that."""
    code = ("import sys, batch_ast.cli; "
            "print(sorted(m for m in ('pandas', 'torch', 'matplotlib', 'batch_ast.api', 'batch_ast.index', "
            "'batch_ast.report', 'batch_ast.analysis') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
