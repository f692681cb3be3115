"""Plan stage: give each manifest row a deterministic id and decide what runs, what is skipped.

A row id hashes the *contents* of both inputs and every hyperparameter that changes the result,
so renaming a file or re-submitting the same manifest maps to the same id, and a finished row
(record status ``ok``) is skipped unless forced.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import ID_NEUTRAL, NOT_IN_ID, Params
from .manifest import ManifestRow
from .private import make_private_dir, state_dir
from .record import record_dict
from .store import SHA256, ResultsRoot, load_json, write_json_atomic

ID_LENGTH = 16


HASH_CACHE_VERSION = 1
PROGRESS_ABOVE_BYTES = 256 << 20  # show hashing progress when there is more than this to read


def _file_key(path: Path) -> tuple[str, list[int]]:
    """(real path, [size, mtime_ns, inode]): a cached hash is reused only while all of them hold."""
    real = path.resolve()
    st = real.stat()
    return str(real), [st.st_size, st.st_mtime_ns, st.st_ino]


HASH_CACHE = "sha256.json"
MAX_HASH_CACHE_BYTES = 256 << 20


class HashCache:
    """SHA-256 of input files, kept in the user's private state folder (private.py), so
    re-submitting a 10,000-row study does not reread every file; an entry counts only while the
    file's size, mtime and inode are unchanged. Not in the results root: whoever could write
    there could make a row take another row's id (and be skipped as "already done")."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        if path is not None:
            try:
                data = load_json(path, None, MAX_HASH_CACHE_BYTES)
                files = (
                    data.get("files")
                    if isinstance(data, dict) and data.get("version") == HASH_CACHE_VERSION
                    else None
                )
                if isinstance(files, dict):
                    self.entries = {k: v for k, v in files.items() if _valid_entry(v)}
            except (OSError, ValueError):
                pass  # no cache or a bad one: hash again

    def lookup(self, path: Path) -> str | None:
        real, stamp = _file_key(path)
        entry = self.entries.get(real)
        return str(entry[3]) if entry and entry[:3] == stamp else None

    def store(self, path: Path, digest: str) -> None:
        real, stamp = _file_key(path)
        self.entries[real] = [*stamp, digest]
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            write_json_atomic(self.path, {"version": HASH_CACHE_VERSION, "files": self.entries})
        except OSError:
            pass  # a cache that cannot be written costs time next submit, nothing else


def _valid_entry(entry: Any) -> bool:
    return (isinstance(entry, list) and len(entry) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) for v in entry[:3])
            and isinstance(entry[3], str) and SHA256.fullmatch(entry[3]) is not None)


def file_sha256(path: Path, on_bytes: Any = None) -> str:
    """SHA-256 of a file's bytes; ``on_bytes(n)`` is told of progress."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


def hash_inputs(
    paths: list[Path], cache: HashCache, progress: bool = False, save: bool = True
) -> dict[Path, str]:
    """Hash every distinct input once, from the cache where it is still valid, with a progress bar
    (bytes) on a terminal when there is much to read."""
    from tqdm import tqdm

    digests: dict[Path, str] = {}
    todo: list[Path] = []
    for path in dict.fromkeys(p.resolve() for p in dict.fromkeys(paths)):
        cached = cache.lookup(path)
        if cached:
            digests[path] = cached
        else:
            todo.append(path)
    total = sum(p.stat().st_size for p in todo)
    show = progress and total > PROGRESS_ABOVE_BYTES and sys.stderr.isatty()
    if progress and total > PROGRESS_ABOVE_BYTES and not show:
        print(f"hashing {len(todo)} input file(s), {total / 2**30:.1f} GiB ...", file=sys.stderr, flush=True)
    with tqdm(total=total, unit="B", unit_scale=True, desc="hashing inputs", disable=not show) as bar:
        for path in todo:
            digests[path] = file_sha256(path, bar.update)
            cache.store(path, digests[path])
    if save:
        cache.save()
    return digests


def result_params(params: Params) -> dict[str, Any]:
    """The hyperparameters that change a row's result (those in its id), sorted by name."""
    return {
        k: v for k, v in sorted(params.to_dict().items())
        if k not in NOT_IN_ID and not (k in ID_NEUTRAL and v == ID_NEUTRAL[k])
    }


