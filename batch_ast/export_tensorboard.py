"""People stage, export to TensorBoard: one run (a subfolder of the logdir) per row.

Written with TensorBoard's own protocol buffers and record writer (no TensorFlow needed): each run
holds the row's session-start hyperparameters and end status (the HParams dashboard), its loss
trace as scalars per iteration (``loss/total``, ``loss/content``, ``loss/style``), its final figures
as ``metrics/<name>`` scalars, the output WAV as an audio summary at the row's sample rate, the
spectrogram and loss figures as images, and the record as text. The logdir's root holds the
experiment summary that declares the hyperparameters and metrics (rewritten at each export).

A run folder is ``<name>-<row id>``; a marker written last (``.batch-ast-run.json``: row id, the
record's digest, its hyperparameters' types) says the run is complete, so an interrupted export's
folders are recognised and replaced.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import google_crc32c
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.compat.proto.types_pb2 import DT_STRING
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from .exporting import MAX_WORKERS, ExportRow, Payload, writable_folder
from .store import ROW_ID, load_json, write_json_atomic
from .text import short_path

MARKER = ".batch-ast-run.json"
EXPERIMENT_FILE = "events.out.tfevents.0000000000.batch-ast-hparams"
TRACE_TAGS = {"total": "loss/total", "content": "loss/content", "style": "loss/style"}
_RUN_DIR = re.compile(r".*-([0-9a-f]{16})")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,@-]+")
_TYPES = {"number": api_pb2.DATA_TYPE_FLOAT64, "text": api_pb2.DATA_TYPE_STRING,
          "flag": api_pb2.DATA_TYPE_BOOL}


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum of ``data``: CRC-32C, rotated and offset as TensorFlow masks it."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class RecordWriter:
    """TensorBoard's event-file framing (length, its checksum, data, its checksum), written by hand
    because TensorBoard's own writer computes CRC-32C in pure Python: a row's audio and figures
    (~0.5 MB) took it about half a second, most of an export. Same bytes as
    ``tensorboard.summary.writer.record_writer.RecordWriter`` (tests/test_export.py checks)."""

    def __init__(self, fh: BinaryIO):
        self.fh = fh

    def write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self.fh.write(header + struct.pack("<I", masked_crc32c(header)) + data
                      + struct.pack("<I", masked_crc32c(data)))


def open_target(dest: Path, uri: str | None, experiment: str) -> TensorBoardTarget:
    return TensorBoardTarget(writable_folder(dest, "the TensorBoard logdir"))


def run_dir_name(row: ExportRow) -> str:
    """``<name>-<row id>``: the name readable in TensorBoard's run list, the id keeping it the row's."""
    name = _UNSAFE.sub("_", row.name).strip("._")[:80] or "row"
    return f"{name}-{row.id}"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "flag"
    return "number" if isinstance(value, (int, float)) else "text"


def _plugin(name: str, content: bytes = b"") -> SummaryMetadata:
    return SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=name, content=content))


def _hparams_value(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary.Value:
    data.version = hparams_metadata.PLUGIN_DATA_VERSION
    return Summary.Value(tag=tag, metadata=_plugin(hparams_metadata.PLUGIN_NAME, data.SerializeToString()))


def session_start(row: ExportRow) -> Summary:
    """The row's hyperparameters, typed (the HParams dashboard's columns)."""
    info = plugin_data_pb2.SessionStartInfo(group_name=run_dir_name(row),  # the HParams table's Trial ID
                                            start_time_secs=_secs(row.started_at))
    for name, value in row.params.items():
        kind = _kind(value)
        if kind == "flag":
            info.hparams[name].bool_value = value
        elif kind == "number":
            info.hparams[name].number_value = float(value)
        else:
            info.hparams[name].string_value = str(value)
    data = plugin_data_pb2.HParamsPluginData(session_start_info=info)
    return Summary(value=[_hparams_value(hparams_metadata.SESSION_START_INFO_TAG, data)])


def session_end(row: ExportRow) -> Summary:
    status = api_pb2.STATUS_SUCCESS if row.status == "ok" else api_pb2.STATUS_FAILURE
    info = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=_secs(row.finished_at))
    data = plugin_data_pb2.HParamsPluginData(session_end_info=info)
    return Summary(value=[_hparams_value(hparams_metadata.SESSION_END_INFO_TAG, data)])


def experiment(hparams: dict[str, str], metrics: list[str]) -> Summary:
    """The study's hyperparameters (name and type) and metrics, for the logdir's root."""
    summary = api_pb2.Experiment(
        hparam_infos=[api_pb2.HParamInfo(name=name, type=_TYPES[kind])
                      for name, kind in sorted(hparams.items())],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"metrics/{name}"), display_name=name)
                      for name in metrics])
    data = plugin_data_pb2.HParamsPluginData(experiment=summary)
    return Summary(value=[_hparams_value(hparams_metadata.EXPERIMENT_TAG, data)])


def text(tag: str, markdown: str) -> Summary:
    tensor = TensorProto(dtype=DT_STRING, string_val=[markdown.encode("utf-8")],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    return Summary(value=[Summary.Value(tag=tag, metadata=_plugin("text"), tensor=tensor)])


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's header; None for anything else (only a PNG is shown as an image)."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _secs(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0


class TensorBoardTarget:
    """A TensorBoard logdir of one study (see the module's docstring)."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.where = f"tensorboard --logdir {short_path(dest)}"
        self.max_workers = MAX_WORKERS  # a run is a folder of its own
        self.dirs: dict[str, list[Path]] = {}  # row id -> its run folders (complete or not)
        self.markers: dict[str, dict[str, Any]] = {}

    def exported(self) -> dict[str, str]:
        done: dict[str, str] = {}
        for entry in sorted(self.dest.iterdir()):
            found = _RUN_DIR.fullmatch(entry.name)
            if not found or not entry.is_dir() or entry.is_symlink():
                continue
            rid = found.group(1)
            self.dirs.setdefault(rid, []).append(entry)
            marker = self._marker(entry, rid)
            if marker is not None and not done.get(rid):
                done[rid] = marker["digest"]
                self.markers[rid] = marker
            else:
                done.setdefault(rid, "")
        return done

    @staticmethod
    def _marker(folder: Path, rid: str) -> dict[str, Any] | None:
        """A complete run's marker, checked (it is a file in a folder others may write)."""
        try:
            data = load_json(folder / MARKER, folder, 1 << 20)
        except (OSError, ValueError):
            return None
        ok = (isinstance(data, dict) and data.get("id") == rid and isinstance(data.get("digest"), str)
              and isinstance(data.get("hparams"), dict) and isinstance(data.get("metrics"), list)
              and all(isinstance(k, str) and v in _TYPES for k, v in data["hparams"].items())
              and all(isinstance(m, str) for m in data["metrics"]))
        return data if ok and ROW_ID.fullmatch(rid) else None

    def write(self, row: ExportRow, payload: Payload, replace: bool) -> None:
        for old in self.dirs.pop(row.id, []) if replace else []:
            shutil.rmtree(old, ignore_errors=True)
        folder = self.dest / run_dir_name(row)
        shutil.rmtree(folder, ignore_errors=True)  # a folder left by an interrupted export
        folder.mkdir()
        self.dirs[row.id] = [folder]
        wall = _secs(row.finished_at) or time.time()
        with open(folder / f"events.out.tfevents.{int(wall)}.batch-ast.{row.id}", "wb") as fh:
            writer = RecordWriter(fh)

            def event(summary: Summary, step: int = 0) -> None:
                writer.write(Event(wall_time=wall, step=step, summary=summary).SerializeToString())

            writer.write(Event(wall_time=wall, file_version="brain.Event:2").SerializeToString())
            event(session_start(row))
            trace = payload.trace or {}
            for i, step in enumerate(trace.get("iteration", [])):
                values = [Summary.Value(tag=tag, simple_value=float(trace[column][i]))
                          for column, tag in TRACE_TAGS.items()
                          if column in trace and trace[column][i] is not None]
                event(Summary(value=values), int(step))
            event(Summary(value=[Summary.Value(tag=f"metrics/{name}", simple_value=value)
                                 for name, value in sorted(row.metrics.items())]), row.final_step)
            self._media(event, row, payload)
            event(text("record", "```json\n" + payload.files["record.json"].decode("utf-8") + "\n```"))
            event(session_end(row), row.final_step)
        write_json_atomic(folder / MARKER, {
            "id": row.id, "digest": row.digest, "name": row.name,
            "hparams": {name: _kind(value) for name, value in row.params.items()},
            "metrics": sorted(row.metrics)})

    @staticmethod
    def _media(event: Any, row: ExportRow, payload: Payload) -> None:
        """The output as audio (its WAV bytes as written: decoded, the same samples), the figures."""
        wav = payload.files.get("output.wav")
        if wav is not None and payload.audio is not None:
            channels = 1 if payload.audio.ndim == 1 else payload.audio.shape[1]
            audio = Summary.Audio(sample_rate=float(payload.sample_rate), num_channels=channels,
                                  length_frames=len(payload.audio), encoded_audio_string=wav,
                                  content_type="audio/wav")
            event(Summary(value=[Summary.Value(tag="output", audio=audio)]))
        for name in ("spectrograms.png", "losses.png"):
            data = payload.files.get(name, b"")
            size = png_size(data)
            if size is not None:
                image = Summary.Image(width=size[0], height=size[1], colorspace=4, encoded_image_string=data)
                event(Summary(value=[Summary.Value(tag=name.removesuffix(".png"), image=image)]))

    def close(self) -> None:
        """The experiment summary at the logdir's root, from every complete run's marker (worker
        processes may have written some: the folder is read again)."""
        self.dirs.clear()
        self.markers.clear()
        self.exported()
        hparams: dict[str, str] = {}
        metrics: set[str] = set()
        for marker in self.markers.values():
            for name, kind in marker["hparams"].items():
                hparams.setdefault(name, kind)
            metrics.update(marker["metrics"])
        if not hparams:
            return
        fd, tmp = tempfile.mkstemp(dir=self.dest, prefix=".experiment.")
        try:
            with os.fdopen(fd, "wb") as fh:
                writer = RecordWriter(fh)
                writer.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
                writer.write(Event(wall_time=time.time(),
                                   summary=experiment(hparams, sorted(metrics))).SerializeToString())
            os.replace(tmp, self.dest / EXPERIMENT_FILE)
        except BaseException:
            os.unlink(tmp)
            raise
