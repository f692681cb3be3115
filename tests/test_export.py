"""Export to MLflow, TensorBoard, Aim and W&B, each read back with its own library or tool: params,
metrics per step, tags, artifacts, audio decoded to the same samples, hparams; idempotence, a
changed record, an interrupted or killed export resumed, bad rows and bad destinations."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import batch_ast
from batch_ast.cli import main
from batch_ast.exporting import ExportError, parse_filter, row_matches

from .conftest import small_study

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
mlflow = pytest.importorskip("mlflow") if os.environ.get("CI") != "true" else __import__("mlflow")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
aim = pytest.importorskip("aim") if os.environ.get("CI") != "true" else __import__("aim")
wandb = pytest.importorskip("wandb") if os.environ.get("CI") != "true" else __import__("wandb")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Two ok rows and a failed one, of the preset ``quick`` (its tag is checked)."""
    return small_study(tmp_path_factory.mktemp("export"), preset="quick")


def copy_of(study: Path, tmp_path: Path) -> Path:
    root = tmp_path / "results"
    shutil.copytree(study, root, symlinks=True)
    return root


def records(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in root.glob("runs/*/record.json")}


def mlflow_runs(dest: Path):
    mlflow.set_tracking_uri(f"sqlite:///{dest / 'mlflow.db'}")
    return mlflow.search_runs(search_all_experiments=True)


def test_mlflow_export_reads_back_through_mlflow(study, tmp_path):
    dest = tmp_path / "ml"
    report = batch_ast.export(study, to="mlflow", dir=str(dest))
    assert (report.new, report.updated, report.unchanged, report.failed_rows) == (3, 0, 0, 1)
    runs = mlflow_runs(dest).set_index("tags.batch_ast.row_id")
    recs = records(study)
    assert sorted(runs.index) == sorted(recs)
    client = mlflow.MlflowClient()
    for rid, rec in recs.items():
        run = runs.loc[rid]
        assert run["tags.mlflow.runName"] == rec["name"]
        assert run["tags.status"] == rec["status"]
        assert run["tags.preset"] == rec["params"]["preset"] == "quick"
        assert run["tags.content_sha256"] == rec["content_sha256"]
        assert run["tags.content_name"] == Path(rec["content"]).name
        assert float(run["params.content_weight"]) == rec["params"]["content_weight"]
        assert int(run["params.n_fft"]) == rec["params"]["n_fft"] == 256
        artifacts = {a.path for a in client.list_artifacts(run["run_id"])}
        if rec["status"] == "failed":
            assert run["status"] == "FAILED" and run["tags.error_type"] == rec["error_type"]
            assert rec["error"][:50] in run["tags.error"]
            assert artifacts == {"record.json"}
            continue
        assert run["status"] == "FINISHED"
        assert run["metrics.style_distance"] == pytest.approx(rec["style_distance"])
        assert run["metrics.final_total"] == pytest.approx(rec["final_total"])
        trace = __import__("pandas").read_parquet(study / rec["trace"])
        for column in ("total", "content", "style"):
            history = client.get_metric_history(run["run_id"], f"loss_{column}")
            assert [m.step for m in history] == trace["iteration"].tolist()
            assert [m.value for m in history] == pytest.approx(trace[column].tolist())
        assert artifacts == {"output.wav", "spectrograms.png", "losses.png", "record.json"}
        local = client.download_artifacts(run["run_id"], "output.wav", str(tmp_path / rid))
        assert Path(local).read_bytes() == (study / rec["output"]).read_bytes()


def mlflow_contents(dest: Path) -> dict[str, dict]:
    """Row id -> what MLflow says of its run: params, tags, latest metrics, every metric's history,
    status, end, artifacts (their bytes)."""
    client = mlflow.MlflowClient(f"sqlite:///{dest / 'mlflow.db'}")
    out = {}
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        data = run.data
        histories = {key: [(m.step, m.value, m.timestamp)
                           for m in client.get_metric_history(run.info.run_id, key)] for key in data.metrics}
        tags = {k: v for k, v in data.tags.items() if not k.startswith("mlflow.")}
        rid = run.info.run_id
        with tempfile.TemporaryDirectory() as scratch:
            artifacts = {a.path: Path(client.download_artifacts(rid, a.path, scratch)).read_bytes()
                         for a in client.list_artifacts(rid)}
        out[tags["batch_ast.row_id"]] = {"params": data.params, "tags": tags, "metrics": data.metrics,
                                         "histories": histories, "status": run.info.status,
                                         "end_time": run.info.end_time, "name": run.info.run_name,
                                         "artifacts": artifacts}
    return out


