"""batch-ast: neural audio style transfer at batch scale on SLURM clusters or a laptop.

The Python API (``submit``, ``prepare``, ``find_submission``) does what the ``batch-ast`` command
does; ``load_index`` and ``load_traces`` read the results into pandas, ``analyse`` summarises a metric
per group of rows (n, mean, std, SEM, confidence interval), ``cost`` says what
the rows consumed (core-hours, GPU-hours, peak memory per preset), and ``export`` puts a study
into MLflow, TensorBoard, Aim or W&B, one run per row.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import VERSION as __version__

# The API's names, imported when first used (PEP 562): a job's process (``python -m
# batch_ast.job_entry``, and every row process it starts) imports this package first and needs
# none of them; importing pandas for them cost each array task ~0.45 s before its first row.
_LAZY = {
    "Prepared": "api",
    "analyse": "analysis",
    "Submission": "api",
    "collect": "api",
    "cost": "costing",
    "export": "exporting",
    "find_submission": "api",
    "prepare": "api",
    "root_status": "api",
    "submit": "api",
    "Params": "config",
    "SubmitOptions": "options",
    "load_index": "index",
    "load_traces": "index",
    "ResultsError": "store",
}

if TYPE_CHECKING:
    from .analysis import analyse
    from .api import Prepared, Submission, collect, find_submission, prepare, root_status, submit
    from .config import Params
    from .costing import cost
    from .exporting import export
    from .index import load_index, load_traces
    from .options import SubmitOptions
    from .store import ResultsError


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'batch_ast' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Params",
    "Prepared",
    "ResultsError",
    "Submission",
    "SubmitOptions",
    "__version__",
    "analyse",
    "collect",
    "cost",
    "export",
    "find_submission",
    "load_index",
    "load_traces",
    "prepare",
    "root_status",
    "submit",
]
