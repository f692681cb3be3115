"""Backends, executor choice, profiles, packing and row states (no cluster needed)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import pytest

from batch_ast import backends
from batch_ast.backends import BackendError, choose_backend, get_backend, local_gpu_passthrough
from batch_ast.cli import build_parser
from batch_ast.dispatch import job_parameters
from batch_ast.options import (
    OPTIONS,
    DispatchError,
    SubmitOptions,
    find_profile,
    from_arguments,
    load_profile,
    user_profile_path,
)
from batch_ast.status import submission_status, unfinished_jobs
from batch_ast.submissions import SubmissionRecord


def _make_executor(kind: str, folder: Path, params: dict):
    return get_backend(kind).make_executor(folder, params)

REPO = Path(__file__).resolve().parents[1]


def srun_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit's SlurmExecutor wants an srun on PATH even to check parameter names; where SLURM
    is not installed (a GPU machine) a stand-in does, since nothing is submitted."""
    if not shutil.which("srun"):
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / "bin" / "srun").chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")


def test_auto_falls_back_to_local_and_says_why(monkeypatch):
    monkeypatch.setattr(backends.SlurmBackend, "available", lambda self: False)
    backend, why = choose_backend("auto")
    assert backend.name == "local" and "local executor" in why
    with pytest.raises(BackendError, match="no SLURM controller answers"):
        choose_backend("slurm")
    monkeypatch.setattr(backends.SlurmBackend, "available", lambda self: True)
    assert choose_backend("auto")[0].name == "slurm"
    with pytest.raises(BackendError, match="unknown executor 'pbs'"):
        get_backend("pbs")


def test_example_profile_maps_to_valid_submitit_parameters(tmp_path, monkeypatch):
    srun_on_path(tmp_path, monkeypatch)
    params, packing, limit = job_parameters(load_profile(REPO / "slurm" / "profile.example.yaml"))
    assert params["slurm_partition"] == "gpu" and params["slurm_array_parallelism"] == 50
    assert packing.batch_rows == 1 and params["slurm_mail_type"] == "FAIL" and limit == 5
    executor = _make_executor("slurm", tmp_path, params)  # submitit rejects unknown names
    assert executor.cluster == "slurm"


