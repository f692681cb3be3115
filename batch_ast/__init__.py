"""batch-ast: neural audio style transfer at batch scale on SLURM clusters or a laptop.

The Python API (``submit``, ``prepare``, ``find_submission``) does what the ``batch-ast`` command
does; ``load_index`` and ``load_traces`` read the results into pandas.
"""

__version__ = "0.2.0"

from .api import Prepared, Submission, collect, find_submission, prepare, submit  # noqa: E402
from .config import Params  # noqa: E402
from .index import load_index, load_traces  # noqa: E402
from .store import ResultsError  # noqa: E402

__all__ = [
    "Params",
    "Prepared",
    "ResultsError",
    "Submission",
    "__version__",
    "collect",
    "find_submission",
    "load_index",
    "load_traces",
    "prepare",
    "submit",
]
