"""Layout of the results root and atomic file writes.

Every file a reader may see is written under a hidden temp name in the same folder and
``os.replace``d into place, so readers (collect, status, a second submit) never see half a file.
Everything is keyed by row id, never by SLURM job id (a fresh controller restarts job ids at 1).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RECORD = "record.json"
OUTPUT_WAV = "output.wav"
TRACE = "trace.parquet"
CHECKPOINT = "checkpoint.pt"


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success move it over ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.name}.", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(target: Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and atomically publish the result as ``target``."""
    with atomic_path(target) as tmp:
        writer(tmp)


def write_json_atomic(target: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    write_atomic(target, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


class ResultsRoot:
    """Paths inside a results root folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def run_dir(self, row_id: str) -> Path:
        return self.root / "runs" / row_id

    def record_path(self, row_id: str) -> Path:
        return self.run_dir(row_id) / RECORD

    def output_path(self, row_id: str) -> Path:
        return self.run_dir(row_id) / OUTPUT_WAV

    def trace_path(self, row_id: str) -> Path:
        return self.run_dir(row_id) / TRACE

    def checkpoint_path(self, row_id: str) -> Path:
        return self.run_dir(row_id) / CHECKPOINT

    @property
    def submitit_dir(self) -> Path:
        return self.root / "submitit"

    @property
    def submissions_dir(self) -> Path:
        return self.root / "submissions"

    @property
    def index_path(self) -> Path:
        return self.root / "index.parquet"

    @property
    def traces_path(self) -> Path:
        return self.root / "traces.parquet"

    def record_paths(self) -> list[Path]:
        runs = self.root / "runs"
        return sorted(runs.glob(f"*/{RECORD}")) if runs.is_dir() else []

    def read_record(self, row_id: str) -> dict[str, Any] | None:
        """The row's record, or None when absent or unreadable (a reader never trusts a bad file)."""
        try:
            data = json.loads(self.record_path(row_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None