def test_bad_profiles_are_clear(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("partitoin: gpu\n")
    with pytest.raises(DispatchError, match="unknown profile key"):
        load_profile(bad)
    bad.write_text("- a\n")
    with pytest.raises(DispatchError, match="must be a YAML mapping"):
        load_profile(bad)


def test_default_packing():
    assert get_backend("slurm").rows_per_job(10, workers=1) == 1
    assert get_backend("local").rows_per_job(10, workers=1) == 10
    assert get_backend("local").rows_per_job(10, workers=3) == 4


def test_job_parameters_put_the_options_over_the_profile_and_check_them():
    profile = {"partition": "gpu", "timeout_min": 30, "rows_per_job": 4, "batch_rows": 2}
    options = SubmitOptions(timeout_min=90, gpus=1, array_parallelism=5, max_retries=3).check()
    params, packing, limit = job_parameters(profile, options)
    assert params == {"slurm_partition": "gpu", "timeout_min": 90, "gpus_per_node": 1,
                      "slurm_array_parallelism": 5, "slurm_max_num_timeout": 3}
    assert (packing.rows_per_job, packing.batch_rows, packing.max_array_size, limit) == (4, 2, 1000, 3)
    assert job_parameters({"max_retries": 2})[2] == 2  # the profile's requeue cap bounds resumes
    assert job_parameters({})[1].rows_per_job is None  # the backend decides
    with pytest.raises(
        DispatchError, match="rows_per_job must be an integer >= 1.*timeout_min must be an integer >= 1"
    ):
        SubmitOptions(rows_per_job=0, timeout_min=0).check()


def test_one_declaration_per_option_and_older_profile_names_still_read(tmp_path):
    """The CLI, the API and the profile derive from ``options.OPTIONS``: one name per knob."""
    parser = build_parser()
    submit = next(a for a in parser._subparsers._group_actions[0].choices["submit"]._actions
                  if a.dest == "max_retries")
    assert submit.option_strings == ["--max-retries"]
    assert [f.name for f in dataclasses.fields(SubmitOptions)] == [
        o.name for o in OPTIONS if "cli" in o.where
    ]
    old = tmp_path / "old.yaml"
    old.write_text("gpus_per_node: 1\nmax_num_timeout: 2\n")  # the names before 0.4
    assert load_profile(old) == {"gpus": 1, "max_retries": 2}
    old.write_text("gpus_per_node: 1\ngpus: 2\n")
    with pytest.raises(DispatchError, match="gpus is given twice"):
        load_profile(old)
    old.write_text("mem_gb: lots\nforce: true\n")  # force is the command's, not a profile's
    with pytest.raises(DispatchError, match="unknown profile key.*'force'.*mem_gb must be a number of GB"):
        load_profile(old)
    args = parser.parse_args(
        ["submit", "m.csv", "--checkpoint-every", "5", "--gpus", "0", "--no-finish-in-background"]
    )
    assert from_arguments(args) == SubmitOptions(checkpoint_every_s=5.0, gpus=0, finish_in_background=False)


def test_row_states_come_from_records_then_the_queue():
    """submission_status is pure: records and the backend's queue states in, row states out."""
    jobs = [{"job_id": "7_0", "rows": ["a"], "log": ""}, {"job_id": "7_1", "rows": ["b"], "log": ""},
            {"job_id": "7_2", "rows": ["c", "d"], "log": ""}]
    sub = SubmissionRecord("20261126T090000-000000", "slurm", "", "m.csv", "/r", "", jobs=jobs,
                           rows={"a": 1, "b": 2, "c": 3, "d": 4}, skipped={"e": "already done"})
    records = {"a": {"status": "ok"}, "c": {"status": "failed", "error": "AudioError: bad"}}
    assert unfinished_jobs(sub, records) == ["7_1", "7_2"]
    states = {
        r.id: r.state for r in submission_status(sub, records, {"7_1": "pending", "7_2": "running"}).rows
    }
    assert states == {"a": "ok", "b": "pending", "c": "failed", "d": "running", "e": "skipped"}
    left = submission_status(sub, records, {})
    assert {r.id: r.state for r in left.rows if r.id in "bd"} == {"b": "lost", "d": "lost"}
    unknown = submission_status(sub, records, None)  # the queue could not be asked
    assert not unknown.queue_known and {r.state for r in unknown.rows if r.id in "bd"} == {"pending"}
    sub.cancelled = True
    assert {r.state for r in submission_status(sub, records, {}).rows if r.id in "bd"} == {"cancelled"}


def test_slurm_queue_states_are_normalised_in_one_squeue_call(tmp_path, monkeypatch):
    """One squeue for every array; SLURM's states become pending/running; forgotten ids are gone."""
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "squeue"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nprintf '7_0|PENDING|/s/sub/a.sh\\n"
                    "7_1|RUNNING|/s/sub/a.sh\\n8|REQUEUED|/s/sub/b.sh\\n9|RUNNING|/elsewhere/c.sh\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    states = get_backend("slurm").queue_states(["7_0", "7_1", "8", "7_2", "9"], "/s/sub")
    # job 9 is someone else's (its sbatch script is not in the submission's folder): not this submission's
    assert states == {"7_0": "pending", "7_1": "running", "8": "pending"}
    assert calls.read_text().count("\n") == 1 and "-j 7,8" in calls.read_text()
    assert get_backend("slurm").index_job_id("7_1") == "7" and get_backend("local").index_job_id("123") == ""


def test_a_forced_rerun_does_not_count_the_previous_result(tmp_path):
    """--force / --retry-failed: until the row's new record is written, its old record (from an
    earlier submission) is not this submission's result; progress, --wait and exit codes see the
    row as in flight (here: its job left, so lost), then ok once it is rewritten."""
    from batch_ast.status import query_status
    from batch_ast.store import ResultsRoot, write_json_atomic

    results = ResultsRoot(tmp_path / "results")
    results.run_dir("abc").mkdir(parents=True)
    old, new = "20261125T120000-aaaaaa", "20261126T090000-000000"
    write_json_atomic(results.record_path("abc"), {"id": "abc", "status": "ok", "submission_id": old})
    jobs = [{"job_id": "1", "rows": ["abc"], "log": ""}]
    rerun = SubmissionRecord(new, "debug", "", "m.csv", str(results.root), "", jobs=jobs, rows={"abc": 1})
    first = SubmissionRecord(old, "debug", "", "m.csv", str(results.root), "", jobs=jobs, rows={"abc": 1})
    assert [r.state for r in query_status(results, rerun).rows] == ["lost"]
    assert [r.state for r in query_status(results, first).rows] == ["ok"]
    write_json_atomic(results.record_path("abc"), {"id": "abc", "status": "failed", "submission_id": new})
    assert [r.state for r in query_status(results, rerun).rows] == ["failed"]
    assert [r.state for r in query_status(results, first).rows] == ["failed"]  # a later result counts
    write_json_atomic(results.record_path("abc"), {"id": "abc", "status": "ok"})  # an older version's record
    assert [r.state for r in query_status(results, rerun).rows] == ["ok"]


def test_a_rerun_within_the_same_second_does_not_take_the_replaced_records():
    """Found by a test that reran a row with --force right after a fast run: with ids to the second
    the earlier submission's record counted as the rerun's own (ok instead of lost)."""
    from batch_ast.status import finishes
    from batch_ast.submissions import new_submission_id

    first, rerun = new_submission_id(), new_submission_id()
    assert first.split("-")[0] < rerun.split("-")[0]
    jobs = [{"job_id": "1", "rows": ["abc"], "log": ""}]
    record = {"id": "abc", "status": "ok", "submission_id": first}
    assert not finishes(
        record, SubmissionRecord(rerun, "debug", "", "m.csv", "/r", "", jobs=jobs, rows={"abc": 1})
    )
    # ids of the older form (whole seconds) sort before this form's ids of the same second
    old_form = first.split(".")[0] + "-aaaaaa"
    assert old_form < first and finishes(
        {**record, "submission_id": first},
        SubmissionRecord(old_form, "debug", "", "m.csv", "/r", "", jobs=jobs, rows={"abc": 1}),
    )


def test_local_jobs_see_the_submitters_gpus(tmp_path, monkeypatch):
    """submitit's local executor empties CUDA_VISIBLE_DEVICES unless GPUs are asked for (jobs on a
    GPU workstation ran on the CPU, found on an H100): without a gpus request a local job sees
    exactly the GPUs its submitter sees; an explicit gpus_per_node is the user's to set."""
    assert local_gpu_passthrough("1,3") == {"gpus_per_node": 2, "visible_gpus": (1, 3)}
    assert local_gpu_passthrough("") == {}
    with pytest.warns(UserWarning, match="UUID or MIG"):
        assert local_gpu_passthrough("GPU-6f1c2a9e") == {}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    seen = _make_executor("local", tmp_path / "a" / "%j", {}).submit(os.getenv, "CUDA_VISIBLE_DEVICES")
    assert seen.result() == "1,3"
    chosen = _make_executor("local", tmp_path / "b" / "%j", {"gpus_per_node": 1}).submit(
        os.getenv, "CUDA_VISIBLE_DEVICES")
    assert chosen.result() == "0"


def test_a_default_profile_comes_from_the_environment_or_the_user_config_dir(tmp_path, monkeypatch):
    assert find_profile(None) == (None, "")
    user = user_profile_path()
    user.parent.mkdir(parents=True)
    user.write_text("partition: gpu\n")
    assert find_profile(None) == (user, "the user's default profile")
    site = tmp_path / "site.yaml"
    site.write_text("partition: a100\nmail_type: FAIL\nmail_user: me@example.org\n")
    monkeypatch.setenv("BATCH_AST_PROFILE", str(site))
    assert find_profile(None) == (site, "$BATCH_AST_PROFILE")  # the site's wins over the user's
    assert find_profile("mine.yaml") == (Path("mine.yaml"), "--profile")
    assert find_profile(None, site_defaults=False) == (None, "")
    monkeypatch.setenv("BATCH_AST_PROFILE", str(tmp_path / "gone.yaml"))
    with pytest.raises(DispatchError, match="not a file"):
        find_profile(None)


def test_submit_says_which_default_profile_it_used(audio_dir, tmp_path, monkeypatch, capsys):
    from batch_ast.cli import main

    site = tmp_path / "site.yaml"
    site.write_text("rows_per_job: 3\n")
    monkeypatch.setenv("BATCH_AST_PROFILE", str(site))
    m = audio_dir / "m.csv"
    m.write_text("content,style\ncontent.wav,style.wav\n")
    assert main(["submit", str(m), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    assert f"profile: {site} ($BATCH_AST_PROFILE" in capsys.readouterr().err
    assert main(["submit", str(m), "--results", str(tmp_path / "r"), "--dry-run", "--no-profile"]) == 0
    assert "profile:" not in capsys.readouterr().err


def test_profile_passes_gres_nodes_mail_and_a_python_wrapper_to_submitit(tmp_path, monkeypatch):
    profile = tmp_path / "p.yaml"
    profile.write_text("gres: 'gpu:a100:1'\nexclude: node[1-2]\nnodelist: node7\nmail_type: END\n"
                       "mail_user: me@example.org\npython: 'apptainer exec image.sif python'\n")
    params = job_parameters(load_profile(profile))[0]
    assert {k: params[k] for k in ("slurm_gres", "slurm_exclude", "slurm_nodelist", "slurm_mail_type")} == {
        "slurm_gres": "gpu:a100:1",
        "slurm_exclude": "node[1-2]",
        "slurm_nodelist": "node7",
        "slurm_mail_type": "END",
    }
    srun_on_path(tmp_path, monkeypatch)
    slurm = _make_executor("slurm", tmp_path / "s", dict(params))  # submitit accepts every name
    assert slurm._executor.python == "apptainer exec image.sif python"
    # the local executor starts its jobs through the wrapper too (here: env setting a variable)
    wrapped = _make_executor(
        "local", tmp_path / "l" / "%j", {"python": f"env BATCH_AST_WRAPPED=yes {sys.executable}"}
    )
    assert wrapped.submit(os.getenv, "BATCH_AST_WRAPPED").result() == "yes"
