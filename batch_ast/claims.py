"""Row claims: a submission claims each row it will run, so a second submission into the same root
(another terminal, a colleague) skips rows in flight instead of computing them twice.

A claim is a small JSON file created O_EXCL in the row's folder. Whether a claim is still live is
not this module's to judge — only the queue knows — so ``claim_rows`` takes a ``is_live(row_id,
claim)`` callback (liveness.claim_liveness). A claim file is a stranger's until checked: one that
is not a valid claim, not a regular file, or a link, is nobody's and is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import socket
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .store import ResultsRoot, load_json, move_aside, root_lock, share_with_group_root

CLAIM = "claim.json"
CLAIMS_LOCK = ".claims.lock"
MAX_CLAIM_BYTES = 4096


@dataclass(frozen=True)
class Claim:
    """Who claimed a row: the submission, and the process that made it (until the submission file
    exists, that process is the only sign of life a claim has)."""

    submission_id: str
    host: str
    pid: int
    created: float  # time.time() when made

    @classmethod
    def mine(cls, submission_id: str) -> Claim:
        return cls(submission_id, socket.gethostname(), os.getpid(), time.time())

    @classmethod
    def from_json(cls, data: Any) -> Claim:
        """A claim read from the root; ValueError when it is not one (wrong types, missing keys,
        a time that is not a finite number)."""
        if not isinstance(data, dict):
            raise ValueError(f"not a claim (a {type(data).__name__})")
        sid, host, pid, created = (data.get(k) for k in ("submission_id", "host", "pid", "created"))
        if not isinstance(sid, str) or not isinstance(host, str) or len(sid) > 200 or len(host) > 300:
            raise ValueError("submission_id and host must be short text")
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31:
            raise ValueError(f"pid must be a process id, not {str(pid)[:40]!r}")
        if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
            raise ValueError(f"created must be a time, not {str(created)[:40]!r}")
        return cls(sid, host, pid, float(created))


def claim_path(results: ResultsRoot, row_id: str):
    return results.run_dir(row_id) / CLAIM


def read_claim(results: ResultsRoot, row_id: str) -> tuple[bool, Claim | None]:
    """(a claim file exists, the claim — None when that file is not a valid claim)."""
    try:
        return True, Claim.from_json(load_json(claim_path(results, row_id), results.root, MAX_CLAIM_BYTES))
    except FileNotFoundError:
        return False, None
    except (OSError, ValueError):
        return True, None


def try_claim(results: ResultsRoot, row_id: str, claim: Claim) -> bool:
    """Create the row's claim atomically (O_EXCL, no symlink followed); False when one exists."""
    import json

    dir_fd = results.row_dir_fd(row_id)
    try:
        fd = os.open(
            CLAIM, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dir_fd
        )
    except FileExistsError:
        return False
    finally:
        os.close(dir_fd)
    share_with_group_root(fd, results)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(asdict(claim), fh)
    return True


def remove_claim(results: ResultsRoot, row_id: str) -> None:
    """Remove the row's claim file; something else at its name (a folder) is moved aside."""
    dir_fd = results.row_dir_fd(row_id)
    try:
        mode = os.stat(CLAIM, dir_fd=dir_fd, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            move_aside(claim_path(results, row_id))
        else:
            os.unlink(CLAIM, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(dir_fd)


def release_claim(results: ResultsRoot, row_id: str, submission_id: str) -> None:
    """Remove the row's claim if it is this submission's (a finished row needs none)."""
    _, claim = read_claim(results, row_id)
    if claim is not None and claim.submission_id == submission_id:
        with contextlib.suppress(OSError):
            remove_claim(results, row_id)


def claim_rows(
    results: ResultsRoot, specs: Sequence[Any], submission_id: str, is_live: Callable[[str, Claim], bool],
) -> tuple[list, dict[str, str]]:
    """Claim every row for ``submission_id`` under the root's claims lock. Returns (claimed specs,
    {row id: why another submission holds it}). A claim that ``is_live`` says is not, or that is
    not a valid claim at all, is taken over."""
    claimed, busy = [], {}
    mine = Claim.mine(submission_id)
    with root_lock(results, CLAIMS_LOCK):
        for spec in specs:
            if not try_claim(results, spec.id, mine):
                _, held = read_claim(results, spec.id)
                if held is not None and is_live(spec.id, held):
                    busy[spec.id] = f"in flight in submission {held.submission_id[:80]}"
                    continue
                try:
                    remove_claim(results, spec.id)
                except OSError as exc:  # UnsafeFileError (errno None) included
                    if exc.errno not in (errno.ENOENT, None):
                        raise
                if not try_claim(results, spec.id, mine):
                    busy[spec.id] = "claimed by another submission"
                    continue
            claimed.append(spec)
    return claimed, busy


def release_claims(results: ResultsRoot, specs: Sequence[Any], submission_id: str) -> None:
    for spec in specs:
        release_claim(results, spec.id, submission_id)
