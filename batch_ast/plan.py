"""Plan stage: give each manifest row a deterministic id and decide what runs, what is skipped.

A row id hashes the *contents* of both inputs and every hyperparameter that changes the result,
so renaming a file or re-submitting the same manifest maps to the same id, and a finished row
(record status ``ok``) is skipped unless forced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import ID_NEUTRAL, NOT_IN_ID
from .manifest import ManifestRow
from .store import ResultsRoot

ID_LENGTH = 16


def file_sha256(path: Path, _cache: dict[Path, str] = {}) -> str:  # noqa: B006 - deliberate memo
    """SHA-256 of a file's bytes, memoised per process (manifests reuse the same style file often)."""
    key = path.resolve()
    if key not in _cache:
        digest = hashlib.sha256()
        with key.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _cache[key] = digest.hexdigest()
    return _cache[key]


def row_id(content_sha256: str, style_sha256: str, params: dict[str, Any]) -> str:
    """Deterministic id of a transfer: both input hashes plus result-relevant hyperparameters."""
    relevant = {
        k: v for k, v in sorted(params.items())
        if k not in NOT_IN_ID and not (k in ID_NEUTRAL and v == ID_NEUTRAL[k])
    }
    blob = json.dumps(
        {"content": content_sha256, "style": style_sha256, "params": relevant}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:ID_LENGTH]


@dataclass(frozen=True)
class RowSpec:
    """Everything a job needs to run one row; plain data so it pickles to any compute node."""

    id: str
    row: int
    name: str
    content: str
    style: str
    content_sha256: str
    style_sha256: str
    params: dict[str, Any] = field(default_factory=dict)
    manifest: str = ""
    resources: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    """What a submission will do."""

    to_run: list[RowSpec]
    done: list[RowSpec]  # finished earlier (record says ok): skipped
    failed_before: list[RowSpec]  # failed earlier: skipped unless retryable and retry_failed
    duplicates: list[tuple[int, int]]  # (row, row it duplicates): run once

    @property
    def total_rows(self) -> int:
        return len(self.to_run) + len(self.done) + len(self.failed_before) + len(self.duplicates)


def make_plan(
    rows: list[ManifestRow],
    results: ResultsRoot,
    manifest: Path,
    force: bool = False,
    retry_failed: bool = False,
) -> Plan:
    """Hash inputs, assign ids, drop duplicates and rows already finished."""
    to_run: list[RowSpec] = []
    done: list[RowSpec] = []
    failed_before: list[RowSpec] = []
    duplicates: list[tuple[int, int]] = []
    first_row_of: dict[str, int] = {}
    for mrow in rows:
        c_sha, s_sha = file_sha256(mrow.content), file_sha256(mrow.style)
        rid = row_id(c_sha, s_sha, mrow.params)
        if rid in first_row_of:
            duplicates.append((mrow.row, first_row_of[rid]))
            continue
        first_row_of[rid] = mrow.row
        spec = RowSpec(
            id=rid,
            row=mrow.row,
            name=mrow.name,
            content=str(mrow.content.resolve()),
            style=str(mrow.style.resolve()),
            content_sha256=c_sha,
            style_sha256=s_sha,
            params=dict(mrow.params),
            manifest=str(manifest.resolve()),
            resources=dict(mrow.resources),
        )
        record = results.read_record(rid)
        status = record.get("status") if record else None
        if not force and status == "ok":
            done.append(spec)
        elif not force and status == "failed" and not (retry_failed and record.get("retryable")):
            failed_before.append(spec)  # deterministic failures (bad audio) are not retried
        else:
            to_run.append(spec)
    return Plan(to_run=to_run, done=done, failed_before=failed_before, duplicates=duplicates)


def chunk(specs: list[RowSpec], rows_per_job: int) -> list[list[RowSpec]]:
    """Pack rows into jobs of at most ``rows_per_job`` rows, keeping manifest order."""
    size = max(1, rows_per_job)
    return [specs[i : i + size] for i in range(0, len(specs), size)]
