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
import functools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from batch_ast.config import Params, load_config
from batch_ast.features import Network, features, log_spectrogram, pick_device, use_precision
from batch_ast.losses import (
    STYLE_FORMS,
    StyleTargets,
    content_loss,
    gram,
    style_form_for,
    style_loss,
    style_terms,
)
from batch_ast.phase import griffin_lim, spectral_convergence
from batch_ast.record import record_dict
from batch_ast.transfer import StyleTransfer, optimise

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    """One row of the benchmark table: a measured ``value`` and, where it is a comparison, the
    ``reference`` measured in the same run and their ``ratio``; ``details`` (curves, stage splits)
    go to the JSON only."""

    section: str
    case: str
    value: float
    unit: str
    reference: float | None = None
    ratio: float | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in TABLE_COLUMNS}
        return {**row, **self.details}


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def _tensor(device: torch.device, a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)
DEMO = REPO / "manifests" / "audio"
# the clips beside the checkout (../shared/audio); BATCH_AST_SHARED_AUDIO points elsewhere (a GPU
# machine gets only the repository, so benchmarks/gpu-check.sh carries the clips it needs)
SHARED = Path(os.environ.get("BATCH_AST_SHARED_AUDIO", REPO.parent / "shared" / "audio"))


def _timeit(device: torch.device, fn: Callable[[], Any], repeat: int = 3, warmup: int = 1) -> float:
    """Best-of-`repeat` seconds of fn() (best, not mean: the least disturbed by other load)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _signal(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Real audio of the requested length: demo clips looped (no synthetic stand-ins)."""
    import librosa

    clips = [librosa.load(DEMO / f, sr=sample_rate)[0] for f in ("harp_harmony.wav", "speech_gettysburg.wav")]
    clip = np.concatenate(clips[seed % 2 :] + clips[: seed % 2])
    reps = int(np.ceil(seconds * sample_rate / len(clip)))
    return np.tile(clip, reps)[: int(seconds * sample_rate)].astype(np.float32)


def matmul_flops(
    device: torch.device, sizes: tuple[int, ...] = (1024, 2048, 4096), precision: str = "float32"
) -> float:
    """The machine's own float32 matmul rate (FLOP/s): the best over square sizes, best of 5 each.
    The physical reference for the optimisation step. On CUDA, ``precision`` picks IEEE float32
    or TF32 tensor cores (the setting is global, so it is set here each time)."""
    use_precision(precision, device)
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        best = max(best, 2 * n**3 / _timeit(device, lambda a=a, b=b: a @ b, repeat=5))
    use_precision("float32", device)
    return best


def step_flops(n_bins: int, frames: int, n_filters: int, kernel: int, style_form: str = "filters",
               style_frames: int | None = None) -> float:
    """The minimal FLOPs of one loss+gradient evaluation of the algorithm used: conv forward and its
    input gradient (the weights are fixed), and the style loss in the row's form — filters: the
    C×C Gram forward and one C×C×T matmul back (dL/dF = 4(G−Gs)F/T, G symmetric); frames: the
    T×(T+Ts) products forward and one C×(T+Ts)×T matmul back. Elementwise work is not counted."""
    t_out = frames - kernel + 1
    ts_out = t_out if style_frames is None else style_frames - kernel + 1
    conv = 2 * n_bins * kernel * n_filters * t_out
    if style_form == "frames":
        style = 2 * (2 * n_filters * t_out * (t_out + ts_out))
    else:
        style = 2 * (2 * n_filters * n_filters * t_out)
    return 2 * conv + style


def bench_step(
    device: torch.device,
    name: str,
    seconds: float,
    sr: int,
    n_fft: int,
    hop: int,
    n_filters: int,
    peak: float,
    precision: str = "float32",
) -> Result:
    """Achieved FLOP/s of one loss+gradient evaluation, counted as the minimal work of the form the
    row uses, over the matmul rate of the same precision measured right around it (the best of the
    run's first reference, one just before and one just after: the least disturbed)."""
    p = load_config().params(
        dict(
            sample_rate=sr,
            n_fft=n_fft,
            hop_length=hop,
            n_filters=n_filters,
            kernel_size=11,
            optimizer="adam",
            lr=0.1,
            precision=precision,
        )
    )
    c = log_spectrogram(_tensor(device, _signal(seconds, sr, 0)), n_fft, hop)
    s = log_spectrogram(_tensor(device, _signal(seconds, sr, 1)), n_fft, hop)
    t = StyleTransfer(c, s, p, device)

    def evaluation() -> None:
        t.optimizer.zero_grad()
        t.loss_terms(t.x)[0].backward()

    peak = max(peak, matmul_flops(device, precision=precision))
    sec = _timeit(device, evaluation, repeat=3)
    peak = max(peak, matmul_flops(device, precision=precision))
    flops = step_flops(c.shape[0], c.shape[1], n_filters, 11, t.style_form, s.shape[1])
    if precision != "float32":
        name += f", precision {precision}"
    return Result(
        section="step",
        case=name,
        value=flops / sec / 1e9,
        unit="GFLOP/s (minimal work)",
        reference=peak / 1e9,
        ratio=flops / sec / peak,
        note=f"{c.shape[0]} bins x {c.shape[1]} frames, {n_filters} filters, style loss in the "
             f"{t.style_form} "
        f"form; {sec * 1000:.0f} ms per evaluation, minimal {flops / 1e9:.1f} GFLOP; "
        f"reference: best torch {'TF32' if precision == 'tf32' else 'float32'} square matmul (1024-4096)",
    )


def _legacy_loss_terms_from(self: StyleTransfer, feats: torch.Tensor):
    """The loss as main computed it before issue #12: autograd through the C×C Gram matrices."""
    if not hasattr(self, "_legacy_grams"):
        t = self.style_targets
        self._legacy_grams = t.grams or tuple(gram(f) for f in t.feats)
    p, g = self.params, gram(feats)
    c = content_loss(feats, self.content_target)
    s = style_loss(g, self._legacy_grams[0])
    total = p.content_weight * c + p.style_weight * s
    if self.content_target_style is not None:
        c_b = content_loss(feats, self.content_target_style)
        total, c = total + p.content_weight_style * c_b, c + c_b
    if len(self._legacy_grams) > 1:
        s_a = style_loss(g, self._legacy_grams[1])
        total, s = total + p.style_weight_content * s_a, s + s_a
    return total, c, s


