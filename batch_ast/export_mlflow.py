"""People stage, export to MLflow: one MLflow run per row, through MLflow's own client.

``export.py`` decides which rows and what each run holds; this module only speaks MLflow. A run
is tagged with its row id (``batch_ast.row_id``) and, once everything is logged, with the digest of
the record it was made from (``batch_ast.record_digest``): a run without the digest was left by an
interrupted export and is replaced. Without ``--uri`` the store is SQLite in the destination
folder (MLflow's file store is in maintenance mode), the artifacts beside it.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

# MLflow 3 reports usage to its makers unless told not to: a batch tool on a cluster never does
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient  # noqa: E402  (after the switch above)
from mlflow.entities import Metric, Param, RunTag, ViewType  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from .exporting import MAX_WORKERS, ExportError, ExportRow, Payload, writable_folder  # noqa: E402

try:  # MLflow's SQL store and its tables: a run's params, metrics and digest go in in one transaction
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils.validation import _validate_batch_log_data
except ImportError:  # an MLflow without them: everything goes through log_batch
    SqlAlchemyStore = None  # type: ignore[assignment,misc]

# MLflow 3's UI opens an experiment as its kind says: runs with params and metrics are "model
# training", not the GenAI traces view it otherwise shows first
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
ROW_TAG = "batch_ast.row_id"
DIGEST_TAG = "batch_ast.record_digest"
TRACE_METRICS = {"total": "loss_total", "content": "loss_content", "style": "loss_style"}
# log_batch's limits (MLflow's REST API): 1,000 entries a call, of which at most 100 params/tags
MAX_BATCH, MAX_PARAMS = 1000, 100
# Runs read a page at a time when finding what is exported: a run comes back with its params,
# metrics and tags, ~0.5 MB a run through MLflow's SQL store, and only three tags are kept
SEARCH_PAGE = 100


def _ms(iso: str | None) -> int | None:
    return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else None


def _probe(uri: str) -> None:
    """A remote tracking server that does not answer is one line now, not minutes of retries."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
            response.read(100)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ExportError(f"MLflow tracking URI {uri} does not answer ({reason})") from None


def open_target(dest: Path, uri: str | None, experiment: str) -> MlflowTarget:
    """The MLflow target: ``uri``'s store, else SQLite at DEST/mlflow.db with DEST/artifacts."""
    artifacts = None
    if uri is None:
        writable_folder(dest, "the MLflow store in")
        uri = f"sqlite:///{dest.resolve() / 'mlflow.db'}"
        artifacts = (dest.resolve() / "artifacts").as_uri()
    elif uri.startswith(("http://", "https://")):
        _probe(uri)
    return MlflowTarget(uri, experiment, artifacts)


def local_artifact_folder(uri: str) -> Path | None:
    """The folder of a ``file://`` artifact location (MLflow's local artifact store); else None."""
    if not uri.startswith("file://"):
        return None
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))


def unique_and_latest(metrics: list[Metric]) -> tuple[list[Metric], list[Metric]]:
    """(every value once, each key's latest): duplicates dropped as MLflow's store drops them, the
    latest in MLflow's order (step, timestamp, value), which its table of latest values keeps."""
    latest: dict[str, Metric] = {}
    seen: set[tuple] = set()
    unique = []
    for metric in metrics:
        identity = (metric.key, metric.timestamp, metric.step, metric.value)
        if identity in seen:
            continue
        seen.add(identity)
        unique.append(metric)
        best = latest.get(metric.key)
        order = (metric.step, metric.timestamp, metric.value)
        if best is None or order > (best.step, best.timestamp, best.value):
            latest[metric.key] = metric
    return unique, list(latest.values())


