"""Layout of the results root and atomic file writes.

Every file a reader may see is written under a hidden temp name in the same folder and
``os.replace``d into place, so readers (collect, status, a second submit) never see half a file.
Everything is keyed by row id, never by SLURM job id (a fresh controller restarts job ids at 1).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .private import state_dir
from .text import describe_os_error, short_path

RECORD = "record.json"
OUTPUT_WAV = "output.wav"
TRACE = "trace.parquet"
CHECKPOINT = "checkpoint.pt"
PROGRESS = "progress.json"  # a running row's heartbeat (progress.py)


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
    on a shared filesystem can read results wherever the user's umask lets them (in a group-shared
    root ``share_with_group`` adds the group's read and write)."""
    return 0o666 & ~current_umask()


LOCK_WAIT_ENV = "BATCH_AST_LOCK_WAIT_S"
LOCK_WAIT_S = 600.0  # a lock is held for a claim round or a collect: seconds to a minute at scale


def group_shared(st: os.stat_result) -> bool:
    """Whether a results root (its ``stat``) is a group's shared folder: writable by its group.
    Then everything batch-ast creates in it is made group-writable and given the root's group, as
    git does with ``core.sharedRepository=group``: a colleague's submit, collect or report must be
    able to replace, lock and extend what this user wrote, whatever this user's umask."""
    return stat.S_ISDIR(st.st_mode) and bool(st.st_mode & stat.S_IWGRP)


def share_with_group(fd: int, root_st: os.stat_result, folder: bool = False) -> None:
    """Give a file or folder that this user just created in a group-shared root the root's group
    and group read/write (folders also the setgid bit, so what is created below inherits the
    group). Best effort: a group this user is not in cannot be given (``check_shared_root`` says
    so at submit)."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        return
    with contextlib.suppress(OSError):
        if st.st_gid != root_st.st_gid:
            os.fchown(fd, -1, root_st.st_gid)
    with contextlib.suppress(OSError):
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | (0o2770 if folder else 0o660))


def share_with_group_root(fd: int, results: ResultsRoot) -> None:
    """``share_with_group`` for a file just created in ``results`` where its root is group-shared."""
    shared = _root_shared(results.root)
    if shared is not None:
        share_with_group(fd, shared)


def make_root(root: Path) -> None:
    """Create a results root (and missing parents) where it does not exist. A root made inside a
    group-shared folder (a setgid project folder, ``chmod 2770``) is group-shared itself, whatever
    the umask: the colleagues who can write the project folder can use the root made in it."""
    if root.is_dir():
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(root, 0o777)
    except FileExistsError:
        return
    with contextlib.suppress(OSError):
        parent = os.stat(root.parent)
        if group_shared(parent) and parent.st_mode & stat.S_ISGID:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                share_with_group(fd, parent, folder=True)
            finally:
                os.close(fd)


def check_shared_root(root: Path) -> str:
    """'' when files this user creates in ``root`` will be usable by the root's group (or the root
    is not group-shared); else one line saying what to change."""
    try:
        st = os.stat(root)
    except OSError:
        return ""
    if not group_shared(st) or os.geteuid() == 0:
        return ""
    if st.st_gid not in os.getgroups() and st.st_gid != os.getegid():
        return (
            f"{short_path(root)} is writable by group {st.st_gid}, which you are not in: files you create "
            "there "
            "would not be writable by that group (ask to be added to it, or chgrp the root to your project "
            "group)"
        )
    return ""


class UnsafeFileError(OSError):
    """A file or folder in a results root that batch-ast refuses to use: a symlink, a FIFO or
    device, a file over its size cap, a path that leaves the root."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        super().__init__(reason)
        self.filename, self.strerror = str(path), reason


def parts_within(root: Path, target: Path) -> tuple[str, ...]:
    """The parts of ``target`` below ``root`` (both absolute); UnsafeFileError when it is not below."""
    try:
        parts = Path(os.path.abspath(target)).relative_to(root).parts
    except ValueError:
        raise UnsafeFileError(target, f"outside the results root {short_path(root)}") from None
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise UnsafeFileError(target, "not a file path inside the results root")
    return parts