def _legacy_evaluate(self: StyleTransfer):
    """No evaluation cache: L-BFGS re-evaluates the point its line search ended on."""
    self.evaluations += 1
    return self.evaluate(self)


@contextmanager
def legacy_algorithm() -> Iterator[None]:
    """Run transfers and jobs with main's algorithm before issue #12 (C×C Gram through autograd, no
    evaluation cache, torch.istft in Griffin-Lim): the same-run reference of the speed headline.
    Selectable in the benchmark only."""
    from batch_ast import phase, row

    torch_istft = functools.partial(phase.griffin_lim, istft="torch")
    with (
        mock.patch.object(StyleTransfer, "loss_terms_from", _legacy_loss_terms_from),
        mock.patch.object(StyleTransfer, "_evaluate_cached", _legacy_evaluate),
        mock.patch.object(row, "griffin_lim", torch_istft),  # what a job's row calls
    ):
        yield


def bench_gram(device: torch.device, peak: float) -> list[Result]:
    """The style loss (loss + gradient w.r.t. the features) in each exact form at the sizes rows
    have: main's autograd of the C×C definition, the filters form (one matmul back), the frames form
    (T×T products, float64 forward); with their agreement on loss and gradient."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    cases = (
        ("ulyanov-tf: 10 s", 4096, 421, 421),
        ("default at 4 s", 4096, 163, 163),
        ("quick: 4 s @ 16 kHz", 1024, 241, 241),
        ("1024 filters, 10 s", 1024, 421, 421),
        ("beat segment: ~21 frames, kernel 16", 4096, 6, 6),
    )
    for name, n_filters, frames, style_frames in cases:
        f = torch.randn(n_filters, frames, generator=generator).relu().to(device).requires_grad_(True)
        fs = (1.2 * torch.randn(n_filters, style_frames, generator=generator).relu()).to(device)
        target_gram = gram(fs)

        def legacy(f=f, target_gram=target_gram) -> torch.Tensor:
            f.grad = None
            loss = style_loss(gram(f), target_gram)
            loss.backward()
            return loss

        timings, values = {"legacy": _timeit(device, legacy)}, {"legacy": (legacy().item(), f.grad.clone())}
        for form in STYLE_FORMS:
            targets = StyleTargets.of([fs], form)

            def ours(f=f, targets=targets) -> torch.Tensor:
                f.grad = None
                loss = style_terms(f, targets)[0]
                loss.backward()
                return loss

            timings[form] = _timeit(device, ours)
            values[form] = (ours().item(), f.grad.clone())
        chosen = style_form_for(n_filters, frames, [style_frames])
        ref_loss, ref_grad = values["legacy"]
        agree = ", ".join(
            f"{form}: loss {abs(values[form][0] / ref_loss - 1):.1e}, gradient "
            f"{((values[form][1] - ref_grad).norm() / ref_grad.norm()).item():.1e}"
            for form in STYLE_FORMS
        )
        rows.append(
            _speedup_row(
                "gram",
                f"{name} ({n_filters} filters x {frames} frames)",
                timings["legacy"],
                timings[chosen],
                "than main's autograd Gram",
                f"main {timings['legacy'] * 1000:.1f} ms, filters form {timings['filters'] * 1000:.1f} ms, "
                "frames form "
                f"{timings['frames'] * 1000:.1f} ms; chosen by size: {chosen}; relative difference to main: "
                f"{agree}",
            )
        )
    return rows


def bench_compile(
    device: torch.device, seconds: float, sr: int, n_fft: int, hop: int, n_filters: int
) -> Result:
    """Does torch.compile speed up one loss+gradient evaluation? (Kept out of the product unless it does.)"""
    p = load_config().params(dict(sample_rate=sr, n_fft=n_fft, hop_length=hop, n_filters=n_filters,
                                   optimizer="adam", lr=0.1))
    c = log_spectrogram(_tensor(device, _signal(seconds, sr, 0)), n_fft, hop)
    s = log_spectrogram(_tensor(device, _signal(seconds, sr, 1)), n_fft, hop)
    t = StyleTransfer(c, s, p, device)

    def evaluation(loss_terms: Callable) -> Callable[[], None]:
        def run() -> None:
            t.optimizer.zero_grad()
            loss_terms(t.x)[0].backward()
        return run

    eager = _timeit(device, evaluation(t.loss_terms), repeat=5)
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(t.loss_terms)
        evaluation(compiled)()
        _sync(device)
        compile_s = time.perf_counter() - t0
        fast = _timeit(device, evaluation(compiled), repeat=5)
    except Exception as exc:  # noqa: BLE001 - a missing compiler is a result too
        return Result(
            section="compile",
            case=f"{seconds:g} s, {n_filters} filters",
            value=0.0,
            unit="x speed-up",
            reference=eager,
            ratio=0.0,
            note=f"torch.compile failed: {type(exc).__name__}",
        )
    return Result(
        section="compile",
        case=f"{seconds:g} s @ {sr} Hz, {n_filters} filters",
        value=eager / fast,
        unit="x speed-up of torch.compile",
        reference=eager,
        ratio=eager / fast,
        note=f"eager {eager * 1000:.1f} ms vs compiled {fast * 1000:.1f} ms per evaluation; "
        f"first call (compilation) {compile_s:.1f} s",
    )


def bench_griffin_lim(
    device: torch.device, seconds: float, sr: int, n_fft: int, hop: int, n_iter: int
) -> list[Result]:
    import librosa

    audio = _signal(seconds, sr)
    mag = np.abs(librosa.stft(audio, n_fft=n_fft, hop_length=hop)).astype(np.float32)
    mag_t = _tensor(device, mag)

    def ours(istft: str = "overlap-add") -> torch.Tensor:
        return griffin_lim(mag_t, n_fft, hop, n_iter=n_iter, length=len(audio), istft=istft)

    ours_s = _timeit(device, ours, repeat=2)
    torch_istft_s = _timeit(device, lambda: ours("torch"), repeat=2)
    theirs_s = _timeit(
        device,
        lambda: librosa.griffinlim(
            mag, n_iter=n_iter, hop_length=hop, n_fft=n_fft, length=len(audio), random_state=0
        ),
        repeat=2,
    )
    theirs = librosa.griffinlim(
        mag, n_iter=n_iter, hop_length=hop, n_fft=n_fft, length=len(audio), random_state=0
    )
    sc_ours = spectral_convergence(mag_t, ours(), n_fft, hop)
    sc_torch = spectral_convergence(mag_t, ours("torch"), n_fft, hop)
    sc_theirs = spectral_convergence(mag_t, _tensor(device, theirs), n_fft, hop)
    case = f"{seconds:g} s @ {sr} Hz, n_fft {n_fft}, {n_iter} iters"
    return [
        Result(
            section="griffin_lim",
            case=case,
            value=theirs_s / ours_s,
            unit="x faster than librosa",
            reference=theirs_s,
            ratio=theirs_s / ours_s,
            note=f"batch-ast {ours_s:.2f} s vs librosa.griffinlim {theirs_s:.2f} s",
        ),
        _speedup_row(
            "griffin_lim",
            case + " (inverse STFT)",
            torch_istft_s,
            ours_s,
            "than with torch.istft",
            f"overlap-add with a precomputed window envelope {ours_s:.2f} s vs torch.istft "
            f"{torch_istft_s:.2f} s "
            f"(whole Griffin-Lim); spectral convergence {sc_ours:.5f} vs {sc_torch:.5f}",
        ),
        Result(
            section="griffin_lim",
            case=case + " (spectral convergence)",
            value=sc_ours,
            unit="SC",
            reference=sc_theirs,
            ratio=sc_ours / sc_theirs,
            note="ratio < 1: batch-ast's reconstruction is closer to the target magnitude",
        ),
    ]


GL_CURVE_ITERS = (16, 32, 64, 100, 200, 500)


def bench_gl_curve(device: torch.device, presets: tuple[str, ...], transfer_iterations: int) -> list[Result]:
    """Spectral convergence after 16…500 Griffin-Lim iterations at each preset's sizes, for the
    magnitude an optimisation produced (inconsistent: SC cannot reach 0) and for a recording's:
    what justifies each preset's ``griffin_lim_iters``."""
    from batch_ast.phase import magnitude_from_log

    rows = []
    for preset in presets:
        p = load_config().params({"preset": preset, "iterations": transfer_iterations, "device": device.type})
        sr, n_fft, hop = p.sample_rate, p.n_fft, p.hop_length
        content, style = (_signal(p.max_seconds, sr, i) for i in range(2))
        content_spec, style_spec = (log_spectrogram(_tensor(device, a), n_fft, hop) for a in (content, style))
        t = StyleTransfer(content_spec, style_spec, p, device)
        optimise(t)
        targets = {
            f"transfer output ({t.iteration} L-BFGS iterations)": magnitude_from_log(t.result()[0]),
            "recording": torch.expm1(content_spec),
        }
        for kind, magnitude in targets.items():
            curve = {}
            for n in GL_CURVE_ITERS:
                audio = griffin_lim(magnitude, n_fft, hop, n_iter=n, seed=p.seed, length=len(content))
                curve[n] = spectral_convergence(magnitude, audio, n_fft, hop)
            chosen = p.griffin_lim_iters
            at_chosen = curve.get(chosen) or spectral_convergence(
                magnitude,
                griffin_lim(magnitude, n_fft, hop, n_iter=chosen, seed=p.seed, length=len(content)),
                n_fft,
                hop,
            )
            rows.append(
                Result(
                    section="gl_curve",
                    case=f"{preset} ({p.max_seconds:g} s, n_fft {n_fft}): {kind}",
                    value=at_chosen,
                    unit=f"SC at the preset's {chosen} iterations",
                    reference=curve[500],
                    ratio=at_chosen / curve[500],
                    note="SC by iterations: " + ", ".join(f"{n}: {v:.4f}" for n, v in curve.items()),
                    details={"curve": curve},
                )
            )
    return rows