def batches(params: list[Param], metrics: list[Metric]) -> Iterator[tuple[list[Param], list[Metric], bool]]:
    """``log_batch`` calls that hold everything in as few calls as its limits allow (each call is a
    transaction of MLflow's store: their number, not their size, is most of an export's time);
    the last says so (it has room for the digest tag)."""
    params, metrics = list(params), list(metrics)
    while True:
        some_params = params[:MAX_PARAMS]
        del params[:MAX_PARAMS]
        room = MAX_BATCH - len(some_params) - 1
        some_metrics = metrics[:room]
        del metrics[:room]
        last = not params and not metrics
        yield some_params, some_metrics, last
        if last:
            return


class MlflowTarget:
    """Runs of one MLflow experiment, one per row (see the module's docstring)."""

    def __init__(self, uri: str, experiment: str, artifacts: str | None):
        # SQLite takes one writer at a time, and holds it while MLflow builds each batch's rows:
        # a second process made a 200-row export slower (32.5 s against 24.7 s), not faster
        self.max_workers = 1 if uri.startswith("sqlite:") else MAX_WORKERS
        for name in ("mlflow", "alembic"):  # schema migrations and store notices: not the user's concern
            logging.getLogger(name).setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=uri)
        # the store's own artifact folder (--dir): a run's files are written straight into it
        folder = local_artifact_folder(artifacts) if artifacts else None
        self.artifact_root = folder.resolve() if folder is not None else None
        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        sql = SqlAlchemyStore is not None and isinstance(store, SqlAlchemyStore)
        self.engine = store.engine if sql else None
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (found.experiment_id if found is not None else
                                  self.client.create_experiment(experiment, artifact_location=artifacts,
                                                                tags={KIND_TAG: KIND}))
        except MlflowException as exc:
            raise ExportError(f"MLflow at {uri}: {str(exc.message)[:300]}") from None
        self.runs: dict[str, list[str]] = {}  # row id -> its run ids (more than one: interrupted exports)
        self.where = (f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else uri) + \
            f"  (experiment {experiment!r})"

    def exported(self) -> dict[str, str]:
        """Row id -> the digest of its complete run ('' where only half-written runs exist)."""
        done: dict[str, str] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                           max_results=SEARCH_PAGE, page_token=token)
            for run in page:
                rid = run.data.tags.get(ROW_TAG)
                if not rid:
                    continue  # a run someone logged by hand into this experiment: not ours
                self.runs.setdefault(rid, []).append(run.info.run_id)
                digest = run.data.tags.get(DIGEST_TAG, "")
                if digest and done.get(rid, "") == "":
                    done[rid] = digest
                else:
                    done.setdefault(rid, "")
            token = page.token
            if not token:
                return done

    def write(self, row: ExportRow, payload: Payload, replace: bool) -> None:
        for run_id in self.runs.pop(row.id, []) if replace else []:
            self.client.delete_run(run_id)
        # the row's id from the start: a run that has it and no digest is a half-written one of ours;
        # its other tags here too where the client writes the whole run, else in the transaction
        client_only = self.engine is None
        run = self.client.create_run(self.experiment_id, start_time=_ms(row.started_at), run_name=row.name,
                                     tags={ROW_TAG: row.id, **(row.tags if client_only else {})})
        run_id = run.info.run_id
        self.runs[row.id] = [run_id]
        now = _ms(row.finished_at) or 0
        params = [Param(name, str(value)) for name, value in sorted(row.params.items())]
        metrics = [Metric(name, value, now, row.final_step) for name, value in sorted(row.metrics.items())]
        trace = payload.trace or {}
        steps = trace.get("iteration", [])
        for column, key in TRACE_METRICS.items():
            values = trace.get(column) or [None] * len(steps)  # a column older traces lack
            metrics.extend(Metric(key, float(value), now, int(step))
                           for step, value in zip(steps, values, strict=True)
                           if value is not None and math.isfinite(value))
        self._artifacts(run, payload.files)
        tags = [RunTag(name, value) for name, value in sorted(row.tags.items())]
        digest = RunTag(DIGEST_TAG, row.digest)  # written last, or with everything: the run is complete
        status = "FINISHED" if row.status == "ok" else "FAILED"
        if self._insert(run_id, params, metrics, [*tags, digest], status, now or None):
            return
        for some in range(0, 0 if client_only else len(tags), MAX_PARAMS):  # the transaction was refused
            self.client.log_batch(run_id, tags=tags[some:some + MAX_PARAMS])
        for batch_params, batch_metrics, last in batches(params, metrics):
            self.client.log_batch(run_id, params=batch_params, metrics=batch_metrics,
                                  tags=[digest] if last else [])
        self.client.set_terminated(run_id, status, end_time=now or None)

    def _artifacts(self, run: Any, files: dict[str, bytes]) -> None:
        """The row's files as the run's artifacts: written straight into the run's folder where it
        lies inside the store's own artifact folder (what MLflow's local artifact store does with
        a file, without a staged copy of each; a store anyone may edit cannot send them
        elsewhere so), else staged and handed to ``log_artifacts``."""
        folder = local_artifact_folder(run.info.artifact_uri or "")
        if folder is not None and self.artifact_root is not None and folder.resolve().is_relative_to(
                self.artifact_root):
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (folder / name).write_bytes(data)
            return
        with tempfile.TemporaryDirectory(prefix="batch-ast-export.") as staging:
            for name, data in files.items():
                (Path(staging) / name).write_bytes(data)
            self.client.log_artifacts(run.info.run_id, staging)

    def _insert(self, run_id: str, params: list[Param], metrics: list[Metric], tags: list[RunTag],
                status: str, end_time: int | None) -> bool:
        """A fresh run's params, metrics (each value, and each key's latest), tags and end put in
        MLflow's SQL store in one transaction; False where they must go through ``log_batch`` and
        ``set_terminated`` (another store; a value MLflow refuses: ``log_batch`` says why; tables
        this MLflow version shapes otherwise).

        Written by hand because ``log_batch`` builds an ORM object and a flush per value, checks
        each against its key's latest, and commits params, metrics and tags apart: most of a
        138 ms row with ~390 values (benchmarks/RESULTS.md). These are the rows ``log_batch`` and
        ``set_terminated`` write (tested: a study exported either way reads back the same through
        MLflow, latest values, histories and status included), checked by MLflow's own
        validation, into a run that is fresh and this process's alone; MLflow's migration from its
        file store (``mlflow.store.fs2db``) writes these tables the same way. One transaction: the
        digest, which says the run is complete, is in only if everything is."""
        if self.engine is None:
            return False
        try:
            _, params, tags = _validate_batch_log_data([], params, tags)
        except MlflowException:
            return False
        unique, latest = unique_and_latest(metrics)

        def metric_rows(values: list[Metric]) -> list[dict]:
            return [{"run_uuid": run_id, "key": m.key, "value": m.value, "timestamp": m.timestamp,
                     "step": m.step, "is_nan": False} for m in values]  # finite values only (write())

        runs = SqlRun.__table__
        try:
            with self.engine.begin() as connection:
                if params:
                    connection.execute(SqlParam.__table__.insert(),
                                       [{"run_uuid": run_id, "key": p.key, "value": p.value} for p in params])
                if unique:
                    connection.execute(SqlMetric.__table__.insert(), metric_rows(unique))
                    connection.execute(SqlLatestMetric.__table__.insert(), metric_rows(latest))
                connection.execute(SqlTag.__table__.insert(),
                                   [{"run_uuid": run_id, "key": t.key, "value": t.value} for t in tags])
                connection.execute(runs.update().where(runs.c.run_uuid == run_id)
                                   .values(status=status, end_time=end_time))
        except sqlalchemy.exc.SQLAlchemyError:
            self.engine = None  # this store will not take them so: log_batch from now on
            return False
        return True

    def close(self) -> None:
        pass
