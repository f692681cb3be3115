"""People stage, export to Weights & Biases: one offline W&B run per row, synced by the user.

Runs are written with W&B's SDK in offline mode (nothing leaves the machine; ``wandb sync DEST/wandb``
uploads them when the user chooses). A run's id is the row id, so W&B keys it as we do. Each run
holds the row's hyperparameters as its config (typed; the record's tags under ``batch_ast``), its
loss trace as history per iteration (``loss/total``, ``loss/content``, ``loss/style``), its final
figures in the summary, a one-row table with the output as ``wandb.Audio`` (W&B's way to play and
compare audio across runs), the figures as images and the record as a file; a failed row's run
ends with exit code 1, which W&B shows as failed.

A W&B table travels as an artifact that W&B stages until sync, by default in the user's home
(``WANDB_DATA_DIR``); here each run stages its own inside its folder, so a run is one folder and
replacing it leaves nothing behind. A marker written last (``.batch-ast-run.json``: row id and the
record's digest) says the run is complete: an interrupted export's folder has none and is replaced.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .exporting import MAX_WORKERS, ExportRow, Payload, writable_folder
from .store import ROW_ID, current_umask, load_json, write_json_atomic
from .text import short_path

os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # no crash reports sent from a cluster node
import wandb  # noqa: E402 - after the setting above, which wandb reads as it loads

MARKER = ".batch-ast-run.json"
STAGING = "batch-ast-staging"  # the run's own WANDB_DATA_DIR (see the module's docstring)
TRACE_KEYS = {"total": "loss/total", "content": "loss/content", "style": "loss/style"}
_RUN_DIR = re.compile(r"offline-run-\d{8}_\d{6}-([0-9a-f]{16})")
_PROJECT_UNSAFE = re.compile(r"[/\\#?%:\s]+")  # characters W&B refuses in a project name


def project_name(experiment: str) -> str:
    """A W&B project name from the experiment's name (W&B takes no / \\ # ? % : in one)."""
    return _PROJECT_UNSAFE.sub("-", experiment).strip("-")[:128] or "batch-ast"


def open_target(dest: Path, uri: str | None, experiment: str) -> WandbTarget:
    return WandbTarget(writable_folder(dest, "the W&B folder"), project_name(experiment))


def _settings() -> wandb.Settings:
    """Offline, and none of what W&B records of a training script (console, code, git, system
    metrics, pip freeze): a run here is a finished row, not this process."""
    return wandb.Settings(mode="offline", silent=True, console="off", save_code=False, disable_code=True,
                          disable_git=True, disable_job_creation=True, x_disable_stats=True,
                          x_disable_meta=True, x_disable_machine_info=True, x_save_requirements=False)


@contextlib.contextmanager
def _data_dir(folder: Path) -> Iterator[None]:
    """W&B's staging folder set to ``folder`` while a run is written (W&B reads it when it stages)."""
    before = os.environ.get("WANDB_DATA_DIR")
    os.environ["WANDB_DATA_DIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WANDB_DATA_DIR", None)
        else:
            os.environ["WANDB_DATA_DIR"] = before


def _share_staged(folder: Path) -> None:
    """W&B stages a file readable by its owner alone; here it is read-only to whoever the umask lets
    read the rest of the run, so a colleague of a shared root can sync it too."""
    mask = current_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o444 & ~mask)