def _row_record(
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


def grow_study(root: Path, n_rows: int) -> None:
    """Make a results root hold ``n_rows`` records by copying one of its ok rows under new ids,
    names, content weights and seeds (its output and figures hard-linked into each row's folder,
    each with its own trace): a study's worth of real records for timing collect and the report
    (and for the report's browser test) without running thousands of rows. A record names only its
    own row's files (``Record.from_json``), so each copy gets its own links."""
    import shutil

    from batch_ast.record import ROW_FILES

    template_path = next(p for p in sorted((root / "runs").glob("*/record.json"))
                         if json.loads(p.read_text())["status"] == "ok")
    template = json.loads(template_path.read_text())
    existing = len(list((root / "runs").glob("*/record.json")))
    for i in range(n_rows - existing):
        rid = f"{i:016x}"
        record = {**template, "id": rid, "name": f"study-{i}", "row": existing + i + 1,
                  "params": {**template["params"], "content_weight": [0.5, 1.0, 2.0, 4.0][i % 4], "seed": i},
                  **{key: f"runs/{rid}/{name}" for key, name in ROW_FILES.items() if key in template}}
        run = root / "runs" / rid
        run.mkdir()
        for key, name in ROW_FILES.items():
            if key in template and key != "trace":
                os.link(template_path.parent / name, run / name)
        (run / "record.json").write_text(json.dumps(record))
        shutil.copy(template_path.parent / "trace.parquet", run / "trace.parquet")


def bench_collect(n_rows: int) -> list[Result]:
    """Collect and report at a study's size: a collect from scratch (the reference) against a
    re-collect with nothing changed, one with one new record, and writing the report."""
    from batch_ast.index import update_index
    from batch_ast.report import write_report
    from batch_ast.store import ResultsRoot

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "one"
        _row_record(
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
        _speedup_row(
            "collect",
            f"re-collect, {n_rows} rows, nothing changed",
            full_s,
            again_s,
            "than a collect from scratch",
            f"{again_s:.3f} s; {note}",
        ),
        _speedup_row(
            "collect",
            f"re-collect, {n_rows} rows, one record changed",
            full_s,
            one_s,
            "than a collect from scratch",
            f"{one_s:.3f} s, {one.reread} record read; {note}",
        ),
        _speedup_row(
            "collect",
            f"report of {n_rows} rows (index fresh)",
            full_s,
            report_s,
            "than a collect from scratch",
            f"{report_s:.2f} s; page and data {size / 2**20:.1f} MiB",
        ),
    ]


TABLE_COLUMNS = ("section", "case", "value", "unit", "reference", "ratio", "note")
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
                sf.write(path, _signal(10.0, 22050, i), 22050)
        inputs = {"quick": (DEMO / "speech_gettysburg.wav", DEMO / "boogie_marabi.wav")}
        _row_record(device, *inputs["quick"], "quick", folder / "warm-up", iterations=2, griffin_lim_iters=2)
        for preset in presets:
            content, style = inputs.get(preset, pair)
            with legacy_algorithm():
                old = _row_record(device, content, style, preset, folder / f"{preset}-main")
            new = _row_record(device, content, style, preset, folder / f"{preset}-new")
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


def student_loop(c: torch.Tensor, s: torch.Tensor, p: Params, iterations: int) -> tuple[float, float]:
    """A plain re-implementation of the student version's loop (AdamW lr 0.5, ReduceLROnPlateau on
    the style loss, stop after 11 increases), evaluated on batch-ast's loss: (seconds, final loss)."""
    weight = Network.of(p).weights(c.device)
    t0 = time.perf_counter()
    fc = features(c, weight).detach()
    gs = gram(features(s, weight)).detach()
    x = (
        (torch.rand(c.shape, generator=torch.Generator().manual_seed(0)) * 1e-3)
        .to(c.device)
        .requires_grad_(True)
    )
    opt = torch.optim.AdamW([x], lr=0.5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=7, threshold=1e-3)
    prev, increases = float("inf"), 0
    for _ in range(iterations):
        opt.zero_grad()
        f = features(x, weight)
        content = (f - fc).pow(2).sum() / f.shape[-1]
        style = (gram(f) - gs).pow(2).sum()
        loss = p.content_weight * content + p.style_weight * style
        loss.backward()
        opt.step()
        sched.step(style.item())
        increases = increases + 1 if style.item() > prev else 0
        prev = style.item()
        if increases >= 11:
            break
    with torch.no_grad():
        f = features(x, weight)
        final = (p.content_weight * (f - fc).pow(2).sum() / f.shape[-1] + (gram(f) - gs).pow(2).sum()).item()
    return time.perf_counter() - t0, final


def bench_whole_transfer(
    device: torch.device, seconds: float, sr: int, n_fft: int, hop: int, n_filters: int, student_iters: int
) -> Result:
    p = load_config().params(dict(sample_rate=sr, n_fft=n_fft, hop_length=hop, n_filters=n_filters,
                                   iterations=5000, patience=5000, min_delta=0.0))
    c = log_spectrogram(_tensor(device, _signal(seconds, sr, 0)), n_fft, hop)
    s = log_spectrogram(_tensor(device, _signal(seconds, sr, 1)), n_fft, hop)
    student_s, target = student_loop(c, s, p, student_iters)
    t0 = time.perf_counter()
    t = StyleTransfer(c, s, p, device)
    reached = False
    while not t.finished and time.perf_counter() - t0 < 3 * student_s:
        t.step()
        if t.last_total <= target:
            reached = True
            break
    ours_s = time.perf_counter() - t0
    return Result(
        section="transfer",
        case=f"{seconds:g} s @ {sr} Hz, {n_filters} filters",
        value=student_s / ours_s if reached else 0.0,
        unit="x faster than the student loop",
        reference=student_s,
        ratio=student_s / ours_s if reached else 0.0,
        note=f"student AdamW loop: {student_iters} iterations, {student_s:.1f} s to loss {target:.4g}; "
        f"batch-ast L-BFGS: {'reached it' if reached else 'did NOT reach it'} in {ours_s:.1f} s, "
        f"{t.iteration} iterations",
    )


def bench_lbfgs_vs_adam(
    device: torch.device, seconds: float, sr: int, n_fft: int, hop: int, n_filters: int, budget_s: float
) -> Result:
    """Same pair, same wall-time budget: the loss L-BFGS reaches over the loss Adam reaches."""
    base = dict(sample_rate=sr, n_fft=n_fft, hop_length=hop, n_filters=n_filters,
                iterations=100000, patience=100000, min_delta=0.0)
    c = log_spectrogram(_tensor(device, _signal(seconds, sr, 0)), n_fft, hop)
    s = log_spectrogram(_tensor(device, _signal(seconds, sr, 1)), n_fft, hop)
    finals = {}
    for name, over in (("lbfgs", {"optimizer": "lbfgs"}), ("adam", {"optimizer": "adam", "lr": 0.1})):
        t0 = time.perf_counter()
        t = StyleTransfer(c, s, load_config().params({**base, **over}), device)
        while time.perf_counter() - t0 < budget_s and not t.finished:
            t.step()
        finals[name] = (t.result()[1].total, t.iteration)
    return Result(
        section="lbfgs",
        case=f"{seconds:g} s @ {sr} Hz, {n_filters} filters, {budget_s:g} s budget each",
        value=finals["lbfgs"][0],
        unit="final loss of L-BFGS",
        reference=finals["adam"][0],
        ratio=finals["lbfgs"][0] / finals["adam"][0],
        note=f"L-BFGS {finals['lbfgs'][0]:.4g} in {finals['lbfgs'][1]} iterations vs Adam (lr 0.1) "
        f"{finals['adam'][0]:.4g} in {finals['adam'][1]} iterations; ratio < 1: L-BFGS lower",
    )


def _speedup_row(
    section: str, case: str, reference_s: float, measured_s: float, than: str, note: str
) -> Result:
    """A table row whose figure is reference time / measured time (> 1: faster than the reference)."""
    return Result(
        section=section,
        case=case,
        value=reference_s / measured_s,
        unit=f"x faster {than}",
        reference=reference_s,
        ratio=reference_s / measured_s,
        note=note,
    )


def bench_precision(
    device: torch.device, seconds: float, sr: int, n_fft: int, hop: int, n_filters: int, iterations: int
) -> list[Result]:
    """The accuracy check behind the ``precision`` setting: the same L-BFGS run in float32 and in
    each reduced precision the device offers; speed, the result's loss re-evaluated in IEEE
    float32 against the float32 run's (the loss the reduced precision actually reached), and the
    held-out distances (a network the optimisation never saw, IEEE float32) of each result."""
    from batch_ast.metrics import relative_feature_distance, relative_gram_distance

    c = log_spectrogram(_tensor(device, _signal(seconds, sr, 0)), n_fft, hop)
    s = log_spectrogram(_tensor(device, _signal(seconds, sr, 1)), n_fft, hop)
    base = dict(sample_rate=sr, n_fft=n_fft, hop_length=hop, n_filters=n_filters, iterations=iterations,
                patience=10**6, min_delta=0.0)
    judge = StyleTransfer(c, s, load_config().params(base), device)  # float32 loss of any result
    runs = {}
    precisions = ["float32", "tf32", "bf16"] if device.type == "cuda" else ["float32", "bf16"]
    for precision in precisions:
        best = float("inf")
        for _ in range(2):
            t = StyleTransfer(
                c, s, load_config().params({**base, "precision": precision}), device, judge.weight
            )
            t0 = time.perf_counter()
            optimise(t)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        x = t.result()[0]
        runs[precision] = (best, judge.loss_terms(x)[0].item(), x)
    heldout = Network.of(judge.params).heldout().weights(device)
    use_precision("float32", device)
    with torch.no_grad():
        target_c, target_s = features(c, heldout), features(s, heldout)

        def distances(x: torch.Tensor) -> tuple[float, float]:
            out = features(x, heldout)
            return relative_feature_distance(out, target_c), relative_gram_distance(out, target_s)

        held = {precision: distances(x) for precision, (_, _, x) in runs.items()}
    ref_s, ref_loss, ref_x = runs["float32"]
    rows = []
    for precision in precisions[1:]:
        sec, loss, x = runs[precision]
        diff = ((x - ref_x).norm() / ref_x.norm()).item()
        (c_new, s_new), (c_ref, s_ref) = held[precision], held["float32"]
        rows.append(
            _speedup_row(
                "precision",
                f"{precision}: {iterations} L-BFGS iterations, {seconds:g} s @ {sr} Hz, {n_filters} filters",
                ref_s,
                sec,
                "than IEEE float32",
                f"float32 {ref_s:.2f} s, {precision} {sec:.2f} s; float32 loss of the {precision} result "
                f"{loss:.5g} vs {ref_loss:.5g} ({loss / ref_loss - 1:+.2%}); held-out content distance "
                f"{c_new:.4g} vs "
                f"{c_ref:.4g} ({c_new / c_ref - 1:+.2%}), style distance {s_new:.4g} vs {s_ref:.4g} "
                f"({s_new / s_ref - 1:+.2%}); spectrogram difference {diff:.1e} (relative)",
            )
        )
        rows[-1].details.update(heldout_content=[c_new, c_ref], heldout_style=[s_new, s_ref])
    if device.type != "cuda":
        rows.append(
            Result(
                section="precision",
                case="tf32",
                value=1.0,
                unit="x",
                reference=ref_s,
                ratio=1.0,
                note="TF32 is a CUDA tensor-core mode: on the CPU, tf32 is float32",
            )
        )
    return rows


def bench_batch(
    device: torch.device,
    seconds: float,
    sr: int,
    n_fft: int,
    hop: int,
    n_filters: int,
    iterations: int,
    sizes: tuple[int, ...] = (4, 8),
) -> list[Result]:
    """B rows sharing a network, optimised together (one batched conv per evaluation) against the
    same B rows one after the other; each row keeps its own optimiser, so the work is the same."""
    from batch_ast.batched import run_together

    rows = []
    signals = [_signal(seconds, sr, i) for i in range(2)]
    specs = [log_spectrogram(_tensor(device, a), n_fft, hop) for a in signals]
    for optimizer, extra in (("adam", {"lr": 0.1}), ("lbfgs", {})):
        p = load_config().params(dict(sample_rate=sr, n_fft=n_fft, hop_length=hop, n_filters=n_filters,
                                       optimizer=optimizer, iterations=iterations, patience=10**6, **extra))
        weight = Network.of(p).weights(device)

        def make(b: int, p=p, weight=weight) -> list[StyleTransfer]:
            return [StyleTransfer(specs[i % 2], specs[(i + 1) % 2], p, device, weight) for i in range(b)]

        for b in sizes:
            alone = make(b)
            t0 = time.perf_counter()
            for t in alone:
                optimise(t)
            _sync(device)
            sequential = time.perf_counter() - t0
            together = make(b)
            t0 = time.perf_counter()
            errors = run_together(together, lambda i, ts=together: optimise(ts[i]), lambda i: None)
            _sync(device)
            batched = time.perf_counter() - t0
            assert not any(errors), errors
            rel = max(
                abs(a.trace[-1][1] - t.trace[-1][1]) / abs(a.trace[-1][1])
                for a, t in zip(alone, together, strict=True)
            )
            rows.append(
                _speedup_row(
                    "batch",
                    f"{b} rows x {iterations} {optimizer} iterations, {seconds:g} s @ {sr} Hz, {n_filters} "
                    "filters",
                    sequential,
                    batched,
                    "than the rows one by one",
                    f"one by one {sequential:.2f} s, together {batched:.2f} s; largest relative difference "
                    f"of a row's last loss: {rel:.1e}",
                )
            )
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
    return _speedup_row(
        "prefetch", f"{n_rows} rows from {files[0].suffix} files, quick preset, {iterations} iterations",
        timings["inline"], timings["overlapped"], "with decoding overlapped",
        f"inline {timings['inline']:.2f} s, overlapped {timings['overlapped']:.2f} s; "
        f"decoding+resampling itself: {decode:.2f} s for the {n_rows} rows",
    )


HOST_READS = (
    "item",
    "tolist",
    "__float__",
    "__bool__",
    "__int__",
)  # a tensor's value to Python: a sync on CUDA


@contextmanager
def counting_host_reads() -> Iterator[dict[str, int]]:
    """Count every tensor value read back to Python (the calls that are host syncs on CUDA:
    ``HOST_READS`` and ``torch.equal``) while the block runs; on CUDA also the syncs themselves
    (``torch.cuda.set_sync_debug_mode``)."""
    import warnings

    counts = {"reads": 0, "syncs": 0}
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counted(name: str) -> Callable[..., Any]:
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            counts["reads"] += 1
            return originals[name](self, *args, **kwargs)
        return read

    real_equal = torch.equal

    def equal(a: torch.Tensor, b: torch.Tensor) -> bool:
        counts["reads"] += 1
        return real_equal(a, b)

    with (
        warnings.catch_warnings(record=True) as caught,
        mock.patch.multiple(torch.Tensor, **{name: counted(name) for name in HOST_READS}),
        mock.patch.object(torch, "equal", equal),
    ):
        warnings.simplefilter("always")
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counts
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
        counts["syncs"] = sum("synchroniz" in str(w.message) for w in caught)


def bench_syncs(device: torch.device, iterations: int) -> list[Result]:
    """Host reads (and, on CUDA, host syncs) per L-BFGS iteration and per evaluation of the lean
    loop against the loop before it (benchmarks/previous_loop.py), on the same row, in the same
    run; the strong-Wolfe line search itself reads one loss per evaluation and a few scalars."""
    from benchmarks.previous_loop import PreviousLoop

    p = load_config().params(
        {"preset": "quick", "iterations": iterations, "patience": 10**6, "device": device.type}
    )
    content = log_spectrogram(_tensor(device, _signal(4.0, p.sample_rate, 0)), p.n_fft, p.hop_length)
    style = log_spectrogram(_tensor(device, _signal(4.0, p.sample_rate, 1)), p.n_fft, p.hop_length)
    measured = {}
    for name, cls in (("previous", PreviousLoop), ("lean", StyleTransfer)):
        transfer = cls(content, style, p, device)
        with counting_host_reads() as counts:
            optimise(transfer)
        _ = transfer.trace  # the block read of the trace, counted below as the lean loop's
        measured[name] = (counts, transfer.iteration, transfer.evaluations)
    rows = []
    for key, what in (("reads", "tensor values read back to Python"), ("syncs", "CUDA host syncs")):
        if key == "syncs" and device.type != "cuda":
            continue
        (old, old_it, old_ev), (new, new_it, new_ev) = measured["previous"], measured["lean"]
        rows.append(
            Result(
                "syncs",
                f"quick, {iterations} L-BFGS iterations: {what} per iteration",
                new[key] / new_it,
                f"{key} per iteration (lean loop)",
                old[key] / old_it,
                (new[key] / new_it) / (old[key] / old_it) if old[key] else None,
                note=f"previous loop {old[key]} over {old_it} iterations and {old_ev} evaluations; "
                f"lean {new[key]} over {new_it} and {new_ev}",
            )
        )
    return rows


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


RHYTHM_LOSSES = {  # Tomczak et al.'s losses, A = content input, B = style input, equal weights (the
    # preset's `loss_scale: relative` makes each term a relative error: equal weights pull equally)
    "L1": {
        "content_weight": 1.0,
        "content_weight_style": 0.0,
        "style_weight": 1.0,
        "style_weight_content": 0.0,
    },
    "L2": {
        "content_weight": 0.0,
        "content_weight_style": 0.0,
        "style_weight": 1.0,
        "style_weight_content": 1.0,
    },
    "L3": {
        "content_weight": 0.0,
        "content_weight_style": 1.0,
        "style_weight": 1.0,
        "style_weight_content": 1.0,
    },
}


def rhythm_measures(output: np.ndarray, a: np.ndarray, b: np.ndarray, sr: int) -> dict[str, float]:
    """Independent measures of a rhythmic transfer (none of them is the optimised loss): cosine
    similarity of onset envelopes with A and with B (the paper's Table 1 measure), mean spectral
    flatness (a wash of noise is flat, clean hits are not) and the timbre distances to A and to B
    (Euclidean distance of MFCC mean and standard deviation vectors)."""
    import librosa

    def envelope(y: np.ndarray) -> np.ndarray:
        return librosa.onset.onset_strength(y=y, sr=sr, hop_length=512)

    def cosine(x: np.ndarray, y: np.ndarray) -> float:
        n = min(len(x), len(y))
        x, y = x[:n], y[:n]
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12))

    def timbre(y: np.ndarray) -> np.ndarray:
        mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20)
        return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)])

    env = envelope(output)
    return {
        "onset_cos_a": cosine(env, envelope(a)),
        "onset_cos_b": cosine(env, envelope(b)),
        "flatness": float(librosa.feature.spectral_flatness(y=output).mean()),
        "timbre_to_a": float(np.linalg.norm(timbre(output) - timbre(a))),
        "timbre_to_b": float(np.linalg.norm(timbre(output) - timbre(b))),
        "length": len(output) / len(b),
    }