def test_a_run_written_in_one_transaction_reads_back_as_log_batch_writes_it(study, tmp_path, monkeypatch):
    """A run's params, metrics, tags and end go into MLflow's tables in one transaction and its files
    straight into its artifact folder; a study exported so, through MLflow's client alone
    (``log_batch``, ``set_terminated``, ``log_artifacts``), through a store that refuses the
    transaction (it falls back to the client), and through a store that is not SQL (tags given to
    ``create_run``) reads back the same through MLflow."""
    from batch_ast import export_mlflow

    appended = []
    original = export_mlflow.MlflowTarget._insert

    def spy(self, *args):
        appended.append(original(self, *args))
        return appended[-1]

    monkeypatch.setattr(export_mlflow.MlflowTarget, "_insert", spy)
    batch_ast.export(study, to="mlflow", dir=str(tmp_path / "fast"))
    assert appended == [True] * 3
    sqlalchemy = __import__("sqlalchemy")
    elsewhere = sqlalchemy.Table("no_such_table", sqlalchemy.MetaData(), sqlalchemy.Column("run_uuid"))
    monkeypatch.setattr(export_mlflow, "SqlMetric", type("Elsewhere", (), {"__table__": elsewhere}))
    appended.clear()
    batch_ast.export(study, to="mlflow", dir=str(tmp_path / "refused"))
    assert appended == [False] * 3  # the first refused, then not tried
    monkeypatch.setattr(export_mlflow.MlflowTarget, "_insert", lambda self, *args: False)
    monkeypatch.setattr(export_mlflow, "local_artifact_folder", lambda uri: None)  # log_artifacts
    batch_ast.export(study, to="mlflow", dir=str(tmp_path / "log_batch"))
    monkeypatch.setattr(export_mlflow, "SqlAlchemyStore", type("ServerStore", (), {}))  # as a tracking server
    batch_ast.export(study, to="mlflow", dir=str(tmp_path / "client"))
    fast, refused, slow, client = (mlflow_contents(tmp_path / d)
                                   for d in ("fast", "refused", "log_batch", "client"))
    assert len(slow) == 3 and any(len(h) > 10 for run in slow.values() for h in run["histories"].values())
    assert {run["status"] for run in slow.values()} == {"FINISHED", "FAILED"}
    assert all(run["end_time"] and "output.wav" in run["artifacts"] for run in slow.values()
               if run["status"] == "FINISHED")
    assert fast == slow and refused == slow and client == slow


def test_files_go_straight_only_into_the_stores_own_artifact_folder(study, tmp_path, monkeypatch):
    """An experiment whose artifact location is elsewhere (anyone who may edit the store can set
    it) gets its files through MLflow's ``log_artifacts``, as MLflow would put them."""
    dest = tmp_path / "ml"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    client = mlflow.MlflowClient(f"sqlite:///{dest / 'mlflow.db'}")
    client.create_experiment("moved", artifact_location=elsewhere.as_uri())
    calls = []
    original = mlflow.MlflowClient.log_artifacts
    monkeypatch.setattr(mlflow.MlflowClient, "log_artifacts",
                        lambda self, *args, **kwargs: calls.append(args) or original(self, *args, **kwargs))
    batch_ast.export(study, to="mlflow", dir=str(dest), experiment="moved")
    assert len(calls) == 3 and not (dest / "artifacts").exists()
    assert len(list(elsewhere.glob("*/artifacts/record.json"))) == 3
    batch_ast.export(copy_of(study, tmp_path), to="mlflow", dir=str(dest))  # its own experiment
    assert len(calls) == 3 and len(list((dest / "artifacts").glob("*/artifacts/record.json"))) == 3