class WandbTarget:
    """The offline W&B runs of one study, in ``DEST/wandb`` (see the module's docstring)."""

    def __init__(self, dest: Path, project: str):
        self.dest = dest
        self.project = project
        self.runs_dir = dest / "wandb"
        runs = short_path(self.runs_dir)
        self.where = f"wandb leet {runs} (here), or wandb sync {runs} (to W&B's project {project!r})"
        self.max_workers = MAX_WORKERS  # a run is a folder of its own
        self.dirs: dict[str, list[Path]] = {}  # row id -> its run folders (complete or not)

    def exported(self) -> dict[str, str]:
        done: dict[str, str] = {}
        try:
            entries = sorted(self.runs_dir.iterdir())
        except FileNotFoundError:
            return done
        for entry in entries:
            found = _RUN_DIR.fullmatch(entry.name)
            if not found or entry.is_symlink() or not entry.is_dir():
                continue
            rid = found.group(1)
            first = rid not in self.dirs
            self.dirs.setdefault(rid, []).append(entry)
            digest = self._marker(entry, rid)
            # A row with a half-written folder beside its complete one is rewritten: ``wandb sync``
            # would upload both under one id.
            done[rid] = digest if first and digest else ""
        return done

    @staticmethod
    def _marker(folder: Path, rid: str) -> str:
        """The digest a complete run was made from ('' where its marker is missing or not ours)."""
        try:
            data = load_json(folder / MARKER, folder, 1 << 16)
        except (OSError, ValueError):
            return ""
        ok = isinstance(data, dict) and data.get("id") == rid and isinstance(data.get("digest"), str)
        return data["digest"] if ok and ROW_ID.fullmatch(rid) else ""

    def write(self, row: ExportRow, payload: Payload, replace: bool) -> None:
        for old in self.dirs.pop(row.id, []) if replace else []:
            shutil.rmtree(old, ignore_errors=True)
        config = dict(row.params)
        config["batch_ast"] = {**row.tags, "row_id": row.id, "status": row.status}
        run = wandb.init(dir=self.dest, project=self.project, id=row.id, name=row.name, config=config,
                         tags=[t for t in (row.status, row.tags.get("preset")) if t and len(t) <= 64],
                         job_type="batch-ast", settings=_settings(), reinit="create_new")
        folder = Path(run.dir).parent
        self.dirs[row.id] = [folder]
        try:
            with _data_dir(folder / STAGING), tempfile.TemporaryDirectory(prefix="batch-ast-wandb.") as tmp:
                self._fill(run, row, payload, Path(tmp))
        except BaseException:
            run.finish(exit_code=1)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        run.finish(exit_code=0 if row.status == "ok" else 1)
        _share_staged(folder / STAGING)
        write_json_atomic(folder / MARKER, {"id": row.id, "digest": row.digest, "name": row.name})

    @staticmethod
    def _fill(run: wandb.Run, row: ExportRow, payload: Payload, tmp: Path) -> None:
        trace = payload.trace or {}
        last = -1
        for i, step in enumerate(trace.get("iteration", [])):
            values = {key: float(trace[column][i]) for column, key in TRACE_KEYS.items()
                      if column in trace and trace[column][i] is not None}
            last = int(step)
            run.log(values, step=last)
        media: dict[str, object] = {}
        wav = payload.files.get("output.wav")
        if wav is not None and payload.audio is not None:
            path = tmp / "output.wav"
            path.write_bytes(wav)  # W&B copies a file as it is: the WAV's own bytes, not re-encoded
            table = wandb.Table(columns=["row_id", "name", "status", "preset", "content", "style", "output"])
            table.add_data(row.id, row.name, row.status, row.tags.get("preset", ""),
                           row.tags.get("content_name", ""), row.tags.get("style_name", ""),
                           wandb.Audio(str(path), caption=row.name))
            media["output"] = table
        for name in ("spectrograms.png", "losses.png"):
            if name in payload.files:
                path = tmp / name
                path.write_bytes(payload.files[name])
                try:
                    media[name.removesuffix(".png")] = wandb.Image(str(path), caption=name)
                except (OSError, ValueError):
                    continue  # not a picture: the row's other parts still go
        if media:
            run.log(media, step=max(last + 1, row.final_step))
        run.summary.update({**row.metrics, "status": row.status})
        record = Path(run.dir) / "record.json"
        record.write_bytes(payload.files["record.json"])
        run.save(str(record), base_path=run.dir, policy="now")

    def close(self) -> None:
        for link in ("latest-run", "debug.log", "debug-internal.log"):  # W&B's, to its last run
            path = self.runs_dir / link
            if path.is_symlink() and not path.exists():
                path.unlink()  # that run was replaced: ``wandb sync`` would trip on the dangling link
        wandb.teardown()  # stops W&B's service process, which outlives its runs otherwise