def align_to(
    output: np.ndarray, reference: np.ndarray, sr: int, max_lag_s: float = 0.25
) -> tuple[np.ndarray, float]:
    """``output`` shifted earlier by the lag (0 … max_lag_s) that best lines its onset envelope up
    with ``reference``'s: MP3 copies start 23-140 ms late (codec delay). Returns (audio, lag s)."""
    import librosa

    hop = 64  # 2.9 ms steps at 22.05 kHz
    env_o = librosa.onset.onset_strength(y=output, sr=sr, hop_length=hop)
    env_r = librosa.onset.onset_strength(y=reference, sr=sr, hop_length=hop)
    n = min(len(env_o), len(env_r))
    lags = range(int(max_lag_s * sr / hop) + 1)
    best = max(lags, key=lambda k: float(env_o[k:n] @ env_r[: n - k]))
    return output[best * hop :], best * hop / sr


def bench_rhythm(device: torch.device, pairs: tuple[int, ...], iterations: int | None) -> list[Result]:
    """Tomczak et al.'s pairs 1 and 2, losses L1/L2/L3: batch-ast's `tomczak-dafx18` rows (with
    the loops' tempo, 120 BPM, as hint) against the authors' published outputs, by the measures of
    ``rhythm_measures``; and the row's wall time (the preset's speed target: <= 10 min for 8 s)."""
    from batch_ast.audio import load_audio

    seed, published = SHARED / "seed", SHARED / "tomczak-published"
    if not (published / "pair1-L1.mp3").exists():
        print(f"rhythm: {published} not found, section skipped", flush=True)
        return []
    rows = []
    sr = load_config().params({"preset": "tomczak-dafx18"}).sample_rate
    with tempfile.TemporaryDirectory() as tmp:
        for pair in pairs:
            a_path, b_path = seed / f"content{pair}.wav", seed / f"style{pair}.wav"
            a, b = (load_audio(path, sr, 8.0) for path in (a_path, b_path))
            inputs = rhythm_measures(a, a, b, sr)
            for loss, weights in RHYTHM_LOSSES.items():
                overrides = {**weights, "bpm": 120.0, **({"iterations": iterations} if iterations else {})}
                record = _row_record(
                    device, a_path, b_path, "tomczak-dafx18", Path(tmp) / f"{pair}-{loss}", **overrides
                )
                ours = load_audio(Path(tmp) / f"{pair}-{loss}" / "results" / record["output"], sr, 8.0)
                theirs, lag = align_to(load_audio(published / f"pair{pair}-{loss}.mp3", sr, 8.5), b, sr)
                mine, pub = rhythm_measures(ours, a, b, sr), rhythm_measures(theirs[: len(b)], a, b, sr)
                rows.append(
                    Result(
                        section="rhythm",
                        case=f"pair {pair}, {loss}",
                        value=mine["onset_cos_a"],
                        unit="onset-envelope cosine with A (batch-ast)",
                        reference=pub["onset_cos_a"],
                        ratio=mine["onset_cos_a"] / pub["onset_cos_a"],
                        note=f"batch-ast vs published (aligned by {lag * 1000:.0f} ms): onset cosine with A "
                        f"{mine['onset_cos_a']:.3f} vs {pub['onset_cos_a']:.3f}, with B "
                        f"{mine['onset_cos_b']:.3f} vs "
                        f"{pub['onset_cos_b']:.3f}; flatness {mine['flatness']:.4f} vs {pub['flatness']:.4f} "
                        f"(inputs: A {inputs['flatness']:.4f}); timbre distance to B "
                        f"{mine['timbre_to_b']:.1f} vs "
                        f"{pub['timbre_to_b']:.1f} (A: {inputs['timbre_to_b']:.1f}), to A "
                        f"{mine['timbre_to_a']:.1f} vs "
                        f"{pub['timbre_to_a']:.1f}; length {mine['length']:.0%} of B; "
                        f"{record['iterations_run']} iterations, {record['beat_segments']} segments, "
                        f"{record['time_total_s']:.0f} s per row",
                        details={"measures": {"batch-ast": mine, "published": pub, "inputs A vs B": inputs}},
                    )
                )
                print_table(rows[-1:])
    return rows


