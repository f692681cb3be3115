"""Benchmarks, pipeline: whole rows through the job, prefetching, throughput of executors and packings,
per-row overhead, a cold job's start and the index at study scale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from batch_ast.config import load_config
from batch_ast.record import record_dict
from benchmarks.common import DEMO, REPO, SHARED, Result, print_table, synthetic_signal
from benchmarks.kernel import legacy_algorithm, speedup_row


def row_record(
    device: torch.device, content: Path, style: Path, preset: str, folder: Path, **overrides: Any
) -> dict:
    """One manifest row run by the real job code (decode, optimise, Griffin-Lim, files, figures,
    metrics), its record returned."""
    from batch_ast.loop import run_row
    from batch_ast.manifest import load_manifest
    from batch_ast.plan import make_plan
    from batch_ast.store import ResultsRoot

    folder.mkdir(parents=True)
    settings = {"preset": preset, "device": device.type, **overrides}
    manifest = folder / "rows.csv"
    manifest.write_text(",".join(["content", "style", *settings]) + "\n"
                        + ",".join([str(content), str(style), *map(str, settings.values())]) + "\n")
    results = ResultsRoot(folder / "results")
    (spec,) = make_plan(load_manifest(manifest, load_config()), results, manifest).to_run
    record = run_row(spec, results)
    assert record["status"] == "ok", record.get("error")
    return record


def grow_study(root: Path, n_rows: int, design: str = "weights") -> None:
    """Make a results root hold ``n_rows`` records by copying one of its ok rows under new ids,
    names, content weights and seeds (its output and figures hard-linked into each row's folder,
    each with its own trace): a study's worth of real records for timing collect and the report
    (and for the report's browser test) without running thousands of rows. A record names only its
    own row's files (``Record.from_json``), so each copy gets its own links.

    ``design``: ``weights`` (four content weights, a seed per row) or ``five`` (five varying
    hyperparameters, as issue #32 measured the report: 25 content weights x 8 style weights x
    100 seeds, every fifth row Adam at lr 0.1, the others L-BFGS at lr 1)."""
    import shutil

    from batch_ast.record import ROW_FILES

    template_path = next(p for p in sorted((root / "runs").glob("*/record.json"))
                         if json.loads(p.read_text())["status"] == "ok")
    template = json.loads(template_path.read_text())
    existing = len(list((root / "runs").glob("*/record.json")))
    for i in range(n_rows - existing):
        rid = f"{i:016x}"
        record = {**template, "id": rid, "name": f"study-{i}", "row": existing + i + 1,
                  "params": {**template["params"], **_design(design, i)},
                  **{key: f"runs/{rid}/{name}" for key, name in ROW_FILES.items() if key in template}}
        run = root / "runs" / rid
        run.mkdir()
        for key, name in ROW_FILES.items():
            if key in template and key != "trace":
                os.link(template_path.parent / name, run / name)
        (run / "record.json").write_text(json.dumps(record))
        shutil.copy(template_path.parent / "trace.parquet", run / "trace.parquet")


def _design(design: str, i: int) -> dict:
    if design == "weights":
        return {"content_weight": [0.5, 1.0, 2.0, 4.0][i % 4], "seed": i}
    adam = i % 5 == 0
    return {"content_weight": round(0.1 * 1.3 ** (i % 25), 4),
            "style_weight": [0.25, 0.5, 1, 2, 4, 8, 16, 32][i // 25 % 8],
            "seed": i // 200 % 100, "optimizer": "adam" if adam else "lbfgs", "lr": 0.1 if adam else 1.0}


def bench_collect(n_rows: int) -> list[Result]:
    """Collect and report at a study's size: a collect from scratch (the reference) against a
    re-collect with nothing changed, one with one new record, and writing the report."""
    from batch_ast.index import update_index
    from batch_ast.report import write_report
    from batch_ast.store import ResultsRoot

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "one"
        row_record(
            torch.device("cpu"),
            DEMO / "speech_gettysburg.wav",
            DEMO / "boogie_marabi.wav",
            "quick",
            folder,
            iterations=20,
            griffin_lim_iters=4,
        )
        results = ResultsRoot(folder / "results")
        grow_study(results.root, n_rows)

        def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
            t0 = time.perf_counter()
            out = fn()
            return time.perf_counter() - t0, out

        results.collect_state_path.unlink(missing_ok=True)
        full_s, full = timed(lambda: update_index(results.root))
        again_s, again = timed(lambda: update_index(results.root))
        assert again.unchanged, "nothing changed, yet the collect rewrote the index"
        changed = results.record_path(f"{0:016x}")
        changed.write_text(changed.read_text().replace('"study-0"', '"study-0 again"'))
        one_s, one = timed(lambda: update_index(results.root))
        report_s, _ = timed(lambda: write_report(results.root))
        size = sum(f.stat().st_size for f in results.root.glob("report*"))
    note = f"{full.rows} rows, {full.traces} trace points; collect from scratch {full_s:.2f} s"
    return [
        speedup_row(
            "collect",
            f"re-collect, {n_rows} rows, nothing changed",
            full_s,
            again_s,
            "than a collect from scratch",
            f"{again_s:.3f} s; {note}",
        ),
        speedup_row(
            "collect",
            f"re-collect, {n_rows} rows, one record changed",
            full_s,
            one_s,
            "than a collect from scratch",
            f"{one_s:.3f} s, {one.reread} record read; {note}",
        ),
        speedup_row(
            "collect",
            f"report of {n_rows} rows (index fresh)",
            full_s,
            report_s,
            "than a collect from scratch",
            f"{report_s:.2f} s; page and data {size / 2**20:.1f} MiB",
        ),
    ]


STAGES = ("load", "optimize", "phase", "write", "figures", "metrics")


def bench_rows(device: torch.device, presets: tuple[str, ...]) -> list[Result]:
    """The headline: rows per hour of whole rows through the job, main's algorithm before issue #12
    (``legacy_algorithm``) against today's, in the same run, with the time per stage. The
    ulyanov-tf row uses the reference pair (imperial + usa) when shared/audio is there."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pair = (SHARED / "ulyanov" / "imperial.mp3", SHARED / "ulyanov" / "usa.mp3")
        if not all(f.exists() for f in pair):
            import soundfile as sf

            pair = (folder / "content.wav", folder / "style.wav")
            for i, path in enumerate(pair):
                sf.write(path, synthetic_signal(10.0, 22050, i), 22050)
        inputs = {"quick": (DEMO / "speech_gettysburg.wav", DEMO / "boogie_marabi.wav")}
        row_record(device, *inputs["quick"], "quick", folder / "warm-up", iterations=2, griffin_lim_iters=2)
        for preset in presets:
            content, style = inputs.get(preset, pair)
            with legacy_algorithm():
                old = row_record(device, content, style, preset, folder / f"{preset}-main")
            new = row_record(device, content, style, preset, folder / f"{preset}-new")
            split = "; ".join(
                f"{label} " + ", ".join(f"{stage} {r[f'time_{stage}_s']:.1f}" for stage in STAGES)
                for label, r in (("main", old), ("new", new))
            )
            per_iteration = {
                label: r["evaluations"] / max(r["iterations_run"], 1)
                for label, r in (("main", old), ("new", new))
            }
            loss_change = new["final_total"] / old["final_total"] - 1
            rows.append(
                Result(
                    section="rows",
                    case=f"{preset}: {content.name} + {style.name}",
                    value=3600 / new["time_total_s"],
                    unit="rows per hour (today)",
                    reference=3600 / old["time_total_s"],
                    ratio=old["time_total_s"] / new["time_total_s"],
                    note=f"main {old['time_total_s']:.1f} s per row, new {new['time_total_s']:.1f} s; "
                    f"L-BFGS iterations {old['iterations_run']} vs {new['iterations_run']} "
                    f"({old['stop_reason']} vs {new['stop_reason']}); evaluations per iteration "
                    f"{per_iteration['main']:.2f} vs {per_iteration['new']:.2f}; final loss "
                    f"{old['final_total']:.6g} vs "
                    f"{new['final_total']:.6g} ({loss_change:+.3%}); new style form: {new['style_form']}; "
                    f"seconds per stage: {split}",
                    details={
                        "stages_main": {stage: old[f"time_{stage}_s"] for stage in STAGES},
                        "stages_new": {stage: new[f"time_{stage}_s"] for stage in STAGES},
                    },
                )
            )
            rows.append(
                Result(
                    section="rows",
                    case=f"{preset}: L-BFGS evaluations per iteration",
                    value=per_iteration["new"],
                    unit="evaluations per iteration (today)",
                    reference=per_iteration["main"],
                    ratio=per_iteration["new"] / per_iteration["main"],
                    note=f"main {old['evaluations']} evaluations for {old['iterations_run']} iterations, "
                    f"new {new['evaluations']} for {new['iterations_run']}",
                )
            )
            print_table(rows[-2:])
    return rows


def bench_prefetch(device: torch.device, n_rows: int, iterations: int) -> Result:
    """A pack of rows from MP3 (decoded and resampled to 22.05 kHz): the job, which decodes the next
    row while this one runs, against the same rows run one after the other with decoding inline."""
    from batch_ast.job import TransferJob
    from batch_ast.loop import run_row
    from batch_ast.manifest import load_manifest
    from batch_ast.plan import make_plan
    from batch_ast.store import ResultsRoot

    folder = SHARED / "ulyanov"
    files = sorted(folder.glob("*.mp3")) or sorted(DEMO.glob("*.wav"))
    pairs = [(files[i % len(files)], files[(i + 1) % len(files)]) for i in range(n_rows)]
    timings = {"inline": float("inf"), "overlapped": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up first (imports, decoders, conv primitives), then alternate: best of two each
        for attempt, mode in enumerate(("warm-up", "inline", "overlapped", "inline", "overlapped")):
            manifest = Path(tmp) / f"{attempt}.csv"
            settings = f"quick,{iterations},{10**6},{device.type}"
            rows = pairs[:1] if mode == "warm-up" else pairs
            manifest.write_text("content,style,preset,iterations,patience,device\n"
                                + "\n".join(f"{c},{s},{settings}" for c, s in rows) + "\n")
            results = ResultsRoot(Path(tmp) / str(attempt))
            specs = make_plan(load_manifest(manifest, load_config()), results, manifest).to_run
            t0 = time.perf_counter()
            if mode == "overlapped":
                TransferJob()([s.to_dict() for s in specs], str(results.root))
            else:
                for spec in specs:
                    run_row(spec, results)
            if mode != "warm-up":
                timings[mode] = min(timings[mode], time.perf_counter() - t0)
            records = [record_dict(results, s.id) for s in specs]
            assert all(r and r["status"] == "ok" for r in records), [r and r["error"] for r in records]
            decode = sum(r["time_load_s"] for r in records)
    return speedup_row(
        "prefetch", f"{n_rows} rows from {files[0].suffix} files, quick preset, {iterations} iterations",
        timings["inline"], timings["overlapped"], "with decoding overlapped",
        f"inline {timings['inline']:.2f} s, overlapped {timings['overlapped']:.2f} s; "
        f"decoding+resampling itself: {decode:.2f} s for the {n_rows} rows",
    )


@dataclass(frozen=True)
class Throughput:
    """One way of running a study's rows: the executor, local jobs at once (``--workers``), row
    processes per job (``--processes-per-job``) and finishing in the background."""

    label: str
    executor: str = "local"
    workers: int = 1
    processes: int = 1
    background: bool = False
    rows_per_job: int | None = None  # None: the backend's default (on SLURM: one row per process)

    def options(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "processes_per_job": self.processes,
            "finish_in_background": self.background,
            "rows_per_job": self.rows_per_job,
        }


TODAY = Throughput("today: 1 worker, 1 process, finishing inline")


def throughput_configs(quick: bool, slurm: bool) -> list[Throughput]:
    """What the throughput section compares with ``TODAY`` (issue #24's list: local --workers 1/2/4,
    processes per job 1/2/4, finishing overlap on/off; the same on SLURM when a cluster answers)."""
    configs = [Throughput("finishing in the background", background=True),
               Throughput("2 processes per job", processes=2), Throughput("2 local workers", workers=2)]
    if not quick:
        configs += [
            Throughput("2 processes per job, finishing in the background", processes=2, background=True),
            Throughput("4 processes per job", processes=4),
            Throughput("4 local workers", workers=4),
        ]
    if slurm:
        configs += [
            Throughput(f"SLURM array, {k} process(es) per task", "slurm", processes=k) for k in (1, 2)
        ]
        if not quick:
            configs += [
                Throughput("SLURM array, 4 processes per task", "slurm", processes=4),
                Throughput(
                    "SLURM array, 2 processes and 2 rows per task", "slurm", processes=2, rows_per_job=2
                ),
                Throughput("SLURM array, 1 process and 4 rows per task", "slurm", rows_per_job=4),
            ]
    return configs


def bench_throughput(device: torch.device, preset: str, n_rows: int, configs: list[Throughput],
                     **overrides: Any) -> list[Result]:
    """Rows per hour of whole rows through a real submission (``batch_ast.submit``, waited for:
    job start-up, decoding, optimisation, Griffin-Lim, files, figures and metrics), each way of
    running them against ``TODAY`` in the same run. The rows differ by seed only (as a study's
    seeds do); each way gets a fresh results root and the same rows."""
    import batch_ast
    from batch_ast.backends import get_backend

    if any(c.executor == "slurm" for c in configs) and not get_backend("slurm").available():
        configs = [c for c in configs if c.executor != "slurm"]
    rows: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        settings = {"preset": preset, "device": device.type, **overrides}
        manifest = folder / "rows.csv"
        content, style = DEMO / "speech_gettysburg.wav", DEMO / "boogie_marabi.wav"
        manifest.write_text(",".join(["content", "style", "seed", *settings]) + "\n" + "".join(
            ",".join([str(content), str(style), str(seed), *map(str, settings.values())]) + "\n"
            for seed in range(n_rows)))
        state = folder / "state"
        with mock.patch.dict(os.environ, {"BATCH_AST_STATE_DIR": str(state)}):
            def rate(config: Throughput, attempt: int) -> float:
                results = (
                    folder
                    / f"{attempt}-{config.executor}-{config.workers}-{config.processes}-{config.background}-"
                    f"{config.rows_per_job}"
                )
                t0 = time.time()
                batch_ast.submit(
                    manifest, results, config.executor, wait=True, site_profile=False, **config.options()
                )
                index = batch_ast.load_index(results)
                assert (index["status"] == "ok").sum() == n_rows, index[["status", "error"]].to_string()
                # until the last record was written (the wait itself polls once a second or slower)
                last = max((results / "runs" / rid / "record.json").stat().st_mtime for rid in index["id"])
                return 3600 * n_rows / (last - t0)

            reference = rate(TODAY, 0)
            rows.append(Result("throughput", f"{preset}: {TODAY.label}", reference, "rows per hour",
                               note=f"{n_rows} rows, local executor, on {device.type}"))
            for k, config in enumerate(configs, start=1):
                value = rate(config, k)
                rows.append(
                    Result(
                        "throughput",
                        f"{preset}: {config.label}",
                        value,
                        "rows per hour",
                        reference,
                        value / reference,
                        note=f"{n_rows} rows; against '{TODAY.label}' in the same run",
                    )
                )
                print_table(rows[-1:])
    return rows


def overhead_child(n_pairs: int, out: str) -> None:
    """Runs in a fresh process (imports included): n_pairs rows packed in one job, tiny optimisation."""
    t0 = time.perf_counter()
    from batch_ast.job import TransferJob
    from batch_ast.manifest import load_manifest
    from batch_ast.plan import make_plan
    from batch_ast.store import ResultsRoot

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        rows = [
            f"{DEMO / 'speech_gettysburg.wav'},{DEMO / 'boogie_marabi.wav'},{seed}" for seed in range(n_pairs)
        ]
        manifest = tmp_path / "m.csv"
        manifest.write_text("content,style,seed\n" + "\n".join(rows) + "\n")
        cfg = load_config()
        results = ResultsRoot(tmp_path / "results")
        plan = make_plan(load_manifest(manifest, cfg), results, manifest)
        specs = [
            s.to_dict() | {"params": s.params.replace(iterations=1, griffin_lim_iters=1).to_dict()}
            for s in plan.to_run
        ]
        TransferJob()(specs, str(results.root))
        from batch_ast.index import load_index, update_index

        update_index(results.root)
        df = load_index(results.root)
        total = time.perf_counter() - t0
        compute = float(df["time_optimize_s"].sum() + df["time_phase_s"].sum())
        extras = float(df["time_metrics_s"].sum() + df["time_figures_s"].sum())
    Path(out).write_text(json.dumps({"total": total, "compute": compute, "extras": extras}))


def bench_overhead(realistic_job_s: float) -> list[Result]:
    rows = []
    for n in (1, 8, 32):
        with tempfile.NamedTemporaryFile(suffix=".json") as fh:
            subprocess.run(
                [sys.executable, "-m", "benchmarks.bench", "--_overhead", str(n), fh.name],
                check=True,
                cwd=REPO,
            )
            data = json.loads(Path(fh.name).read_text())
        per_pair = (data["total"] - data["compute"] - data["extras"]) / n
        extras = data["extras"] / n
        rows.append(
            Result(
                section="overhead",
                case=f"{n} pair(s) packed in one job",
                value=per_pair,
                unit="s per pair",
                reference=realistic_job_s,
                ratio=per_pair / realistic_job_s,
                note="process start, imports, decode, resample, hashing, record and index writes; "
                f"reference: one realistic transfer ({realistic_job_s:.0f} s = the step benchmark x 300 "
                "evaluations); "
                f"not counted: metrics + figures {extras:.2f} s per pair ({extras / realistic_job_s:.1%})",
            )
        )
    return rows


def cold_child(out: str) -> None:
    """Fresh process, as a job starts (caches pointed into the state folder, as job_entry does):
    one `quick` row through the job's code, then its finishing times (metrics, figures)."""
    from batch_ast.private import state_dir, use_private_caches

    use_private_caches(state_dir())
    from batch_ast.index import load_index, update_index
    from batch_ast.job import TransferJob
    from batch_ast.manifest import load_manifest
    from batch_ast.plan import make_plan
    from batch_ast.store import ResultsRoot

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "m.csv"
        manifest.write_text(f"content,style,preset,iterations\n{DEMO / 'speech_gettysburg.wav'},"
                            f"{DEMO / 'boogie_marabi.wav'},quick,20\n")
        results = ResultsRoot(Path(tmp) / "results")
        plan = make_plan(load_manifest(manifest, load_config()), results, manifest)
        TransferJob()([s.to_dict() for s in plan.to_run], str(results.root))
        update_index(results.root)
        df = load_index(results.root)
    Path(out).write_text(json.dumps({"metrics": float(df["time_metrics_s"].sum()),
                                     "figures": float(df["time_figures_s"].sum())}))


def librosa_onset_child(out: str) -> None:
    """Fresh process: what the first ``librosa.onset.onset_strength`` costs (the metric's call before
    #30), with the numba cache of the environment (the caller makes it empty)."""
    t0 = time.perf_counter()
    import librosa

    librosa.onset.onset_strength(y=synthetic_signal(4, 16000), sr=16000, hop_length=256, n_fft=1024)
    Path(out).write_text(json.dumps({"s": time.perf_counter() - t0}))


def bench_cold() -> list[Result]:
    """A row's finishing (metrics + figures) in a job with a cold HOME and state folder (a new user,
    a fresh node, a container) against the same job again, warm, in the same run."""
    with tempfile.TemporaryDirectory() as tmp:
        home, state = Path(tmp) / "home", Path(tmp) / "state"
        home.mkdir()
        state.mkdir(mode=0o700)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "NUMBA_", "MPLCONFIG"))}
        env.update(HOME=str(home), BATCH_AST_STATE_DIR=str(state / "batch-ast"))
        times = []
        for child in ("--_cold", "--_cold", "--_onset"):
            with tempfile.NamedTemporaryFile(suffix=".json") as fh:
                if child == "--_onset":
                    env["NUMBA_CACHE_DIR"] = str(Path(tmp) / "numba-cold")
                subprocess.run(
                    [sys.executable, "-m", "benchmarks.bench", child, fh.name], check=True, cwd=REPO, env=env
                )
                times.append(json.loads(Path(fh.name).read_text()))
        written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    cold, warm = (t["metrics"] + t["figures"] for t in times[:2])
    note = f"cold - warm = {cold - warm:+.2f} s (target <= 3 s); written into HOME: {written or 'nothing'}"
    return [
        Result("cold", "finishing, warm (2nd job, same state folder)", warm, "s", note="metrics + figures"),
        Result(
            "cold",
            "finishing, cold HOME and state folder",
            cold,
            "s",
            reference=warm,
            ratio=cold / warm,
            note=note,
        ),
        Result(
            "cold",
            "librosa.onset.onset_strength, first call, cold numba cache",
            times[2]["s"],
            "s",
            note="what the onset metric cost a cold job before #30 (it no longer calls librosa's JIT code)",
        ),
    ]
