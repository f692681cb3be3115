"""batch-ast: neural audio style transfer at batch scale on SLURM clusters or a laptop."""

__version__ = "0.1.0"

from .index import collect, load_index, load_traces  # noqa: E402
from .store import ResultsError  # noqa: E402

__all__ = ["__version__", "ResultsError", "collect", "load_index", "load_traces"]
