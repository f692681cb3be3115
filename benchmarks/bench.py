"""Benchmarks: where the time and memory of a transfer go, each figure a ratio against a reference
measured in the same run (these machines are shared and noisy: never absolute thresholds).

    python -m benchmarks.bench                 # everything (~30 min on 2 cores)
    python -m benchmarks.bench --quick         # small sizes, no reference check (~3 min)
    python -m benchmarks.bench --only gl step  # some sections
Writes a table to stdout and JSON + CSV (default benchmarks/latest.{json,csv}).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from batch_ast.features import pick_device
from benchmarks.accounting import bench_accounting_overhead, bench_memory_estimate, memory_row_child
from benchmarks.common import REPO, TABLE_COLUMNS, Result, matmul_flops, print_table
from benchmarks.exporting import TARGETS as EXPORT_TARGETS
from benchmarks.exporting import bench_export
from benchmarks.kernel import (
    bench_batch,
    bench_compile,
    bench_gl_curve,
    bench_gram,
    bench_griffin_lim,
    bench_memory,
    bench_precision,
    bench_step,
    bench_syncs,
    memory_child,
    step_flops,
)
from benchmarks.pipeline import (
    bench_cold,
    bench_collect,
    bench_overhead,
    bench_prefetch,
    bench_rows,
    bench_throughput,
    cold_child,
    librosa_onset_child,
    overhead_child,
    throughput_configs,
)
from benchmarks.research import (
    bench_lbfgs_vs_adam,
    bench_reference,
    bench_rhythm,
    bench_stopping,
    bench_whole_transfer,
)


@dataclass
class Run:
    """What every section is given: where torch runs, whether sizes are small, the float32 matmul
    rate measured at the start (the step's reference), and what earlier sections measured."""

    device: torch.device
    quick: bool
    peak: float
    measured: dict[str, float] = field(default_factory=dict)
    collect_rows: int | None = None  # the collect section's study size (default 200 quick, 5,000)
    export_rows: int | None = None  # the export section's study size (default 100 quick, 1,000)
    export_to: tuple[str, ...] = EXPORT_TARGETS  # the trackers the export section exports to


def _step(run: Run) -> list[Result]:
    rows = [
        bench_step(
            run.device, "small: 4 s @ 16 kHz, n_fft 1024, 1024 filters", 4, 16000, 1024, 256, 1024, run.peak
        )
    ]
    if not run.quick:
        realistic = "realistic: 10 s @ 22.05 kHz, n_fft 2048, 4096 filters"
        rows.append(bench_step(run.device, realistic, 10, 22050, 2048, 512, 4096, run.peak))
        run.measured["realistic_eval_s"] = step_flops(1025, 431, 4096, 11, "frames") / (rows[-1].value * 1e9)
        if run.device.type == "cuda":  # the same step on TF32 tensor cores, against the TF32 matmul rate
            rows.append(bench_step(run.device, realistic, 10, 22050, 2048, 512, 4096, 0.0, precision="tf32"))
    return rows


def _batch(run: Run) -> list[Result]:
    rows = bench_batch(run.device, 4, 16000, 1024, 256, 1024, 10, (4,) if run.quick else (4, 8))
    return rows if run.quick else rows + bench_batch(run.device, 4, 16000, 1024, 256, 4096, 10, (4,))


def _overhead(run: Run) -> list[Result]:
    # one evaluation of the realistic step, measured by "step" or assumed at half the matmul rate
    eval_s = run.measured.get("realistic_eval_s") or step_flops(1025, 431, 4096, 11, "frames") / (
        0.5 * run.peak
    )
    return bench_overhead(300 * eval_s)


def _throughput(run: Run) -> list[Result]:
    from batch_ast.backends import get_backend

    slurm = get_backend("slurm").available()
    rows = bench_throughput(run.device, "quick", 4 if run.quick else 8, throughput_configs(run.quick, slurm))
    if run.device.type == "cuda" and not run.quick:  # a CPU takes minutes per ulyanov-tf row
        rows += bench_throughput(run.device, "ulyanov-tf", 16, throughput_configs(True, slurm))
    return rows


def _one(result: Result) -> list[Result]:
    return [result]


@dataclass(frozen=True)
class Section:
    name: str
    run: Callable[[Run], list[Result]]
    in_quick: bool = True  # part of --quick (the long reference checks are not)


# The table of sections, in the order they run (``--only`` picks some).
SECTIONS = (
    Section("step", _step),
    Section("gram", lambda r: bench_gram(r.device, r.peak)),
    Section("rows", lambda r: bench_rows(r.device, ("quick",) if r.quick else ("quick", "ulyanov-tf"))),
    Section("compile", lambda r: _one(bench_compile(r.device, 4, 16000, 1024, 256, 1024)), in_quick=False),
    Section(
        "gl",
        lambda r: bench_griffin_lim(r.device, 4 if r.quick else 10, 22050, 2048, 512, 32 if r.quick else 100),
    ),
    Section(
        "gl-curve",
        lambda r: bench_gl_curve(
            r.device, ("quick",) if r.quick else ("quick", "ulyanov-tf"), 30 if r.quick else 100
        ),
    ),
    Section(
        "transfer",
        lambda r: _one(
            bench_whole_transfer(
                r.device, 4, 16000, 1024, 256, 512 if r.quick else 1024, 100 if r.quick else 300
            )
        ),
    ),
    Section(
        "lbfgs",
        lambda r: _one(bench_lbfgs_vs_adam(r.device, 4, 16000, 1024, 256, 1024, 3.0 if r.quick else 10.0)),
    ),
    Section(
        "precision", lambda r: bench_precision(r.device, 4, 16000, 1024, 256, 1024, 30 if r.quick else 60)
    ),
    Section("batch", _batch),
    Section("prefetch", lambda r: _one(bench_prefetch(r.device, 4 if r.quick else 8, 20))),
    Section("reference", lambda r: bench_reference(r.device), in_quick=False),
    Section(
        "stopping",
        lambda r: bench_stopping(r.device, (10, 20) if r.quick else (50, 100, 200, 300)),
        in_quick=False,
    ),
    Section(
        "rhythm",
        lambda r: bench_rhythm(r.device, (1,) if r.quick else (1, 2), 100 if r.quick else None),
        in_quick=False,
    ),
    Section("overhead", _overhead),
    Section("memory", lambda r: bench_memory(r.device, [10, 60] if r.quick else [10, 60, 300])),
    Section("cost", lambda r: bench_accounting_overhead(r.device, 1 if r.quick else 3)
            + bench_memory_estimate(r.device, [10] if r.quick else [10, 30])),
    Section("cold", lambda r: bench_cold(), in_quick=False),
    Section(
        "collect", lambda r: bench_collect(r.collect_rows or (200 if r.quick else 5000))
    ),  # the index: CPU work
    Section("export", lambda r: bench_export(r.export_rows or (100 if r.quick else 1000),
                                             r.export_to)),  # CPU work
    Section("throughput", lambda r: _throughput(r), in_quick=False),
    Section("syncs", lambda r: bench_syncs(r.device, 20 if r.quick else 100)),
)


SECTION_NAMES = [s.name for s in SECTIONS]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the torch sections run (auto: CUDA when present); librosa stays on the CPU",
    )
    parser.add_argument("--only", nargs="*", choices=SECTION_NAMES)
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "latest"), help="output path without suffix"
    )
    parser.add_argument(
        "--collect-rows",
        type=int,
        metavar="N",
        help="rows of the study the collect section builds (default 200 with --quick, else 5000)",
    )
    parser.add_argument("--export-rows", type=int, metavar="N",
                        help="rows of the study the export section builds (default 100 with --quick, "
                             "else 1000)")
    parser.add_argument("--export-to", nargs="+", choices=EXPORT_TARGETS, default=list(EXPORT_TARGETS),
                        metavar="TRACKER", help="the trackers the export section exports to (default: "
                        + ", ".join(EXPORT_TARGETS) + ")")
    parser.add_argument("--_overhead", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_memory_row", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--_cold", help=argparse.SUPPRESS)
    parser.add_argument("--_onset", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args._cold or args._onset:  # before torch's device is picked: a fresh job's imports only
        (cold_child if args._cold else librosa_onset_child)(args._cold or args._onset)
        return 0
    device = pick_device(args.device)
    if args._overhead:
        overhead_child(int(args._overhead[0]), args._overhead[1])
        return 0
    if args._memory:
        memory_child(device, float(args._memory[0]), args._memory[1])
        return 0
    if args._memory_row:
        memory_row_child(device, float(args._memory_row[0]), *args._memory_row[1:])
        return 0
    chosen = [s for s in SECTIONS if (s.name in args.only if args.only else s.in_quick or not args.quick)]
    run = Run(device, args.quick, matmul_flops(device), collect_rows=args.collect_rows,
              export_rows=args.export_rows, export_to=tuple(args.export_to))
    print(
        f"float32 matmul reference: {run.peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} thread(s)",
        flush=True,
    )
    rows: list[Result] = []
    for section in chosen:
        results = section.run(run)
        print_table(results)
        rows += results
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "matmul_gflops": run.peak / 1e9,
        "command": " ".join(["python -m benchmarks.bench", *(argv or sys.argv[1:])]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "rows": [r.to_dict() for r in rows]}, indent=2)
    )
    with out.with_suffix(".csv").open("w", newline="") as fh:
        # the CSV keeps the table columns; curves and stage splits are in the JSON
        writer = csv.DictWriter(fh, fieldnames=list(TABLE_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r.to_dict() for r in rows)
    print("\nall results:")
    print_table(rows)
    print(f"\nwritten: {out.with_suffix('.json')} and {out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