def test_tensorboard_export_reads_back_through_its_event_reader(study, tmp_path):
    dest = tmp_path / "tb"
    report = batch_ast.export(study, to="tensorboard", dir=str(dest))
    assert (report.new, report.failed_rows) == (3, 1)
    recs = records(study)
    folders = {p.name.rsplit("-", 1)[1]: p for p in dest.iterdir() if p.is_dir()}
    assert sorted(folders) == sorted(recs)
    everything = {"scalars": 0, "audio": 0, "images": 0, "tensors": 0}
    root = event_accumulator.EventAccumulator(str(dest), size_guidance=everything)
    root.Reload()
    assert "_hparams_/experiment" in root.PluginTagToContent("hparams")
    from tensorboard.plugins.hparams import metadata as hp

    experiment = hp.parse_experiment_plugin_data(root.PluginTagToContent("hparams")["_hparams_/experiment"])
    assert {"content_weight", "optimizer", "seed"} <= {h.name for h in experiment.hparam_infos}
    assert "metrics/style_distance" in {m.name.tag for m in experiment.metric_infos}
    for rid, rec in recs.items():
        run = event_accumulator.EventAccumulator(str(folders[rid]), size_guidance=everything)
        run.Reload()
        content = run.PluginTagToContent("hparams")
        start = hp.parse_session_start_info_plugin_data(content["_hparams_/session_start_info"])
        assert start.hparams["content_weight"].number_value == rec["params"]["content_weight"]
        assert start.hparams["optimizer"].string_value == rec["params"]["optimizer"]
        end = hp.parse_session_end_info_plugin_data(content["_hparams_/session_end_info"])
        assert end.status == (1 if rec["status"] == "ok" else 2)  # STATUS_SUCCESS, STATUS_FAILURE
        if rec["status"] == "failed":
            assert "output" not in run.Tags()["audio"]
            continue
        trace = __import__("pandas").read_parquet(study / rec["trace"])
        total = run.Scalars("loss/total")
        assert [e.step for e in total] == trace["iteration"].tolist()
        assert [e.value for e in total] == pytest.approx(trace["total"].tolist(), rel=1e-6)
        final = run.Scalars("metrics/style_distance")[0]
        assert final.value == pytest.approx(rec["style_distance"], rel=1e-6)
        (audio,) = run.Audio("output")
        samples, rate = sf.read(io.BytesIO(audio.encoded_audio_string), dtype="float32")
        written, written_rate = sf.read(study / rec["output"], dtype="float32")
        assert rate == written_rate == rec["params"]["sample_rate"] == audio.sample_rate
        np.testing.assert_array_equal(samples, written)
        assert set(run.Tags()["images"]) == {"spectrograms", "losses"}


def aim_runs(dest: Path) -> list:
    """The repository's runs, as Aim's query API finds them: (row id, run)."""
    repo = aim.Repo.from_path(str(dest))
    return [(found.run["batch_ast"]["row_id"], found.run)
            for found in repo.query_runs("run.batch_ast.row_id != ''", report_mode=0).iter_runs()]


def test_aim_export_reads_back_through_aims_query_api(study, tmp_path):
    dest = tmp_path / "aim"
    report = batch_ast.export(study, to="aim", dir=str(dest))
    assert (report.new, report.failed_rows) == (3, 1)
    recs = records(study)
    runs = dict(aim_runs(dest))
    assert sorted(runs) == sorted(recs)
    repo = aim.Repo.from_path(str(dest))
    for rid, rec in recs.items():
        run = runs[rid]
        assert run.name == rec["name"] and run["hparams"]["content_weight"] == rec["params"]["content_weight"]
        assert run["hparams"]["n_fft"] == 256 and run["tags"]["status"] == rec["status"]
        assert run["batch_ast"]["digest"]
        query = f"run.batch_ast.row_id == '{rid}'"
        audios = [seq.values.values_list()[0] for seq in repo.query_audios(query).iter()]
        if rec["status"] == "failed":
            assert run["tags"]["error_type"] == rec["error_type"] and not audios
            continue
        trace = __import__("pandas").read_parquet(study / rec["trace"])
        metrics = {m.name: m.dataframe() for m in run.metrics()}  # step, value (Aim's own reader)
        for part in ("total", "content", "style"):
            assert metrics[f"loss_{part}"]["step"].tolist() == trace["iteration"].tolist()
            assert metrics[f"loss_{part}"]["value"].tolist() == pytest.approx(trace[part].tolist())
        final = metrics["style_distance"]
        assert final["value"].tolist() == pytest.approx([rec["style_distance"]])
        assert final["step"].tolist() == [rec["iterations_run"]]
        (audio,) = audios
        assert audio.get().read() == (study / rec["output"]).read_bytes()
        images = {seq.name: seq.values.values_list()[0] for seq in repo.query_images(query).iter()}
        assert set(images) == {"spectrograms", "losses"}
        for name, image in images.items():  # the figure's own PNG, read back as Aim reads any image
            png = (study / rec[{"spectrograms": "spectrogram_png", "losses": "loss_png"}[name]]).read_bytes()
            assert isinstance(image, aim.Image) and bytes(image.storage["data"]) == png
            with __import__("PIL.Image").Image.open(io.BytesIO(png)) as picture:
                assert image.to_pil_image().size == image.size == picture.size