def open_dir_fd(root: Path, parts: tuple[str, ...], create: bool) -> int:
    """A descriptor of the folder ``root/parts...``, reached without following any symlink below
    ``root`` (each step is opened relative to the last with O_NOFOLLOW), creating missing folders
    when asked. A symlink or non-folder on the way raises UnsafeFileError: a planted link cannot
    redirect a write or a read out of the root, even if it appears between a check and the use."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    if create:
        make_root(root)  # the root itself is the user's own path
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    root_st = os.fstat(fd)
    try:
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                made = False
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                    made = True
                nxt = os.open(part, flags, dir_fd=fd)
                if made and group_shared(root_st):
                    share_with_group(nxt, root_st, folder=True)
            except (NotADirectoryError, OSError) as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeFileError(
                        root.joinpath(*parts[: i + 1]), "a symlink or not a folder"
                    ) from None
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _root_shared(root: Path | None) -> os.stat_result | None:
    """The root's stat when it is group-shared (``group_shared``), else None."""
    if root is None:
        return None
    try:
        st = os.stat(root)
    except OSError:
        return None
    return st if group_shared(st) else None


def _dir_fd(target: Path, root: Path | None, create: bool) -> int:
    if root is None:  # a path the user chose (report -o, expand -o): the user's own folders
        if create:
            target.parent.mkdir(parents=True, exist_ok=True)
        return os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return open_dir_fd(root, parts_within(root, target)[:-1], create)


def write_atomic(target: Path, writer: Callable[[BinaryIO], None], root: Path | None = None) -> None:
    """Call ``writer(file)`` on a new hidden temp file beside ``target``, then rename it over
    ``target`` atomically (readers never see half a file).

    The temp file is created O_EXCL|O_NOFOLLOW and written through the descriptor, and the rename
    happens inside the folder's descriptor: a symlink planted at the temp or target name is never
    followed. With ``root`` (a results root), every folder from it to ``target`` is reached the same
    way. The file gets ``published_mode`` (0666 less the umask), like ``open()``."""
    target = Path(target)
    dir_fd = _dir_fd(target, Path(root) if root is not None else None, create=True)
    shared = _root_shared(Path(root) if root is not None else None)
    name = ""
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        name = f"{TMP_PREFIX}{target.name[:200]}.{secrets.token_hex(6)}"
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fchmod(fh.fileno(), published_mode())
            if shared is not None:
                share_with_group(fh.fileno(), shared)
        os.replace(name, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        name = ""
    except OSError as exc:
        if not exc.filename:
            exc.filename = str(target)
        raise
    finally:
        if name:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
        os.close(dir_fd)


def write_json_atomic(target: Path, data: Any, root: Path | None = None) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    write_atomic(target, lambda fh: fh.write(text.encode("utf-8")), root)


def open_regular(target: Path, root: Path | None = None, limit: int | None = None) -> BinaryIO:
    """A file of the results root opened for reading, only when it is a regular file reached
    without a symlink (``root``: every folder below it too) and at most ``limit`` bytes: a FIFO
    would hang the reader, a device or a huge file would never end, a link would read outside."""
    target = Path(target)
    dir_fd = _dir_fd(target, Path(root) if root is not None else None, create=False)
    try:
        try:
            fd = os.open(
                target.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeFileError(target, "a symlink (not followed)") from None
            exc.filename = str(target)
            raise
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    problem = ""
    if not stat.S_ISREG(st.st_mode):
        problem = "not a regular file (a FIFO, device or folder)"
    elif limit is not None and st.st_size > limit:
        problem = f"{st.st_size} bytes, more than the {limit} such a file may have"
    if problem:
        os.close(fd)
        raise UnsafeFileError(target, problem)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def load_regular(target: Path, root: Path | None = None, limit: int | None = None) -> bytes:
    """The bytes of ``open_regular(target, root, limit)`` (never more than ``limit``: a file that
    grows while read is cut, and then fails to parse)."""
    with open_regular(target, root, limit) as fh:
        return fh.read() if limit is None else fh.read(limit + 1)


def load_json(target: Path, root: Path | None, limit: int) -> Any:
    """JSON from a file of the root (``read_regular``), ValueError for text that is not JSON or
    nests deeper than Python's parser can follow."""
    return parse_json(target, load_regular(target, root, limit), limit)


def parse_json(target: Path, data: bytes, limit: int) -> Any:
    if len(data) > limit:
        raise UnsafeFileError(target, f"more than the {limit} bytes such a file may have")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason})") from None


