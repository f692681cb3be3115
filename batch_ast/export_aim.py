"""People stage, export to Aim: one Aim run per row, through Aim's SDK.

An Aim run's hash is Aim's to choose, so a run says its row in ``run["batch_ast"]``, with the
record's digest, as the last thing written. Aim keeps nothing of a run that was never closed
(a killed export's run has no parameters at all), so before a run is filled its hash and row are
put in a file of our own (``.batch-ast-pending/<hash>``), removed once the run is complete: the
next export finds the killed export's run by it and replaces it. An export interrupted by an
exception (Ctrl-C) deletes its half-written run at once. Aim's UI and queries see a run once
its repository's index holds it; ``aim up`` indexes new runs itself, and so does this export as
it ends (interrupted too), so a query right after the export sees every row.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

from aim import Audio, Image, Repo, Run, Text
from aim.sdk.index_manager import RepoIndexManager
from aim.storage.object import CustomObject
from aim.storage.types import BLOB
from PIL import Image as Picture

from .exporting import MAX_WORKERS, ExportRow, Payload, writable_folder
from .store import ROW_ID, write_atomic
from .text import short_path

KEY = "batch_ast"  # the run's own parameter that names its row and record
PENDING = ".batch-ast-pending"
TRACE_CONTEXT = {"subset": "trace"}


class PngImage(Image):
    """An ``aim.Image`` holding a PNG's own bytes. Aim's ``Image`` decodes what it is given and
    encodes it again with Pillow, 50 ms for each of a row's figures (a third of a run's time), for
    the same picture; this stores the file as ``Image`` stores what it encodes (the PNG's bytes,
    format, mode, size) and is read back by Aim as an ``aim.image`` (tested through its query API)."""

    def __init__(self, png: bytes, caption: str = ""):
        CustomObject.__init__(self)
        with Picture.open(io.BytesIO(png)) as picture:  # reads the header only
            if picture.format != "PNG":
                raise ValueError(f"not a PNG: {picture.format}")
            size, mode = picture.size, picture.mode
        self.storage["data"] = BLOB(data=png)
        self.storage["source"] = "PIL.Image"
        self.storage["mode"] = mode
        self.storage["format"] = "png"
        self.storage["width"], self.storage["height"] = size
        self.caption = caption


def open_target(dest: Path, uri: str | None, experiment: str) -> AimTarget:
    writable_folder(dest, "the Aim repository")
    return AimTarget(Repo.from_path(str(dest), init=not (dest / ".aim").is_dir()), experiment)


class AimTarget:
    """The runs of one Aim repository that belong to one study's rows."""

    # Each run is a RocksDB database of its own: worker processes write runs side by side, and the
    # exporting process indexes them as it closes (one process holds the index)
    max_workers = MAX_WORKERS

    def __init__(self, repo: Repo, experiment: str):
        self.repo = repo
        self.experiment = experiment
        self.where = f"aim up --repo {short_path(Path(repo.root_path))}"
        self.runs: dict[str, list[str]] = {}  # row id -> its run hashes
        self.indexer = RepoIndexManager.get_index_manager(repo)

    def _chunks(self) -> list[str]:
        """Every run's hash, indexed or not (an interrupted export's last run may not be)."""
        try:
            return sorted(os.listdir(Path(self.repo.path) / "meta" / "chunks"))
        except FileNotFoundError:
            return []

    def exported(self) -> dict[str, str]:
        done: dict[str, str] = {}
        chunks = self._chunks()
        self._index(self._unindexed(chunks))  # a run's mark is read from the index
        for run_hash, rid in self._pending().items():
            if run_hash in chunks:
                self.runs.setdefault(rid, []).append(run_hash)
                done.setdefault(rid, "")
            else:
                (self.pending_dir / run_hash).unlink(missing_ok=True)  # its run is gone already
        for run_hash in chunks:
            try:
                mark = Run(run_hash, repo=self.repo, read_only=True).get(KEY)
            except Exception:  # noqa: BLE001 - a run Aim itself cannot open is not ours to judge
                continue
            if not isinstance(mark, dict) or not isinstance(mark.get("row_id"), str):
                continue  # a run someone tracked by hand into this repository
            rid = mark["row_id"]
            if run_hash in self.runs.get(rid, []):
                continue
            self.runs.setdefault(rid, []).append(run_hash)
            digest = mark.get("digest")
            if isinstance(digest, str) and digest and not done.get(rid):
                done[rid] = digest
            else:
                done.setdefault(rid, "")
        return done

    @property
    def pending_dir(self) -> Path:
        return Path(self.repo.root_path) / PENDING

    def _pending(self) -> dict[str, str]:
        """Run hash -> row id of the runs an export began and did not finish."""
        out = {}
        try:
            entries = list(self.pending_dir.iterdir())
        except FileNotFoundError:
            return out
        for entry in entries:
            try:
                rid = entry.read_text()[:100].strip() if entry.is_file() and not entry.is_symlink() else ""
            except OSError:
                continue
            if ROW_ID.fullmatch(rid) and re.fullmatch(r"[0-9a-f]{8,64}", entry.name):
                out[entry.name] = rid
        return out

    def write(self, row: ExportRow, payload: Payload, replace: bool) -> None:
        for old in self.runs.pop(row.id, []) if replace else []:
            self.repo.delete_run(old)
            (self.pending_dir / old).unlink(missing_ok=True)
        run = Run(repo=self.repo, experiment=self.experiment, system_tracking_interval=None,
                  capture_terminal_logs=False, log_system_params=False)
        self.pending_dir.mkdir(exist_ok=True)
        write_atomic(self.pending_dir / run.hash, lambda fh: fh.write(row.id.encode()))
        try:
            self._fill(run, row, payload)
        except BaseException:
            run.close()
            self.repo.delete_run(run.hash)
            (self.pending_dir / run.hash).unlink(missing_ok=True)
            raise
        self.runs[row.id] = [run.hash]  # indexed as the export ends (close)
        (self.pending_dir / run.hash).unlink(missing_ok=True)

    def _fill(self, run: Run, row: ExportRow, payload: Payload) -> None:
        run.name = row.name
        run["hparams"] = dict(row.params)
        run["tags"] = dict(row.tags)
        for tag in (row.status, row.tags.get("preset")):
            if tag:
                run.add_tag(tag)
        trace = payload.trace or {}
        for i, step in enumerate(trace.get("iteration", [])):
            values = {f"loss_{part}": float(trace[part][i]) for part in ("total", "content", "style")
                      if part in trace and trace[part][i] is not None}
            run.track(values, step=int(step), context=TRACE_CONTEXT)
        if row.metrics:
            run.track(row.metrics, step=row.final_step)
        self._media(run, payload)
        run.track(Text(payload.files["record.json"].decode("utf-8")), name="record")
        run[KEY] = {"row_id": row.id, "digest": row.digest}  # last: the run is complete
        run.close()

    @staticmethod
    def _media(run: Run, payload: Payload) -> None:
        wav = payload.files.get("output.wav")
        if wav is not None and payload.audio is not None:
            run.track(Audio(io.BytesIO(wav), format="wav", rate=payload.sample_rate, caption="output"),
                      name="output")
        for name in ("spectrograms.png", "losses.png"):
            if name in payload.files:
                try:
                    image = PngImage(payload.files[name], caption=name)
                except (OSError, ValueError):
                    continue  # not a PNG: the row's other parts still go
                run.track(image, name=name.removesuffix(".png"))

    def close(self) -> None:
        """The runs this export wrote, its workers' too, put in the repository's index (also
        after an interruption)."""
        self._index(self._unindexed(self._chunks()))

    def _index(self, hashes: list[str]) -> None:
        """Put runs in the repository's index at once. Aim's index is a RocksDB that takes ~1 MB a
        run (Aim keeps each sequence's first and last value: the audio and pictures); opened and
        flushed for each run as it was written, each run cost more than the last (279 ms a run at
        the first 50, 819 ms at 500). Held open once, it is flushed, and its lock let go, when the
        last run is in it, before anything reads it. An index another process holds (``aim up``
        indexing) is left to it: it indexes new runs itself."""
        if not hashes:
            return
        try:
            index = self.repo._get_index_container("meta", timeout=10)
        except Exception:  # noqa: BLE001 - Aim's lock timeout: another process indexes the runs
            return
        try:
            for run_hash in hashes:
                self.indexer.index(run_hash)
        finally:
            index.close()

    def _unindexed(self, hashes: list[str]) -> list[str]:
        """The runs the index does not hold as they are (a killed export's last complete runs)."""
        try:
            view = self.repo._get_index_tree("meta", 10).view(())
            return [h for h in hashes if self.indexer._is_run_index_outdated(h, view)]
        except Exception:  # noqa: BLE001 - as in _index: the index is another process's now
            return []