def wandb_tool(*args: str, said: str = "stdout") -> str:
    """W&B's own command line (``wandb leet inspect`` reads a run's transaction log, ``wandb sync
    --dry-run`` lists what it would upload on stderr), run with no network and no W&B login, in a
    folder of its own (the CLI writes ./wandb where it can, and warns where it cannot)."""
    command = [str(Path(sys.executable).parent / "wandb"), *args]
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=cwd,
                              env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr
    return done.stdout if said == "stdout" else done.stdout + done.stderr


def wandb_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in wandb_tool("leet", "inspect", "--json", str(folder)).splitlines()]


def wandb_syncable(dest: Path) -> int:
    """How many runs ``wandb sync --dry-run`` would upload from ``dest/wandb``."""
    return wandb_tool("sync", "--dry-run", str(dest / "wandb"), said="both").count(".wandb\n")


def wandb_folders(dest: Path) -> dict[str, Path]:
    return {p.name.rsplit("-", 1)[1]: p for p in (dest / "wandb").glob("offline-run-*")}


def test_wandb_export_reads_back_through_wandbs_own_tools(study, tmp_path):
    dest = tmp_path / "wb"
    report = batch_ast.export(study, to="wandb", dir=str(dest))
    assert (report.new, report.failed_rows) == (3, 1)
    recs = records(study)
    folders = wandb_folders(dest)
    assert sorted(folders) == sorted(recs)
    assert wandb_syncable(dest) == 3
    for rid, rec in recs.items():
        found: dict[str, list] = {}
        for record in wandb_records(folders[rid]):
            found.setdefault(record["type"], []).append(record[record["type"]])
        (run,) = found["run"]
        config = run["config"]["update"]
        assert run["run_id"] == rid and run["display_name"] == rec["name"]
        assert config["content_weight"] == rec["params"]["content_weight"] and config["n_fft"] == 256
        assert config["optimizer"] == rec["params"]["optimizer"] and rec["status"] in run["tags"]
        assert config["batch_ast"]["preset"] == "quick" and config["batch_ast"]["row_id"] == rid
        summary: dict = {}
        for update in found["summary"]:
            summary.update(update.get("update", {}))
        assert found["exit"][0]["exit_code"] == (0 if rec["status"] == "ok" else 1)
        files = {f["path"] for update in found["files"] for f in update["files"]}
        assert "record.json" in files
        if rec["status"] == "failed":
            assert "artifact" not in found and summary["status"] == "failed"
            assert config["batch_ast"]["error_type"] == rec["error_type"]
            continue
        assert summary["style_distance"] == pytest.approx(rec["style_distance"])
        trace = __import__("pandas").read_parquet(study / rec["trace"])
        history = [(h["step"].get("num", 0), h["item"])
                   for h in found["history"] if "loss/total" in h["item"]]
        assert [step for step, _ in history] == trace["iteration"].tolist()
        assert [item["loss/total"] for _, item in history] == pytest.approx(trace["total"].tolist())
        assert [item["loss/style"] for _, item in history] == pytest.approx(trace["style"].tolist())
        (table,) = found["artifact"]  # the one-row table with the output as wandb.Audio
        assert table["type"] == "run_table"
        entries = {Path(e["path"]).name: e for e in table["manifest"]["contents"]}
        staged = Path(entries["output.wav"]["local_path"])
        assert staged.is_relative_to(folders[rid])  # the run's own folder holds what it will upload
        assert staged.read_bytes() == (study / rec["output"]).read_bytes()
        assert any(p.startswith("media/images/spectrograms") for p in files)


