"""Whether the index and a report are up to date with a root's files, from stamps kept in the
user's private state folder: what the last collect read, so that the next reads only what changed,
and what the last report was made from, so that a report with nothing new writes nothing.

A collect stamps every record, trace and submission file it read ([mtime_ns, size, inode]: files
are published by rename, so a rewrite changes the inode even within one mtime tick) and keeps the
stamps with the digests of the index files it wrote, in the user's private state folder, never in
the root: anyone who can write into a shared root could otherwise rewrite index.parquet and a cache
whose stamps match, and the owner's collect would keep the forgery.

Light on purpose (no pandas, no Arrow): ``batch-ast report`` asks it whether anything changed
before it loads what reading an index takes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat as stat_module
from pathlib import Path
from typing import Any

from .private import PrivateStateError, make_private_dir, state_dir
from .store import RECORD, TRACE, ResultsError, ResultsRoot, load_json, open_regular, write_atomic

STATE_VERSION = 1
MAX_STATE_BYTES = 256 << 20  # ~100 bytes a row: far above any real study

Stamp = list[int] | None
Sources = dict[str, dict[str, Stamp]]


def stamp(path: Path | str) -> Stamp:
    """[mtime_ns, size, inode] of a file (not followed if a link), None when absent: the identity
    of one published version."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def sources(results: ResultsRoot) -> Sources:
    """The files an index is made of: every record and trace, and every submission (rows without
    a record come from those)."""
    runs = f"{results.root}/runs"  # paths as text: 40,000 Path objects took a second, os.path.join 0.3 s
    stamps = ((rid, stamp(f"{runs}/{rid}/{RECORD}")) for rid in sorted(results.row_folders()))
    records = {rid: found for rid, found in stamps if found is not None}  # results.row_ids(), stat once
    return {
        "records": records,
        "traces": {rid: stamp(f"{runs}/{rid}/{TRACE}") for rid in records},
        "submissions": {path.name: stamp(path) for path in sorted(results.submissions_dir.glob("*.json"))}
        if results.submissions_dir.is_dir() else {},
    }


