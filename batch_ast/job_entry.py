"""What a submitit job runs: ``python -m batch_ast.job_entry FOLDER`` in place of submitit's
``python -m submitit.core._submit FOLDER``. It checks that the job's folder and pickle are the
user's alone (``private.check_job_files``) before submitit loads them. A module of its own,
imported by nothing else, so ``-m`` runs it fresh."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from batch_ast.private import SUBMISSION_ID, PrivateStateError, check_job_files, use_private_caches


def job_entry(argv: list[str]) -> None:
    """What a job runs instead of ``python -m submitit.core._submit FOLDER``: check that the
    job's folder and its submitted pickle are the user's alone, then let submitit load and run it."""
    import submitit
    from submitit.core import submission, utils

    folder = argv[-1]
    job_folder = Path(os.path.abspath(folder))
    if job_folder.parent.parent.name == "submitit" and SUBMISSION_ID.fullmatch(job_folder.parent.name):
        use_private_caches(job_folder.parents[2])  # <state>/submitit/<submission>/<job>
    environment = submitit.JobEnvironment()
    paths = utils.JobPaths(folder, job_id=environment.job_id, task_id=environment.global_rank)
    # an array's pickles are moved into their folders once sbatch has answered: a task may start
    # first (submitit's own loader waits too); an hour bounds the wait for one that never comes
    deadline = time.monotonic() + 3600
    while not os.path.lexists(paths.submitted_pickle) and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        check_job_files(paths.folder, [paths.submitted_pickle])
    except PrivateStateError as exc:
        print(f"batch-ast: refusing to load the job's pickle: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None
    sys.argv = [sys.argv[0], folder]
    submission.submitit_main()


if __name__ == "__main__":
    job_entry(sys.argv[1:])