@pytest.mark.parametrize("to", ["mlflow", "tensorboard", "aim", "wandb"])
def test_export_again_adds_nothing_and_a_changed_record_updates_one_run(study, tmp_path, to):
    root = copy_of(study, tmp_path)
    dest = tmp_path / to
    assert batch_ast.export(root, to=to, dir=str(dest)).new == 3
    again = batch_ast.export(root, to=to, dir=str(dest))
    assert (again.new, again.updated, again.unchanged) == (0, 0, 3)
    changed = next(p for p in root.glob("runs/*/record.json") if json.loads(p.read_text())["name"] == "two")
    record = json.loads(changed.read_text())
    record["warning"] = "re-run"
    changed.write_text(json.dumps(record))
    third = batch_ast.export(root, to=to, dir=str(dest))
    assert (third.new, third.updated, third.unchanged) == (0, 1, 2)
    if to == "mlflow":
        runs = mlflow_runs(dest)
        assert len(runs) == 3 and runs["tags.batch_ast.row_id"].is_unique
        assert runs.set_index("tags.name").loc["two", "tags.warning"] == "re-run"
    elif to == "aim":
        runs = aim_runs(dest)
        assert sorted(rid for rid, _ in runs) == sorted(records(root))
        assert {run.name: run["tags"].get("warning") for _, run in runs}["two"] == "re-run"
    elif to == "wandb":
        folders = wandb_folders(dest)
        assert len(folders) == 3 and len(list((dest / "wandb").glob("offline-run-*"))) == 3
        (run,) = [r["run"] for r in wandb_records(folders[changed.parent.name]) if r["type"] == "run"]
        assert run["config"]["update"]["batch_ast"]["warning"] == "re-run"
        assert wandb_syncable(dest) == 3
    else:
        assert len([p for p in dest.iterdir() if p.is_dir()]) == 3


def test_an_interrupted_export_resumes_without_duplicates(study, tmp_path, monkeypatch):
    from batch_ast import export_mlflow, export_tensorboard

    calls = {"n": 0}

    def interrupt_second(original):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return original(*args, **kwargs)
        return wrapper

    tb, ml = tmp_path / "tb", tmp_path / "ml"
    marker_writer = interrupt_second(export_tensorboard.write_json_atomic)
    monkeypatch.setattr(export_tensorboard, "write_json_atomic", marker_writer)
    with pytest.raises(KeyboardInterrupt):
        batch_ast.export(study, to="tensorboard", dir=str(tb))
    monkeypatch.undo()
    assert len([p for p in tb.iterdir() if p.is_dir()]) == 2  # one complete, one half-written
    resumed = batch_ast.export(study, to="tensorboard", dir=str(tb))
    assert (resumed.unchanged, resumed.updated, resumed.new) == (1, 1, 1)
    assert len([p for p in tb.iterdir() if p.is_dir()]) == 3
    assert all((p / export_tensorboard.MARKER).is_file() for p in tb.iterdir() if p.is_dir())

    calls["n"] = 0
    original = export_mlflow.MlflowTarget._artifacts
    monkeypatch.setattr(export_mlflow.MlflowTarget, "_artifacts", interrupt_second(original))
    with pytest.raises(KeyboardInterrupt):
        batch_ast.export(study, to="mlflow", dir=str(ml))
    monkeypatch.undo()
    assert len(mlflow_runs(ml)) == 2
    resumed = batch_ast.export(study, to="mlflow", dir=str(ml))
    assert (resumed.unchanged, resumed.updated, resumed.new) == (1, 1, 1)
    runs = mlflow_runs(ml)
    assert len(runs) == 3 and runs["tags.batch_ast.row_id"].is_unique
    assert runs["tags.batch_ast.record_digest"].notna().all()
    assert export_mlflow.DIGEST_TAG == "batch_ast.record_digest"

    from batch_ast import export_aim

    calls["n"] = 0
    media = staticmethod(interrupt_second(export_aim.AimTarget._media))
    monkeypatch.setattr(export_aim.AimTarget, "_media", media)
    with pytest.raises(KeyboardInterrupt):
        batch_ast.export(study, to="aim", dir=str(tmp_path / "aim"))
    monkeypatch.undo()
    assert len(list((tmp_path / "aim" / ".aim" / "meta" / "chunks").iterdir())) == 1  # deleted at once
    resumed = batch_ast.export(study, to="aim", dir=str(tmp_path / "aim"))
    assert (resumed.unchanged, resumed.updated, resumed.new) == (1, 0, 2)
    runs = aim_runs(tmp_path / "aim")
    assert sorted(rid for rid, _ in runs) == sorted(records(study))


