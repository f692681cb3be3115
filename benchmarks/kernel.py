"""Benchmarks, kernels: one evaluation, the Gram forms, torch.compile, Griffin-Lim, precision, batched
rows, host syncs and memory, each against a reference measured in the same run."""

from __future__ import annotations

import functools
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from batch_ast.config import load_config
from batch_ast.features import Network, features, log_spectrogram, use_precision
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
from batch_ast.transfer import StyleTransfer, optimise
from benchmarks.common import REPO, Result, best_time, matmul_flops, on_device, sync_device, synthetic_signal


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
    c = log_spectrogram(on_device(device, synthetic_signal(seconds, sr, 0)), n_fft, hop)
    s = log_spectrogram(on_device(device, synthetic_signal(seconds, sr, 1)), n_fft, hop)
    t = StyleTransfer(c, s, p, device)

    def evaluation() -> None:
        t.optimizer.zero_grad()
        t.loss_terms(t.x)[0].backward()

    peak = max(peak, matmul_flops(device, precision=precision))
    sec = best_time(device, evaluation, repeat=3)
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


class MainBefore12(StyleTransfer):
    """The algorithm main ran before issue #12, through the transfer's public seams: the loss
    through autograd of the C×C Gram matrices (``loss_terms_from``) and no evaluation reused
    (``reuse_evaluations``). The same-run reference of the speed headline; the benchmark's only."""

    reuse_evaluations = False

    def loss_terms_from(self, feats: torch.Tensor):
        if not hasattr(self, "legacy_grams"):
            t = self.style_targets
            self.legacy_grams = t.grams or tuple(gram(f) for f in t.feats)
        p, g = self.params, gram(feats)
        c = content_loss(feats, self.content_target)
        s = style_loss(g, self.legacy_grams[0])
        total = p.content_weight * c + p.style_weight * s
        if self.content_target_style is not None:
            c_b = content_loss(feats, self.content_target_style)
            total, c = total + p.content_weight_style * c_b, c + c_b
        if len(self.legacy_grams) > 1:
            s_a = style_loss(g, self.legacy_grams[1])
            total, s = total + p.style_weight_content * s_a, s + s_a
        return total, c, s


@contextmanager
def legacy_algorithm() -> Iterator[None]:
    """Run a job's rows with main's algorithm before issue #12 (``MainBefore12``, and torch.istft
    in Griffin-Lim): the row's public names for its transfer and its phase reconstruction point
    at them while the context lasts."""
    from batch_ast import phase, row

    torch_istft = functools.partial(phase.griffin_lim, istft="torch")
    with (
        mock.patch.object(row, "StyleTransfer", MainBefore12),
        mock.patch.object(row, "griffin_lim", torch_istft),
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

        timings, values = {"legacy": best_time(device, legacy)}, {"legacy": (legacy().item(), f.grad.clone())}
        for form in STYLE_FORMS:
            targets = StyleTargets.of([fs], form)

            def ours(f=f, targets=targets) -> torch.Tensor:
                f.grad = None
                loss = style_terms(f, targets)[0]
                loss.backward()
                return loss

            timings[form] = best_time(device, ours)
            values[form] = (ours().item(), f.grad.clone())
        chosen = style_form_for(n_filters, frames, [style_frames])
        ref_loss, ref_grad = values["legacy"]
        agree = ", ".join(
            f"{form}: loss {abs(values[form][0] / ref_loss - 1):.1e}, gradient "
            f"{((values[form][1] - ref_grad).norm() / ref_grad.norm()).item():.1e}"
            for form in STYLE_FORMS
        )
        rows.append(
            speedup_row(
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
    c = log_spectrogram(on_device(device, synthetic_signal(seconds, sr, 0)), n_fft, hop)
    s = log_spectrogram(on_device(device, synthetic_signal(seconds, sr, 1)), n_fft, hop)
    t = StyleTransfer(c, s, p, device)

    def evaluation(loss_terms: Callable) -> Callable[[], None]:
        def run() -> None:
            t.optimizer.zero_grad()
            loss_terms(t.x)[0].backward()
        return run

    eager = best_time(device, evaluation(t.loss_terms), repeat=5)
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(t.loss_terms)
        evaluation(compiled)()
        sync_device(device)
        compile_s = time.perf_counter() - t0
        fast = best_time(device, evaluation(compiled), repeat=5)
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

    audio = synthetic_signal(seconds, sr)
    mag = np.abs(librosa.stft(audio, n_fft=n_fft, hop_length=hop)).astype(np.float32)
    mag_t = on_device(device, mag)

    def ours(istft: str = "overlap-add") -> torch.Tensor:
        return griffin_lim(mag_t, n_fft, hop, n_iter=n_iter, length=len(audio), istft=istft)

    ours_s = best_time(device, ours, repeat=2)
    torch_istft_s = best_time(device, lambda: ours("torch"), repeat=2)
    theirs_s = best_time(
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
    sc_theirs = spectral_convergence(mag_t, on_device(device, theirs), n_fft, hop)
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
        speedup_row(
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
        content, style = (synthetic_signal(p.max_seconds, sr, i) for i in range(2))
        content_spec, style_spec = (
            log_spectrogram(on_device(device, a), n_fft, hop) for a in (content, style)
        )
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


def speedup_row(
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

    c = log_spectrogram(on_device(device, synthetic_signal(seconds, sr, 0)), n_fft, hop)
    s = log_spectrogram(on_device(device, synthetic_signal(seconds, sr, 1)), n_fft, hop)
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
            sync_device(device)
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
            speedup_row(
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
    signals = [synthetic_signal(seconds, sr, i) for i in range(2)]
    specs = [log_spectrogram(on_device(device, a), n_fft, hop) for a in signals]
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
            sync_device(device)
            sequential = time.perf_counter() - t0
            together = make(b)
            t0 = time.perf_counter()
            errors = run_together(together, lambda i, ts=together: optimise(ts[i]), lambda i: None)
            sync_device(device)
            batched = time.perf_counter() - t0
            assert not any(errors), errors
            rel = max(
                abs(a.trace[-1][1] - t.trace[-1][1]) / abs(a.trace[-1][1])
                for a, t in zip(alone, together, strict=True)
            )
            rows.append(
                speedup_row(
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
    content = log_spectrogram(
        on_device(device, synthetic_signal(4.0, p.sample_rate, 0)), p.n_fft, p.hop_length
    )
    style = log_spectrogram(on_device(device, synthetic_signal(4.0, p.sample_rate, 1)), p.n_fft, p.hop_length)
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


def memory_child(device: torch.device, seconds: float, out: str) -> None:
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
    content, style = synthetic_signal(seconds, sr, 0), synthetic_signal(min(seconds, 10.0), sr, 1)
    try:  # reset the kernel's peak-RSS mark, so the peak below is the transfer's own
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    base = status_mb("VmRSS")  # interpreter, torch, librosa and the decoded audio
    if device.type == "cuda":  # on a GPU, what counts is device memory
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    c = log_spectrogram(on_device(device, content), p.n_fft, p.hop_length)
    s = log_spectrogram(on_device(device, style), p.n_fft, p.hop_length)
    t = StyleTransfer(c, s, p, device)
    t.step()
    from batch_ast.transfer import estimate_memory_bytes

    est_adam = estimate_memory_bytes(c.shape[0], c.shape[1], s.shape[1], p, with_metrics=False)
    est_lbfgs = estimate_memory_bytes(c.shape[0], c.shape[1], s.shape[1], p.replace(optimizer="lbfgs"),
                                      with_metrics=False)
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
