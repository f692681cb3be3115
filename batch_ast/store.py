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


TMP_PREFIX = ".tmp-"


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status);
    elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def published_mode() -> int:
    """Mode of a published file: what ``open()`` would give (0666 less the umask), so colleagues
    on a shared filesystem can read results wherever the user's umask lets them."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success move it over ``target`` atomically.

    mkstemp creates its file 0600 whatever the umask; the published file gets the umask's mode."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{target.name}.", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, published_mode())
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


class ResultsError(RuntimeError):
    """A results root that cannot be used as asked: not writable, not a results root, no index."""


def short_path(path: str | Path, limit: int = 160) -> str:
    """A path for an error message: whole when short, its two ends when absurdly long."""
    text = str(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 :]} ({len(text)} characters)"


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the file (shortened) and the system's reason."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{short_path(exc.filename)}: {reason}" if exc.filename else reason


class ResultsRoot:
    """Paths inside a results root folder. Made once from the user's path and passed down as it
    is (to the job too: it pickles); path-like, so ``open``/``Path`` take it."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).absolute()
        try:
            self.root = self.root.resolve()
        except OSError:  # unresolvable (too long, a loop): keep the absolute path, I/O will say why
            pass

    @classmethod
    def of(cls, root: str | os.PathLike[str] | ResultsRoot) -> ResultsRoot:
        """``root`` itself when it is a ResultsRoot already, else a new one."""
        return root if isinstance(root, ResultsRoot) else cls(root)

    def __fspath__(self) -> str:
        return str(self.root)

    __str__ = __fspath__

    def __repr__(self) -> str:
        return f"ResultsRoot({str(self.root)!r})"

    def is_results_root(self) -> bool:
        """True when a submission or a run has been made here (what status/collect/report need)."""
        return any((self.root / name).is_dir() for name in ("runs", "submissions")) or self.index_path.exists()

    def require_results_root(self) -> None:
        """Refuse a folder that is not a results root (a typo must not silently make a new one)."""
        try:
            ok = self.is_results_root()
        except OSError as exc:
            raise ResultsError(f"{short_path(self.root)}: cannot read: {describe_os_error(exc)}") from None
        if not ok:
            what = "does not exist" if not self.root.exists() else "is not a batch-ast results root (no runs/, submissions/ or index.parquet)"
            raise ResultsError(f"{short_path(self.root)} {what}")

    def require_writable(self) -> None:
        """Create the root if needed and prove a file can be written there, before any work starts."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=f"{TMP_PREFIX}probe.", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ResultsError(
                f"results root {short_path(self.root)} is not writable: {describe_os_error(exc)}"
            ) from None

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
    def hash_cache_path(self) -> Path:
        return self.root / ".cache" / "sha256.json"

    @property
    def collect_state_path(self) -> Path:
        """What the last collect read (see index.collect): lets the next one read only changes."""
        return self.root / ".cache" / "collect.json"

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


# --- Row claims -------------------------------------------------------------------------------
# A submission claims each row it will run with an O_EXCL file, so a second submission into the
# same root (another terminal, a colleague) skips rows in flight instead of computing them twice.
# Whether a claim is stale (its job left the queue) is for the caller to judge: only the dispatch
# layer can ask the queue.
CLAIM = "claim.json"


def claim_path(results: ResultsRoot, row_id: str) -> Path:
    return results.run_dir(row_id) / CLAIM


@contextmanager
def claims_lock(results: ResultsRoot) -> Iterator[None]:
    """Serialise the claim step of concurrent submissions (check-then-replace of stale claims)."""
    import fcntl

    results.root.mkdir(parents=True, exist_ok=True)
    with (results.root / ".claims.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_claim(results: ResultsRoot, row_id: str) -> dict[str, Any] | None:
    try:
        data = json.loads(claim_path(results, row_id).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: a claim nobody can prove live
    return data if isinstance(data, dict) else {}


def try_claim(results: ResultsRoot, row_id: str, claim: dict[str, Any]) -> bool:
    """Create the row's claim atomically (O_EXCL); False when one exists already."""
    path = claim_path(results, row_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(claim, fh)
    return True


def release_claim(results: ResultsRoot, row_id: str, submission_id: str) -> None:
    """Remove the row's claim if it is this submission's (a finished row needs none)."""
    claim = read_claim(results, row_id)
    if claim is not None and claim.get("submission_id") == submission_id:
        claim_path(results, row_id).unlink(missing_ok=True)
