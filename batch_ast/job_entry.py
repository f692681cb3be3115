"""What a submitit job runs: ``python -m batch_ast.job_entry FOLDER`` in place of submitit's
``python -m submitit.core._submit FOLDER``. It checks that the job's folder and pickle are the
user's alone (``private.job_entry``) before submitit loads them. A module of its own, imported by
nothing else, so ``-m`` runs it fresh."""

import sys

from batch_ast.private import job_entry

if __name__ == "__main__":
    job_entry(sys.argv[1:])
