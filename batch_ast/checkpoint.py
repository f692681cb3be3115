"""Job stage, checkpoints: what a row's saved optimisation state must be before it is resumed.

A checkpoint lies in the results root, so it is a stranger's file: it is loaded with torch's
restricted unpickler (plain data only), must name this row and its settings, and must have the
structure of a fresh transfer's state (``checkpoint_shape_problem``, ``history_problem``) — a bad
one costs only a restart of its row from the beginning, never a crash at a later step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .plan import RowSpec, result_params
from .store import open_regular

CHECKPOINT_FORMAT = 1


def checkpoint_identity(spec: RowSpec) -> dict[str, Any]:
    """What a checkpoint stores to prove whose state it is: the row id and its settings."""
    return {
        "format": CHECKPOINT_FORMAT,
        "row_id": spec.id,
        "settings": json.dumps(result_params(spec.params), sort_keys=True),
    }


def read_checkpoint(
    path: Path, spec: RowSpec, device: Any, root: Path | None = None
) -> tuple[dict[str, Any] | None, str]:
    """(state, "") for a checkpoint that is plain data and belongs to ``spec``, else (None, why).

    ``weights_only=True``: torch's restricted unpickler accepts tensors, numbers, strings, lists,
    tuples and dicts only, so a planted pickle cannot run code in the job."""
    try:
        with open_regular(path, root) as fh:  # a FIFO would hang the job, a link would read elsewhere
            state = torch.load(fh, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated, foreign or malicious: all "absent"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"not a loadable checkpoint ({type(exc).__name__}: {first[:200]})"
    if not isinstance(state, dict):
        return None, f"not a batch-ast checkpoint (a {type(state).__name__})"
    expected = checkpoint_identity(spec)
    if state.get("row_id") != expected["row_id"]:
        return None, f"belongs to row {str(state.get('row_id'))[:40]!r}, not {spec.id}"
    if state.get("settings") != expected["settings"] or state.get("format") != CHECKPOINT_FORMAT:
        return None, "was written with other settings or by another version"
    resumes, sid = state.get("resumes", 0), state.get("submission_id", "")
    if (
        isinstance(resumes, bool)
        or not isinstance(resumes, int)
        or not 0 <= resumes < 2**31
        or not isinstance(sid, str)
    ):
        return None, "has a resume count or submission id of the wrong type"
    return state, ""


def checkpoint_shape_problem(state: dict[str, Any], fresh: dict[str, Any], where: str = "") -> str:
    """'' when ``state`` has the structure of ``fresh`` (a new transfer's ``state_dict``): the same
    keys, each value of the same type — tensors of the same dtype, shape and device type, numbers
    finite where fresh ones are — else what differs. A checkpoint with the right identity can still
    hold ``iteration: "abc"``; it must fail here, not at every later step of the row."""
    for key, want in fresh.items():
        if key not in state:
            return f"{where}{key} is missing"
        got = state[key]
        name = f"{where}{key}"
        if isinstance(want, torch.Tensor):
            if not isinstance(got, torch.Tensor) or got.dtype != want.dtype or got.shape != want.shape:
                return f"{name} is not a {tuple(want.shape)} {want.dtype} tensor"
            if want.is_floating_point() and torch.isfinite(want).all() and not torch.isfinite(got).all():
                return f"{name} holds non-finite values"
        elif isinstance(want, dict):
            if not isinstance(got, dict):
                return f"{name} is not a mapping"
            problem = checkpoint_shape_problem(got, want, f"{name}.")
            if problem:
                return problem
        elif isinstance(want, (list, tuple)):
            if not isinstance(got, (list, tuple)) or not (
                not want or all(_same_kind(g, want[0]) for g in got)
            ):
                return f"{name} is not a list like a fresh run's"
        elif want is not None and not _same_kind(got, want):
            return f"{name} is a {type(got).__name__}, not a {type(want).__name__}"
    return ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def history_problem(state: dict[str, Any], x: torch.Tensor) -> str:
    """What a fresh state cannot show the shape of: the trace rows (iteration, total, content,
    style[, evaluations]) and the cached last evaluation."""
    for row in state["trace"]:
        if not isinstance(row, (list, tuple)) or len(row) not in (4, 5) or not all(map(_is_number, row[:4])) \
                or (len(row) == 5 and row[4] is not None and not _is_number(row[4])):
            return "trace rows are not (iteration, total, content, style, evaluations)"
    last = state["last"]
    if last is None:
        return ""
    if not isinstance(last, dict) or not all(
        isinstance(last.get(k), torch.Tensor) and last[k].shape == x.shape and last[k].dtype == x.dtype
        for k in ("x", "grad")
    ):
        return "last is not an evaluation of this row's spectrogram"
    terms = last.get("terms")
    if not isinstance(terms, list) or not all(map(_is_number, terms)):
        return "last.terms is not a list of numbers"
    return ""


def _same_kind(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return isinstance(got, bool) and isinstance(want, bool)
    if isinstance(want, (int, float)):
        return isinstance(got, (int, float)) and (isinstance(want, float) or isinstance(got, int))
    if isinstance(want, (list, tuple)):
        return isinstance(got, (list, tuple))
    return isinstance(got, type(want))


# --- files ---------------------------------------------------------------------------------------