# Beat-segmented rows changed method on 2026-11-26 (one optimisation with segment-wise losses over
# the whole grid input, instead of segments optimised apart and their outputs concatenated, which
# dropped the pre-roll and the tail): their ids changed with it, so finished rows of the old method
# are run again, not taken for results of the new one. Other rows' ids are unchanged.
# Changed again (issue #13): the other input is warped onto the grid with its beats paired by their
# position from the start, no longer by index (which shifted it by a whole beat where the tracker
# missed a first beat in one input only).
RHYTHM_METHOD = "segment-losses/beats-paired-by-position"


def row_id(content_sha256: str, style_sha256: str, params: Params) -> str:
    """Deterministic id of a transfer: both input hashes plus result-relevant hyperparameters."""
    identity = {"content": content_sha256, "style": style_sha256, "params": result_params(params)}
    if params.beat_segmented:
        identity["rhythm_method"] = RHYTHM_METHOD
    blob = json.dumps(identity, sort_keys=True)
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
    params: Params
    manifest: str = ""
    resources: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``params`` as a dict): what a job is sent and a submission stores."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RowSpec:
        """The spec ``to_dict`` wrote, or the spec fields of a record (other keys are ignored)."""
        values = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**{**values, "params": Params.from_record(raw["params"])})


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
    progress: bool = False,
    use_cache: bool = True,
    save_cache: bool = True,
    hash_cache: Path | None = None,
) -> Plan:
    """Hash inputs (through the root's hash cache), assign ids, drop duplicates and rows already
    finished. ``save_cache=False`` (a dry run) reads the cache but writes nothing."""
    to_run: list[RowSpec] = []
    done: list[RowSpec] = []
    failed_before: list[RowSpec] = []
    duplicates: list[tuple[int, int]] = []
    first_row_of: dict[str, int] = {}
    if hash_cache is None and use_cache:
        state = state_dir()
        if save_cache:
            make_private_dir(state, state)
        hash_cache = state / HASH_CACHE
    cache = HashCache(hash_cache if use_cache else None)
    resolved = {path: path.resolve() for path in dict.fromkeys(p for m in rows for p in (m.content, m.style))}
    digests = hash_inputs(list(resolved.values()), cache, progress, save=save_cache)
    recorded = set(results.row_ids())  # a row without a record file needs no read (a study's most rows)
    manifest_path = str(manifest.resolve())
    for mrow in rows:
        content, style = resolved[mrow.content], resolved[mrow.style]
        c_sha, s_sha = digests[content], digests[style]
        rid = row_id(c_sha, s_sha, mrow.params)
        if rid in first_row_of:
            duplicates.append((mrow.row, first_row_of[rid]))
            continue
        first_row_of[rid] = mrow.row
        spec = RowSpec(
            id=rid,
            row=mrow.row,
            name=mrow.name,
            content=str(content),
            style=str(style),
            content_sha256=c_sha,
            style_sha256=s_sha,
            params=mrow.params,
            manifest=manifest_path,
            resources=dict(mrow.resources),
        )
        record = record_dict(results, rid) if rid in recorded else None
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


# --- rows that run together ----------------------------------------------------------------------

def group_key(params: Params) -> tuple | None:
    """Rows with equal keys use the same random network on the same device and can share one
    batched conv; None for rows that cannot be batched (beat-segmented transfers)."""
    if params.beat_segmented:
        return None
    return (*params.network_key(), params.device)


def group_for_batching(params: Sequence[Params], batch_rows: int) -> list[list[int]]:
    """Indices of rows to optimise together: consecutive runs (in pack order) of rows with equal
    network keys, at most ``batch_rows`` long. Order is kept so a pack's rows finish in order."""
    groups: list[list[int]] = []
    last_key: tuple | None = None
    for i, p in enumerate(params):
        key = group_key(p)
        current = groups[-1] if groups else None
        if (
            current is not None and key is not None and key == last_key
            and len(current) < max(1, batch_rows)
        ):
            current.append(i)
        else:
            groups.append([i])
        last_key = key
    return groups