def _is_stamp(value: object) -> bool:
    return value is None or (isinstance(value, list) and len(value) == 3
                             and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def _valid_state(state: object) -> bool:
    """Whether a state file has the shape ``write_state`` gives it (a malformed one means "read
    everything", never a crash)."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        return False
    found = state.get("sources")
    if not isinstance(found, dict) or set(found) != {"records", "traces", "submissions"}:
        return False
    # The stamps themselves are only ever compared for equality with stamps made here (a malformed
    # one matches none): checking each of a study's 40,000 took a third of a collect with nothing new.
    if not all(isinstance(v, dict) for v in found.values()):
        return False
    counts = [state.get(k) for k in ("pending", "rows", "traces")]
    outputs = state.get("outputs")
    return (all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
            and isinstance(outputs, list) and len(outputs) == 2 and all(map(_is_stamp, outputs)))


def _private_file(path: Path) -> Path | None:
    """``path`` in the user's private state folder, its folder made; None when no private folder
    can be had (then nothing is kept: every collect reads every record, every report is written)."""
    try:
        make_private_dir(path.parent, state_dir())
    except (PrivateStateError, OSError):
        return None
    return path


def _state_path(results: ResultsRoot) -> Path | None:
    """Where this user keeps the collect state (``ResultsRoot.collect_state_path``)."""
    return _private_file(results.collect_state_path)


def file_digest(path: Path, root: Path) -> str:
    """SHA-256 of a file of the root ('' when it cannot be read as a regular file)."""
    digest = hashlib.sha256()
    try:
        with open_regular(path, root) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def index_digests(results: ResultsRoot) -> list[str]:
    """The digests of the root's two index files, as they are now."""
    return [file_digest(results.index_path, results.root), file_digest(results.traces_path, results.root)]


def read_state(results: ResultsRoot, columns: list[str] | None) -> dict | None:
    """The last collect's state, if it is this user's own, well formed, written for an index of
    these ``columns`` (None: any), and the index files are still byte for byte the ones it wrote."""
    path = _state_path(results)
    if path is None:
        return None
    try:
        state = load_json(path, None, MAX_STATE_BYTES)
    except (OSError, ValueError):
        return None
    if not _valid_state(state) or state.get("root") != str(results.root):
        return None
    if columns is not None and state.get("columns") != columns:
        return None  # another batch-ast version wrote it: its rows may lack columns
    if state.get("outputs") != [stamp(results.index_path), stamp(results.traces_path)]:
        return None  # rewritten or removed since by someone else: trust nothing
    if state.get("digests") != index_digests(results):
        return None  # same stamps, other bytes: a forgery
    return state


def write_state(results: ResultsRoot, found: Sources, columns: list[str], pending: int, rows: int,
                traces: int) -> None:
    """Keep what this collect read (``found``) and wrote; ``pending`` rows wait on the queue, so the
    next collect looks again even if no file changed."""
    path = _state_path(results)
    if path is None:
        return
    state = {
        "version": STATE_VERSION,
        "root": str(results.root),
        "columns": columns,
        "sources": found,
        "pending": pending,
        "rows": rows,
        "traces": traces,
        "outputs": [stamp(results.index_path), stamp(results.traces_path)],
        "digests": index_digests(results),
    }
    try:
        write_atomic(path, lambda fh: fh.write(json.dumps(state).encode("utf-8")))
    except OSError:
        pass  # only a cache: the next collect reads everything


def nothing_changed(state: dict | None, found: Sources) -> bool:
    """Whether a collect would write nothing: the same files as last time, and no row waiting on
    the queue."""
    return state is not None and state["sources"] == found and not state["pending"]


def unchanged_rows(state: dict | None, found: Sources) -> set[str]:
    """Ids whose record and trace are the files the last collect read."""
    if state is None:
        return set()
    old = state["sources"]
    return {
        rid
        for rid, record in found["records"].items()
        if record is not None
        and old["records"].get(rid) == record
        and old["traces"].get(rid) == found["traces"][rid]
    }


# --- reports ---------------------------------------------------------------------------------------

REPORT_STAMP_VERSION = 1


@functools.cache
def code_digest() -> str:
    """SHA-256 of the package's own code and page assets: a report made by other code is made
    again (the version number does not change between commits)."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    assets = [path for path in package.glob("report_assets/*") if path.suffix in (".js", ".css")]
    for path in sorted([*package.glob("*.py"), *assets]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def report_files(results: ResultsRoot, output: str | os.PathLike[str] | None) -> list[Path]:
    """The files of the report at ``output`` (default ``<root>/report.html``): the page, its data
    and its loss curves beside it."""
    out = (Path(output) if output else results.root / "report.html").resolve()
    return [out, out.with_name(out.stem + ".data.js"), out.with_name(out.stem + ".traces.js")]


def report_settings(metric: str | None, top: int, ascending: bool) -> dict[str, Any]:
    """What a report is made with besides the root (a portable report's copies are never stamped)."""
    return {"metric": metric, "top": top, "ascending": ascending}


def current_report(results: ResultsRoot, output: str | os.PathLike[str] | None,
                   settings: dict[str, Any]) -> Path | None:
    """The report at ``output`` when a collect would change nothing and that report is the one
    this code would write now (``report_is_current``); else None."""
    try:
        results.require_results_root()
    except ResultsError:
        return None
    files = report_files(results, output)
    if not report_is_current(results, files[0], files, settings):  # the cheaper question first
        return None
    return files[0] if nothing_changed(read_state(results, None), sources(results)) else None


def _report_stamp_path(out: Path) -> Path | None:
    return _private_file(state_dir() / "report" / f"{hashlib.sha256(os.fsencode(out)).hexdigest()[:40]}.json")


def _report_stamp(results: ResultsRoot, out: Path, files: list[Path], settings: dict[str, Any]) -> dict:
    return {
        "version": REPORT_STAMP_VERSION,
        "code": code_digest(),
        "root": str(results.root),
        "output": str(out),
        "settings": settings,
        "index": index_digests(results),
        "files": [stamp(path) for path in files],
    }


def _own_regular_file(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat_module.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def stamp_report(results: ResultsRoot, out: Path, files: list[Path], settings: dict[str, Any]) -> None:
    """Keep what the report at ``out`` (its ``files``) was just made from, with which settings."""
    path = _report_stamp_path(out)
    if path is None:
        return
    try:
        stamp_text = json.dumps(_report_stamp(results, out, files, settings))
        write_atomic(path, lambda fh: fh.write(stamp_text.encode("utf-8")))
    except OSError:
        pass  # only a cache: the next report is made again


def report_is_current(results: ResultsRoot, out: Path, files: list[Path], settings: dict[str, Any]) -> bool:
    """Whether the report at ``out`` is the one this code would write now: its files are this
    user's own and the ones the last report wrote, made with the same settings from the index files
    as they are now. Anyone who can write into a shared root may replace a file there, but not
    make it this user's; a group member may edit a group-writable one in place, but its new mtime
    only its owner can set back."""
    path = _report_stamp_path(out)
    if path is None or not all(_own_regular_file(file) for file in files):
        return False
    try:
        kept = load_json(path, None, MAX_STATE_BYTES)
    except (OSError, ValueError):
        return False
    return kept == _report_stamp(results, out, files, settings)
