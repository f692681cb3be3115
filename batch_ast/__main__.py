"""``python -m batch_ast``: the same command line as ``batch-ast`` (for environments where the
console script is not on PATH, e.g. ``apptainer exec image.sif python -m batch_ast``)."""

import sys

from .cli import main

sys.exit(main())
