"""Benchmarks, research: the student's loop against ours, L-BFGS against Adam, early stopping, the
published reference outputs and the rhythmic constraint, measured independently of our own loss."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from batch_ast.config import Params, load_config
from batch_ast.features import Network, features, log_spectrogram
from batch_ast.losses import (
    gram,
)
from batch_ast.phase import griffin_lim
from batch_ast.transfer import StyleTransfer, optimise
from benchmarks.common import SHARED, Result, on_device, print_table, synthetic_signal
from benchmarks.pipeline import row_record


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
    c = log_spectrogram(on_device(device, synthetic_signal(seconds, sr, 0)), n_fft, hop)
    s = log_spectrogram(on_device(device, synthetic_signal(seconds, sr, 1)), n_fft, hop)
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
    c = log_spectrogram(on_device(device, synthetic_signal(seconds, sr, 0)), n_fft, hop)
    s = log_spectrogram(on_device(device, synthetic_signal(seconds, sr, 1)), n_fft, hop)
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
                record = row_record(
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
    t = StyleTransfer(
        *(log_spectrogram(on_device(device, a), n_fft, hop) for a in (content, style)), p, device
    )
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
    spec = lambda a: log_spectrogram(on_device(device, a), p.n_fft, p.hop_length)  # noqa: E731
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