def early_stop_iteration(totals: list[float], patience: int, min_delta: float) -> int:
    """The iteration at which ``StyleTransfer``'s early-stopping rule would have ended a run whose
    loss trace is ``totals`` (len(totals) when it would not have)."""
    best, stale = math.inf, 0
    for i, total in enumerate(totals):
        stale = 0 if best == math.inf or total < best * (1 - min_delta) else stale + 1
        best = min(best, total)
        if stale >= patience:
            return i + 1
    return len(totals)


def bench_stopping(device: torch.device, snapshots: tuple[int, ...] = (50, 100, 200, 300)) -> list[Result]:
    """What stopping early costs: the `ulyanov-tf` row on the reference pair (imperial + usa),
    its output after 50…300 L-BFGS iterations through Griffin-Lim and the held-out metrics."""
    from batch_ast.audio import load_audio
    from batch_ast.metrics import output_metrics
    from batch_ast.phase import magnitude_from_log

    folder = SHARED / "ulyanov"
    if not (folder / "imperial.mp3").exists():
        print(f"stopping: {folder} not found, section skipped", flush=True)
        return []
    p = load_config().params({"preset": "ulyanov-tf", "iterations": max(snapshots), "device": device.type})
    sr, n_fft, hop = p.sample_rate, p.n_fft, p.hop_length
    content, style = (load_audio(folder / f, sr, p.max_seconds) for f in ("imperial.mp3", "usa.mp3"))
    t = StyleTransfer(*(log_spectrogram(_tensor(device, a), n_fft, hop) for a in (content, style)), p, device)
    results = {}
    while not t.finished:
        t.step()
        if t.iteration in snapshots:
            x, terms = t.result()
            audio = griffin_lim(magnitude_from_log(x), n_fft, hop, n_iter=p.griffin_lim_iters, seed=p.seed,
                                length=len(content)).cpu().numpy()
            audio = audio * min(1.0, 0.99 / float(np.abs(audio).max()))
            results[t.iteration] = (terms.total, output_metrics(audio, content, style, p, device))
    old_rule = early_stop_iteration([row[1] for row in t.trace], 11, 1e-3)
    last = max(results)
    rows = []
    for n, (loss, m) in results.items():
        rows.append(
            Result(
                section="stopping",
                case=f"ulyanov-tf, imperial + usa, {n} L-BFGS iterations",
                value=m["style_distance_heldout"],
                unit="style_distance_heldout",
                reference=results[last][1]["style_distance_heldout"],
                ratio=m["style_distance_heldout"] / results[last][1]["style_distance_heldout"],
                note=f"loss {loss:.5g} ({loss / results[last][0] - 1:+.1%} vs {last}); "
                     "content_distance_heldout "
                f"{m['content_distance_heldout']:.4f}, style_distance_heldout "
                f"{m['style_distance_heldout']:.4f}, "
                f"lsd_to_content_db {m['lsd_to_content_db']:.2f}; the old rule (patience 11, min_delta 1e-3) "
                f"stopped this run at iteration {old_rule}",
            )
        )
    return rows


