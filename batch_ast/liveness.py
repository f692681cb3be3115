"""Submission stage, claim liveness: whether another submission's claim on a row still holds.

A submit claims its rows (``claims.claim_rows``) so that two submissions of one root never run a
row twice; a claim left by a submission that died, or planted by someone else, must not block its
row for ever. The policy lives here, apart from the claim files (``claims.py``) and from
``status`` (which it asks for the queue's states), so each can change alone.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from .backends import local_job_alive
from .claims import Claim, claim_rows
from .status import SubmissionStatus, query_status
from .store import ResultsRoot
from .submissions import valid_submissions

CLAIM_GRACE_S = 600  # a claim whose submission file never appeared is stale after this long
# a claim whose queue this user cannot ask (a local submission of another host; no squeue here) is
# believed this long after it was made: a row of such a submission still running after 12 hours is
# computed again by a later submit, and a planted claim blocks its row for no longer
CLAIM_UNVERIFIED_S = 12 * 3600


def claim_liveness(results: ResultsRoot, force: bool = False) -> Callable[[str, Claim], bool]:
    """The ``is_live(row_id, claim)`` that claims.claim_rows asks. A claim is live while a queue
    this user can ask shows its submission's job of that row pending or running. Where that queue
    cannot be asked (another host's local jobs, no SLURM commands here), it is believed for
    CLAIM_UNVERIFIED_S after it was made, and not at all with ``force``. A claim whose submission
    file does not exist (yet) is live only for CLAIM_GRACE_S and, on this host, only while its
    process lives; ``force`` takes it over. A time in the future is never believed. A planted claim
    and submission thus block a row for hours at most, and ``--force`` takes it at once."""
    submissions = {s.submission_id: s for s in valid_submissions(results)}
    # one queue query per submission, not per row: (its status, {row id: state})
    states: dict[str, tuple[SubmissionStatus, dict[str, str]]] = {}

    def believed(claim: Claim, for_s: float) -> bool:
        return not force and 0 <= time.time() - claim.created < for_s

    def is_live(row_id: str, claim: Claim) -> bool:
        sub = submissions.get(claim.submission_id)
        if sub is not None:
            if sub.submission_id not in states:
                status = query_status(results, sub)
                states[sub.submission_id] = status, {r.id: r.state for r in status.rows}
            status, by_row = states[sub.submission_id]
            if by_row.get(row_id, "") not in ("pending", "running"):
                return False
            return (status.queue_known and not sub.created_in_future) or believed(claim, CLAIM_UNVERIFIED_S)
        if not believed(claim, CLAIM_GRACE_S):
            return False
        return claim.host != socket.gethostname() or local_job_alive(str(claim.pid))

    return is_live


def claim_unless_live(
    results: ResultsRoot, specs: list, submission_id: str, force: bool = False
) -> tuple[list, dict[str, str]]:
    """Claim every row for ``submission_id`` (claims.claim_rows with the queue's liveness)."""
    return claim_rows(results, specs, submission_id, claim_liveness(results, force))