def _lock_wait_s() -> float:
    try:
        value = float(os.environ.get(LOCK_WAIT_ENV, ""))
    except ValueError:
        return LOCK_WAIT_S
    return value if value >= 0 else LOCK_WAIT_S


def _open_lock_file(path: Path, shared: os.stat_result | None) -> int:
    """The lock file's descriptor: read-write where this user may, else read-only (flock needs no
    write access on a local filesystem, so a lock file a colleague created with a 022 umask still
    works); created group-shared in a group-shared root. A symlink, folder or FIFO planted at its
    name is moved aside, never followed or opened."""
    base = os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(100):
        try:
            try:
                fd = os.open(path, os.O_RDWR | base, 0o666)
            except PermissionError:
                fd = os.open(path, os.O_RDONLY | base, 0o666)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise
            _move_aside(path)
            continue
        if stat.S_ISREG(os.fstat(fd).st_mode):
            if shared is not None:
                share_with_group(fd, shared)
            return fd
        os.close(fd)
        _move_aside(path)
    raise UnsafeFileError(path, "cannot be made a lock file")


@contextmanager
def root_lock(results: ResultsRoot, name: str, wait_s: float | None = None) -> Iterator[None]:
    """An exclusive flock on ``<root>/<name>`` (collect's and the claims' locks), waited for at most
    ``wait_s`` (default ``$BATCH_AST_LOCK_WAIT_S``, else 10 minutes): anyone who can read a lock
    file can hold it for ever (a shared flock needs only read access), so a wait without a bound
    could hang every member of a group. Past it, ``LockTimeout`` names the lock."""
    path = results.root / name
    fd = _open_lock_file(path, _root_shared(results.root))
    wait_s = _lock_wait_s() if wait_s is None else wait_s
    try:
        deadline, pause = time.monotonic() + wait_s, 0.05
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            except OSError as exc:  # EBADF: NFS emulates flock with POSIX locks, which need write access
                raise LockTimeout(
                    f"{short_path(path)}: cannot be locked ({exc.strerror}); where flock needs write access "
                    "(NFS), "
                    "the lock file must be writable by you: its owner can chmod g+w it"
                ) from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout(
                    f"{short_path(path)}: held by another process for over {wait_s:g} s (another batch-ast "
                    f"command, or anyone who can read the file: `fuser -v {short_path(path)}` shows who); "
                    f"try again later, or remove the file if nobody should hold it")
            time.sleep(min(pause, left))
            pause = min(pause * 2, 2.0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _move_aside(path: Path) -> Path:
    """Rename a planted file or link out of the way (``<name>.bad-<random>``), keeping it to look at;
    returns the new name."""
    bad = path.with_name(f"{path.name}.bad-{secrets.token_hex(4)}")
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, bad)
    return bad