def bench_reference(device: torch.device) -> list[Result]:
    """The ulyanov-tf preset on imperial (content) + usa (style) against the published output of the
    TF reference, by the same metrics (lower distances = closer)."""
    from batch_ast.audio import load_audio
    from batch_ast.metrics import output_metrics
    from batch_ast.phase import magnitude_from_log

    folder = SHARED / "ulyanov"
    if not (folder / "reference-output-imperial_usa.wav").exists():
        print(f"reference: {folder} not found, section skipped", flush=True)
        return []
    p = load_config().params({"preset": "ulyanov-tf"})
    sr = p.sample_rate
    content = load_audio(folder / "imperial.mp3", sr, p.max_seconds)
    style = load_audio(folder / "usa.mp3", sr, p.max_seconds)
    published = load_audio(folder / "reference-output-imperial_usa.wav", sr, p.max_seconds)
    t0 = time.perf_counter()
    spec = lambda a: log_spectrogram(_tensor(device, a), p.n_fft, p.hop_length)  # noqa: E731
    t = StyleTransfer(spec(content), spec(style), p, device)
    optimise(t)
    x, _ = t.result()
    ours = griffin_lim(magnitude_from_log(x), p.n_fft, p.hop_length, n_iter=p.griffin_lim_iters,
                       seed=p.seed, length=len(content)).cpu().numpy()
    ours = ours * min(1.0, 0.99 / float(np.abs(ours).max()))  # as written to WAV
    elapsed = time.perf_counter() - t0
    mine = output_metrics(ours, content, style, p, device)
    theirs = output_metrics(published[: len(content)], content, style, p, device)
    rows = []
    for key in (
        "content_distance_heldout",
        "style_distance_heldout",
        "lsd_to_content_db",
        "onset_corr_content",
    ):
        rows.append(
            Result(
                section="reference",
                case=f"imperial + usa, ulyanov-tf preset: {key}",
                value=mine[key],
                unit=key,
                reference=theirs[key],
                ratio=mine[key] / theirs[key] if theirs[key] else float("nan"),
                note=f"batch-ast {mine[key]:.4g} vs published TF output {theirs[key]:.4g} "
                f"({t.iteration} L-BFGS iterations, {t.stop_reason}, {elapsed:.0f} s)",
            )
        )
    return rows


