"""L1 (content A + style B) on Tomczak et al.'s pair 1 with a growing content weight alpha on the
absolute scale (`loss_scale: absolute`, the scale of rhythm-alpha.json, before the preset moved
to the relative scale): where A's rhythm comes back. Needs ../shared/audio (not bundled).
About 20 minutes on 2 cores.

    .venv/bin/python -m benchmarks.rhythm_alpha_sweep [alpha ...]   # default 4.3 43 430

Each alpha is a `tomczak-dafx18` row (bpm 120, 300 iterations) run by the job code, measured by
`benchmarks.research.rhythm_measures`; results printed and written to benchmarks/rhythm-alpha.json."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from batch_ast.audio import load_audio
from benchmarks import common, pipeline, research


def main(alphas: list[float]) -> None:
    seed, sr = common.SHARED / "seed", 22050
    a_path, b_path = seed / "content1.wav", seed / "style1.wav"
    a, b = (load_audio(path, sr, 8.0) for path in (a_path, b_path))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for alpha in alphas:
            folder = Path(tmp) / str(alpha)
            overrides = {
                **research.RHYTHM_LOSSES["L1"],
                "content_weight": alpha,
                "loss_scale": "absolute",
                "bpm": 120.0,
                "iterations": 300,
            }
            record = pipeline.row_record(
                torch.device("cpu"), a_path, b_path, "tomczak-dafx18", folder, **overrides
            )
            measures = research.rhythm_measures(
                load_audio(folder / "results" / record["output"], sr, 8.0), a, b, sr
            )
            rows.append({"alpha": alpha, **measures, "iterations": record["iterations_run"]})
            print(rows[-1], flush=True)
    (Path(__file__).parent / "rhythm-alpha.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main([float(x) for x in sys.argv[1:]] or [4.3, 43.0, 430.0])