def killed_at_the_second_row(study: Path, dest: Path, to: str, patched: str, signature: str,
                             before: str = "pass") -> None:
    """Export ``study`` to ``to`` in a child process killed outright (SIGKILL) inside the second
    row's ``patched`` (``module.Class.method``, a staticmethod taking ``signature``), after
    ``before`` (one statement) there."""
    module, cls, method = patched.split(".")
    killer = (
        "import os, sys, batch_ast\n"
        f"from batch_ast import {module}\n"
        "calls = []\n"
        f"original = {module}.{cls}.{method}\n"
        f"def die({signature}):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        f"        {before}\n"
        "        os.kill(os.getpid(), 9)\n"
        f"    return original({signature})\n"
        f"{module}.{cls}.{method} = staticmethod(die)\n"
        f"batch_ast.export(sys.argv[1], to={to!r}, dir=sys.argv[2])\n")
    killed = subprocess.run([sys.executable, "-c", killer, str(study), str(dest)], capture_output=True)
    assert killed.returncode == -9, killed.stderr[-2000:]


def test_an_aim_export_killed_outright_is_mended_by_the_next(study, tmp_path):
    """Aim keeps nothing of a run that was never closed; the export's own note of it does."""
    dest = tmp_path / "aim"
    killed_at_the_second_row(study, dest, "aim", "export_aim.AimTarget._media", "run, payload")
    chunks = dest / ".aim" / "meta" / "chunks"
    assert len(list(chunks.iterdir())) == 2 and len(list((dest / ".batch-ast-pending").iterdir())) == 1
    resumed = batch_ast.export(study, to="aim", dir=str(dest))
    assert (resumed.unchanged, resumed.updated, resumed.new) == (1, 1, 1)
    assert len(list(chunks.iterdir())) == 3 and not list((dest / ".batch-ast-pending").iterdir())
    assert sorted(rid for rid, _ in aim_runs(dest)) == sorted(records(study))


def test_a_wandb_export_killed_outright_is_mended_by_the_next(study, tmp_path):
    dest = tmp_path / "wb"
    killed_at_the_second_row(study, dest, "wandb", "export_wandb.WandbTarget._fill", "run, row, payload, tmp",
                             before="run.log({'loss/total': 1.0}, step=0)")
    assert len(wandb_folders(dest)) == 2  # one complete, one begun
    resumed = batch_ast.export(study, to="wandb", dir=str(dest))
    assert (resumed.unchanged, resumed.updated, resumed.new) == (1, 1, 1)
    assert sorted(wandb_folders(dest)) == sorted(records(study))
    assert len(list((dest / "wandb").glob("offline-run-*"))) == 3
    assert wandb_syncable(dest) == 3


def test_bad_rows_are_counted_and_cost_only_themselves(study, tmp_path):
    root = copy_of(study, tmp_path)
    runs = root / "runs"
    (runs / "0123456789abcdef").mkdir()
    (runs / "0123456789abcdef" / "record.json").write_text('{"id": "0123456789abcdef", "status": "o')
    one = next(p.parent for p in runs.glob("*/record.json") if json.loads(p.read_text()).get("name") == "one")
    (one / "output.wav").unlink()
    os.symlink("/etc/passwd", one / "output.wav")  # a planted link is never followed
    (one / "losses.png").unlink()
    report = batch_ast.export(root, to="tensorboard", dir=str(tmp_path / "tb"), skip_failed=True)
    assert report.new == 2  # both ok rows: one without its output and loss figure
    assert report.skipped["their record cannot be read"] == 1
    assert report.skipped["failed (--skip-failed)"] == 1
    assert len(report.incomplete) == 1 and "output.wav (a symlink" in report.incomplete[0]
    assert "losses.png (missing)" in report.incomplete[0]
    text = "\n".join(report.lines())
    assert "skipped 1 row(s): their record cannot be read" in text and "without some of their files" in text
    assert subprocess.run([sys.executable, "-m", "batch_ast", "export", str(root), "--to", "tensorboard",
                           "--dir", str(tmp_path / "tb2"), "--quiet"], capture_output=True).returncode == 1