def _overhead_child(n_pairs: int, out: str) -> None:
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


def _cold_child(out: str) -> None:
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


def _librosa_onset_child(out: str) -> None:
    """Fresh process: what the first ``librosa.onset.onset_strength`` costs (the metric's call before
    #30), with the numba cache of the environment (the caller makes it empty)."""
    t0 = time.perf_counter()
    import librosa

    librosa.onset.onset_strength(y=_signal(4, 16000), sr=16000, hop_length=256, n_fft=1024)
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


def _memory_child(device: torch.device, seconds: float, out: str) -> None:
    """Fresh process: peak RSS of building a default-settings transfer and one Adam step."""
    def status_mb(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def peak_mb() -> float:
        return status_mb("VmHWM")

    p = load_config().params({"optimizer": "adam", "lr": 0.1})
    sr = p.sample_rate
    content, style = _signal(seconds, sr, 0), _signal(min(seconds, 10.0), sr, 1)
    try:  # reset the kernel's peak-RSS mark, so the peak below is the transfer's own
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    base = status_mb("VmRSS")  # interpreter, torch, librosa and the decoded audio
    if device.type == "cuda":  # on a GPU, what counts is device memory
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    c = log_spectrogram(_tensor(device, content), p.n_fft, p.hop_length)
    s = log_spectrogram(_tensor(device, style), p.n_fft, p.hop_length)
    t = StyleTransfer(c, s, p, device)
    t.step()
    from batch_ast.transfer import estimate_memory_bytes

    est_adam = estimate_memory_bytes(c.shape[0], c.shape[1], s.shape[1], p)
    est_lbfgs = estimate_memory_bytes(c.shape[0], c.shape[1], s.shape[1], p.replace(optimizer="lbfgs"))
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_mb()
    Path(out).write_text(json.dumps({"peak_mb": peak, "base_mb": base, "est_adam_mb": est_adam / 2**20,
                                     "est_lbfgs_mb": est_lbfgs / 2**20, "history": p.lbfgs_history}))


def bench_memory(device: torch.device, lengths: list[float]) -> list[Result]:
    rows = []
    for seconds in lengths:
        with tempfile.NamedTemporaryFile(suffix=".json") as fh:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.bench",
                    "--device",
                    device.type,
                    "--_memory",
                    str(seconds),
                    fh.name,
                ],
                check=True,
                cwd=REPO,
            )
            d = json.loads(Path(fh.name).read_text())
        used = d["peak_mb"] - d["base_mb"]
        rows.append(
            Result(
                section="memory",
                case=f"{seconds:g} s content, default settings (4096 filters)",
                value=used,
                unit="MB peak "
                + ("CUDA memory" if device.type == "cuda" else "RSS")
                + " for the transfer (one Adam step)",
                reference=d["est_adam_mb"],
                ratio=used / d["est_adam_mb"],
                note=f"process peak {d['peak_mb']:.0f} MB incl. {d['base_mb']:.0f} MB "
                     "interpreter+libraries+audio; "
                f"estimate behind max_memory_gb: Adam {d['est_adam_mb']:.0f} MB, "
                f"L-BFGS ({d['history']} pairs) {d['est_lbfgs_mb']:.0f} MB",
            )
        )
    return rows


