"""The installed version of batch-ast, read from the distribution's metadata: ``pyproject.toml``
is the one place it is written (records, ``batch-ast --version`` and ``batch_ast.__version__``
all read it from here)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("batch-ast")
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    VERSION = "0+unknown"
