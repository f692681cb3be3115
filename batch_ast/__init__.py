"""batch-ast: neural audio style transfer at batch scale on SLURM clusters or a laptop."""

__version__ = "0.1.0"

from .index import collect, load_index, load_traces  # noqa: E402

__all__ = ["__version__", "collect", "load_index", "load_traces"]