def move_aside(path: Path) -> Path:
    """Rename a bad file of the root to ``<name>.bad`` (replacing an older one) and return that name."""
    bad = path.with_name(path.name + ".bad")
    try:
        os.replace(path, bad)
    except (IsADirectoryError, NotADirectoryError, OSError) as exc:
        if exc.errno not in (errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise
        return _move_aside(path)  # a folder is there already
    return bad


class ResultsError(RuntimeError):
    """A results root that cannot be used as asked: not writable, not a results root, no index."""


class LockTimeout(ResultsError):
    """A lock of the results root was held by someone else for longer than batch-ast waits."""


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
        return (
            any((self.root / name).is_dir() for name in ("runs", "submissions")) or self.index_path.exists()
        )

    def require_results_root(self) -> None:
        """Refuse a folder that is not a results root (a typo must not silently make a new one)."""
        try:
            ok = self.is_results_root()
        except OSError as exc:
            raise ResultsError(f"{short_path(self.root)}: cannot read: {describe_os_error(exc)}") from None
        if not ok:
            what = (
                "does not exist"
                if not self.root.exists()
                else "is not a batch-ast results root (no runs/, submissions/ or index.parquet)"
            )
            raise ResultsError(f"{short_path(self.root)} {what}")

    def require_writable(self) -> None:
        """Create the root if needed and prove a file can be written there, before any work starts."""
        try:
            make_root(self.root)
            fd, probe = tempfile.mkstemp(prefix=f"{TMP_PREFIX}probe.", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            hint = ""
            with contextlib.suppress(OSError):
                st = os.stat(self.root)
                if st.st_uid != os.geteuid() and not group_shared(st):
                    hint = (
                        " (its owner can share it with the group: chmod -R g+w,g+s and chgrp -R to the "
                        "project "
                        "group; batch-ast then keeps it so)"
                    )
            raise ResultsError(
                f"results root {short_path(self.root)} is not writable: {describe_os_error(exc)}{hint}"
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

    def progress_path(self, row_id: str) -> Path:
        return self.run_dir(row_id) / PROGRESS

    @property
    def submitit_dir(self) -> Path:
        """Where versions before 0.2 kept submitit's files (now in the user's private state)."""
        return self.root / "submitit"

    @property
    def submissions_dir(self) -> Path:
        return self.root / "submissions"

    @property
    def collect_state_path(self) -> Path:
        """What this user's last collect of the root read (see index.update_index), so the next reads
        only changes: in the user's private state folder, never in the root (anyone who can write
        there could forge it along with the index)."""
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:40]
        return state_dir() / "collect" / f"{digest}.json"

    @property
    def index_path(self) -> Path:
        return self.root / "index.parquet"

    @property
    def traces_path(self) -> Path:
        return self.root / "traces.parquet"

    def row_ids(self) -> list[str]:
        """Ids of the row folders under runs/ that hold a record file (a name that is not a row
        id is no row's: ignored)."""
        runs = os.path.join(self.root, "runs")  # as text, one lstat a row: pathlib's glob took 0.5 s
        return sorted(rid for rid in self.row_folders() if os.path.lexists(os.path.join(runs, rid, RECORD)))

    def row_folders(self) -> set[str]:
        """Names of the folders under runs/ that are row ids (with a record or not: a row in flight
        has its claim there)."""
        try:
            with os.scandir(self.root / "runs") as entries:
                return {e.name for e in entries if ROW_ID.fullmatch(e.name)}
        except OSError:
            return set()

    def row_dir_fd(self, row_id: str) -> int:
        """A descriptor of the row's folder, created if missing. Something planted at its name (a
        symlink, a file) is moved aside to ``<id>.bad-<random>`` first: the row's folder is the
        row's, and a link there must cost that one row nothing, not stop the submit."""
        parts = parts_within(self.root, self.run_dir(row_id))
        try:
            return open_dir_fd(self.root, parts, create=True)
        except UnsafeFileError as exc:
            if exc.filename != str(self.run_dir(row_id)):
                raise  # runs/ itself: not one row's problem
            _move_aside(self.run_dir(row_id))
            return open_dir_fd(self.root, parts, create=True)

    def write(self, target: Path, writer: Callable[[BinaryIO], None]) -> None:
        """``write_atomic`` confined to this root (no symlink below it is followed)."""
        write_atomic(target, writer, self.root)

    def write_json(self, target: Path, data: Any) -> None:
        write_json_atomic(target, data, self.root)


# A row id: the first 16 hex digits of a SHA-256 (plan.row_id). Anything read from the root that
# names a row (a folder, a record's id, a submission's rows) must look like one before it becomes
# part of a path.
ROW_ID = re.compile(r"[0-9a-f]{16}")
SHA256 = re.compile(r"[0-9a-f]{64}")
