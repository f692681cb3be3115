"""The submitting user's private state, outside every results root: submitit's folders (job
pickles, sbatch scripts, job logs) and the input hash cache.

A results root is often a group-writable project folder, and a pickle is code: whoever can replace
``<job>_submitted.pkl`` or ``<job>_0_result.pkl`` runs what they like as the submitter. So submitit
writes into ``<state dir>/submitit/<submission id>/``, a folder only the user can write (0700),
and both ends check before anything is unpickled: the job (``job_entry.py``, run by
``python -m batch_ast.job_entry`` in place of ``python -m submitit.core._submit``) and the
submitter (``check_job_files`` before ``job.result()``). A folder or pickle that another user
could write, or that another user owns, is refused.

The state dir is ``$BATCH_AST_STATE_DIR``, else ``$XDG_STATE_HOME/batch-ast``, else
``~/.local/state/batch-ast``; a profile's ``state_dir`` key moves it (jobs must see it: on a
cluster, a home or project folder the compute nodes mount).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

STATE_ENV = "BATCH_AST_STATE_DIR"
SUBMISSION_ID = re.compile(r"[0-9]{8}T[0-9]{6}(\.[0-9]{6})?-[0-9a-f]{6}")


class PrivateStateError(RuntimeError):
    """The private state folder cannot be made private, or a file in it is not the user's alone."""


def state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where this user's private state lives (see the module's docstring)."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV]).expanduser().absolute()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser().absolute() / "batch-ast"


def _problem(path: Path, st: os.stat_result, private: bool) -> str:
    uid = os.geteuid()
    if private:
        if st.st_uid != uid:
            return f"owned by uid {st.st_uid}, not by this user (uid {uid})"
        if st.st_mode & 0o022:
            return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        return ""
    # a folder above the private ones: others may not be able to rename what is below it
    if st.st_uid not in (uid, 0):
        return f"owned by uid {st.st_uid}, neither this user nor root"
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return f"writable by group or others without the sticky bit (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


def _closed(st: os.stat_result) -> bool:
    """A folder of this user's that nobody else may enter or list (no group/other bits, e.g.
    0700): whatever lies below it is out of everyone else's reach, whatever its own mode."""
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def check_private(path: Path, private_from: Path) -> None:
    """Raise PrivateStateError unless ``path`` (a folder or file) can be written by this user
    alone: it and every folder from ``private_from`` down to it owned by the user, no symlink among
    them, and each either not group/other-writable or below a folder of the user's that nobody
    else may enter (0700: what submitit creates at a group umask of 002 or 007 is then still
    private); every folder above ``private_from`` owned by the user or root and, where others may
    write, sticky (as /tmp)."""
    path, private_from = Path(os.path.abspath(path)), Path(os.path.abspath(private_from))
    try:
        path.relative_to(private_from)
    except ValueError:
        raise PrivateStateError(f"{path} is not inside the private folder {private_from}") from None
    closed_above = False  # walking down from /: a closed folder of the user's has been passed
    for item in reversed([path, *path.parents]):
        try:
            st = os.lstat(item)
        except OSError as exc:
            raise PrivateStateError(f"{item}: {exc.strerror}") from None
        private = item == private_from or private_from in item.parents
        if private and stat.S_ISLNK(st.st_mode):
            raise PrivateStateError(f"{item} is a symlink: refusing it for private state")
        if stat.S_ISLNK(st.st_mode):
            continue  # a link above the private folder (/home -> /data/home): its target is checked below
        problem = _problem(item, st, private)
        if closed_above and problem.startswith("writable"):
            problem = ""  # below a folder nobody else may enter: nobody else can reach it
        if problem:
            what = "pickle or folder" if private else "folder above the private state"
            raise PrivateStateError(
                f"{item} ({what}) is {problem}: another user could replace the job's pickles, so batch-ast "
                f"will not use it (chmod go-w it, or set ${STATE_ENV} / the profile's state_dir to a private "
                "folder)"
            )
        if _closed(st):
            closed_above = True


def make_private_dir(path: Path, private_from: Path) -> Path:
    """Create ``path`` (and missing parents up to ``private_from``) mode 0700, then check it
    (``check_private``); returns it resolved."""
    path = Path(os.path.realpath(path))
    private_from = Path(os.path.realpath(private_from))
    try:
        old = os.umask(0o077)
        try:
            path.mkdir(parents=True, exist_ok=True)
        finally:
            os.umask(old)
    except OSError as exc:
        raise PrivateStateError(
            f"cannot create the private state folder {path}: {exc.strerror} (set ${STATE_ENV} or the "
            "profile's "
            "state_dir to a folder of yours)"
        ) from None
    check_private(path, private_from)
    return path


def submitit_folder(state: Path, submission_id: str) -> Path:
    """The private folder of one submission's submitit files (jobs use ``<it>/%j``)."""
    if not SUBMISSION_ID.fullmatch(submission_id):
        raise PrivateStateError(f"not a submission id: {submission_id[:80]!r}")
    return make_private_dir(state / "submitit" / submission_id, state)


def check_job_files(folder: Path, files: list[Path]) -> None:
    """Before a job's pickle is unpickled (by the job, or the submitter's ``job.result()``): the
    job's folder and those files are the user's alone, and no folder above lets another user
    rename it away (``check_private`` from the job's folder)."""
    folder = Path(os.path.abspath(folder))
    for item in [folder, *(f for f in files if os.path.lexists(f))]:
        check_private(item, folder)
        if item != folder and not stat.S_ISREG(os.lstat(item).st_mode):
            raise PrivateStateError(f"{item} is not a regular file")


def is_private_submitit_folder(folder: str | os.PathLike[str], submission_id: str) -> bool:
    """Whether ``folder`` (from a submission file: anyone's words) is this user's own private
    folder of that submission: its name is the id, it sits in a ``submitit`` folder, and
    ``check_private`` passes from its grandparent down."""
    path = Path(os.path.abspath(folder))
    if (
        path.name != submission_id
        or path.parent.name != "submitit"
        or not SUBMISSION_ID.fullmatch(submission_id)
    ):
        return False
    try:
        check_private(path, path.parent.parent)
    except PrivateStateError:
        return False
    return True


CACHE_ENV = {"NUMBA_CACHE_DIR": "numba", "MPLCONFIGDIR": "matplotlib"}


def use_private_caches(state: Path) -> None:
    """Point numba's and matplotlib's caches into ``<state>/cache/`` unless the user set them: with
    a read-only install and a read-only HOME (a container) numba has nowhere else to write, and
    ``import librosa`` itself fails; otherwise they would write into HOME, outside the results
    root, the state folder and $TMPDIR. Call before librosa or matplotlib is imported."""
    wanted = {env: state / "cache" / name for env, name in CACHE_ENV.items() if not os.environ.get(env)}
    for env, folder in wanted.items():
        try:
            os.environ[env] = str(make_private_dir(folder, state))
        except PrivateStateError:
            pass  # the library's own default then; a state folder that is not private fails elsewhere