def test_filters_select_rows_by_any_column(study, tmp_path):
    report = batch_ast.export(study, to="tensorboard", dir=str(tmp_path / "tb"),
                              filter=["status==ok", "content_weight>=1"])
    assert (report.new, report.filtered) == (1, 2)
    assert row_matches({"preset": "quick", "seed": 3}, (parse_filter("preset=quick"), parse_filter("seed<4")))
    assert not row_matches({"preset": "quick"}, (parse_filter("seed<4"),))
    with pytest.raises(ExportError, match="is not COLUMN OP VALUE"):
        batch_ast.export(study, to="tensorboard", dir=str(tmp_path / "tb"), filter=["seed"])
    with pytest.raises(ExportError, match="seed is a number"):
        batch_ast.export(study, to="tensorboard", dir=str(tmp_path / "tb3"), filter=["seed>abc"])


def test_bad_destinations_and_options_are_one_line_errors(study, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() != 0:  # root writes anywhere
        for to in ("mlflow", "tensorboard", "aim", "wandb"):
            assert main(["export", str(study), "--to", to, "--dir", str(locked / "x"), "--quiet"]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "cannot write" in err and "Permission denied" in err
    assert main(["export", str(study), "--to", "mlflow", "--uri", "http://127.0.0.1:9", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not answer" in err
    assert main(["export", str(study), "--to", "tensorboard", "--uri", "http://x", "--quiet"]) == 2
    assert "takes --dir" in capsys.readouterr().err
    with pytest.raises(ExportError, match="must be one of"):
        batch_ast.export(study, to="comet")
    with pytest.raises(ExportError, match="unexpected keyword"):
        batch_ast.export(study, to="mlflow", colour="red")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    assert main(["export", str(study), "--to", "mlflow", "--dir", str(tmp_path / "m"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'batch-ast[mlflow]'" in err
    assert main(["export", str(tmp_path / "nothing"), "--to", "tensorboard", "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_our_event_framing_is_tensorboards_byte_for_byte():
    from tensorboard.summary.writer.record_writer import RecordWriter as TheirWriter

    from batch_ast.export_tensorboard import RecordWriter

    payload = bytes(range(256)) * 300  # checksummed through several blocks
    ours, theirs = io.BytesIO(), io.BytesIO()
    for data in (b"", b"event", payload):
        RecordWriter(ours).write(data)
        TheirWriter(theirs).write(data)
    assert ours.getvalue() == theirs.getvalue()


@pytest.mark.parametrize("to", ["tensorboard", "aim"])
def test_worker_processes_write_a_larger_study_once(study, tmp_path, to):
    from benchmarks.pipeline import grow_study

    root = copy_of(study, tmp_path)
    grow_study(root, 40)
    dest = tmp_path / to
    report = batch_ast.export(root, to=to, dir=str(dest), workers=2)
    assert (report.new, report.failed_rows) == (40, 1)
    again = batch_ast.export(root, to=to, dir=str(dest), workers=2)
    assert (again.new, again.updated, again.unchanged) == (0, 0, 40)
    if to == "aim":  # every worker's run in the index, whole: found by Aim's queries, parameters and audio
        runs = aim_runs(dest)
        assert sorted(rid for rid, _ in runs) == sorted(records(root))
        assert all(run["hparams"]["n_fft"] == 256 and run["tags"]["name"] == run.name for _, run in runs)
        audios = aim.Repo.from_path(str(dest)).query_audios("run.batch_ast.row_id != ''").iter()
        assert len(list(audios)) == 39
        return
    assert len([p for p in dest.iterdir() if p.is_dir()]) == 40
    run = event_accumulator.EventAccumulator(str(next(dest.glob("study-7-*"))), size_guidance={"audio": 0})
    run.Reload()
    assert len(run.Audio("output")) == 1
    with pytest.raises(ExportError, match="workers must be"):
        batch_ast.export(root, to="tensorboard", dir=str(dest), workers=0)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(command: list[str], probe: str, log: Path) -> subprocess.Popen:
    """A tracker's own UI started on localhost, returned once it answers ``probe`` (waits on that
    state, bounded by an hour; fails at once if the server exits)."""
    import time
    import urllib.request

    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    server = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                              cwd=log.parent)  # what a server writes beside itself goes to the test's folder
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(probe, timeout=5):
                return server
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{command[0]} did not answer within an hour")


@pytest.mark.browser
def test_the_trackers_own_uis_show_the_study_and_play_its_audio_in_headless_chromium(study, tmp_path):
    from .test_report import chromium_or_skip

    chromium = chromium_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api") if os.environ.get("CI") != "true" else \
        __import__("playwright.sync_api", fromlist=["sync_api"])
    tb_dir, ml_dir = tmp_path / "tb", tmp_path / "ml"
    batch_ast.export(study, to="tensorboard", dir=str(tb_dir))
    batch_ast.export(study, to="mlflow", dir=str(ml_dir))
    recs = {rec["name"]: rec for rec in records(study).values()}
    seconds = sf.info(study / recs["one"]["output"]).duration
    tb_port, ml_port = free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    servers = [
        serve([str(bin_dir / "tensorboard"), "--logdir", str(tb_dir), "--host", "127.0.0.1",
               "--port", str(tb_port)],
              f"http://127.0.0.1:{tb_port}/data/plugins_listing", tmp_path / "tb.log"),
        serve([str(bin_dir / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{ml_dir / 'mlflow.db'}",
               "--default-artifact-root", (tmp_path / "mlartifacts").as_uri(),
               "--host", "127.0.0.1", "--port", str(ml_port)], f"http://127.0.0.1:{ml_port}/health",
              tmp_path / "ml.log"),
    ]
    wait = 600_000  # ms: a bound on states awaited, not a deadline (a busy machine is slow)
    duration = ("a => new Promise(r => a.readyState >= 1 ? r(a.duration) "
                ": a.onloadedmetadata = () => r(a.duration))")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # TensorBoard: the HParams table, one line per row with its hyperparameters and metrics
            page.goto(f"http://127.0.0.1:{tb_port}/#hparams")
            for name in ("one", "two", "bad"):
                page.get_by_text(f"{name}-{recs[name]['id']}").first.wait_for(timeout=wait)
            cells = page.locator("vaadin-grid-cell-content").all_inner_texts()  # the table's, header first
            assert {"content_weight", "content_distance", "4.3000", "0.50000"} <= set(cells), cells
            one = cells.index(f"one-{recs['one']['id']}")
            assert f"{recs['one']['content_distance']:.5f}" in cells[one:one + 12]
            page.screenshot(path=str(tmp_path / "tensorboard-hparams.png"))
            # ... and the audio dashboard plays each ok row's output, its duration the WAV's
            page.goto(f"http://127.0.0.1:{tb_port}/#audio")
            page.locator("audio").nth(1).wait_for(timeout=wait)
            assert page.locator("audio").count() == 2  # the failed row has no output
            assert page.locator("audio").first.evaluate(duration) == pytest.approx(seconds, abs=0.01)
            page.screenshot(path=str(tmp_path / "tensorboard-audio.png"))
            # MLflow: the runs table, then an ok row's output.wav in the artifact viewer
            experiment = mlflow_runs(ml_dir)
            one = experiment.set_index("tags.name").loc["one"]
            page.goto(f"http://127.0.0.1:{ml_port}/#/experiments/{one['experiment_id']}/runs")
            for name in ("one", "two", "bad"):
                page.get_by_role("link", name=name, exact=True).wait_for(timeout=wait)
            page.screenshot(path=str(tmp_path / "mlflow-runs.png"))
            page.goto(f"http://127.0.0.1:{ml_port}/#/experiments/{one['experiment_id']}/runs/"
                      f"{one['run_id']}/artifacts/output.wav")
            page.locator("audio").first.wait_for(timeout=wait)
            assert page.locator("audio").first.evaluate(duration) == pytest.approx(seconds, abs=0.01)
            page.screenshot(path=str(tmp_path / "mlflow-artifact.png"))
            browser.close()
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=60)
    print("screenshots:", *sorted(tmp_path.glob("*.png")))