def print_table(rows: list[Result]) -> None:
    print(f"{'section':<12} {'case':<58} {'value':>12} {'ratio':>8}  unit / note")
    for r in rows:
        ratio = f"{r.ratio:>8.3f}" if r.ratio is not None else f"{'-':>8}"
        print(f"{r.section:<12} {r.case:<58} {r.value:>12.4g} {ratio}  {r.unit}; {r.note}")


@dataclass
class Run:
    """What every section is given: where torch runs, whether sizes are small, the float32 matmul
    rate measured at the start (the step's reference), and what earlier sections measured."""

    device: torch.device
    quick: bool
    peak: float
    measured: dict[str, float] = field(default_factory=dict)
    collect_rows: int | None = None  # the collect section's study size (default 200 quick, 5,000)


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
    Section("cold", lambda r: bench_cold(), in_quick=False),
    Section(
        "collect", lambda r: bench_collect(r.collect_rows or (200 if r.quick else 5000))
    ),  # the index: CPU work
    Section("throughput", lambda r: _throughput(r), in_quick=False),
    Section("syncs", lambda r: bench_syncs(r.device, 20 if r.quick else 100)),
)
SECTION_NAMES = [s.name for s in SECTIONS]


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--_overhead", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_cold", help=argparse.SUPPRESS)
    parser.add_argument("--_onset", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._cold or args._onset:  # before torch's device is picked: a fresh job's imports only
        (_cold_child if args._cold else _librosa_onset_child)(args._cold or args._onset)
        return 0
    device = pick_device(args.device)
    if args._overhead:
        _overhead_child(int(args._overhead[0]), args._overhead[1])
        return 0
    if args._memory:
        _memory_child(device, float(args._memory[0]), args._memory[1])
        return 0
    chosen = [s for s in SECTIONS if (s.name in args.only if args.only else s.in_quick or not args.quick)]
    run = Run(device, args.quick, matmul_flops(device), collect_rows=args.collect_rows)
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
