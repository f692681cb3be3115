"""Job stage: run manifest rows end to end on whatever node the dispatcher put us on.

A row's files are published in a fixed order — WAV, trace, then the record — each atomically, so
an ``ok`` record guarantees its outputs are complete. A row that fails writes a ``failed`` record
with the error and the job moves on to the next row.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit

from . import __version__
from .plan import RowSpec
from .store import ResultsRoot, write_atomic, write_json_atomic

TRACE_COLUMNS = ("iteration", "total", "content", "style")


class Paused(Exception):
    """The row was interrupted at an iteration boundary and its state checkpointed."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _cluster_context() -> dict[str, Any]:
    env = os.environ
    return {
        "hostname": socket.gethostname(),
        "slurm_job_id": env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID") or "",
        "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID", ""),
        "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
    }


def configure_threads() -> None:
    """Use the CPUs SLURM gave us (not the whole node's count) for torch's intra-op pool."""
    import torch

    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("BATCH_AST_THREADS")
    if cpus and cpus.isdigit() and int(cpus) > 0:
        torch.set_num_threads(int(cpus))


def _write_trace(path: Path, trace: list[tuple[int, float, float, float]]) -> None:
    import pandas as pd

    frame = pd.DataFrame(trace, columns=list(TRACE_COLUMNS)).astype(
        {"iteration": "int64", "total": "float64", "content": "float64", "style": "float64"}
    )
    write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def make_transfer(content, style, content_spec, style_spec, p: dict[str, Any], device):
    """A plain StyleTransfer, or Tomczak et al.'s beat-segmented one (rhythm=beats)."""
    from .transfer import StyleTransfer

    if p["rhythm"] == "none":
        return StyleTransfer(content_spec, style_spec, p, device)
    from .rhythm import SegmentedTransfer, beat_frames, paired_segments

    segments = paired_segments(
        beat_frames(content, p["sample_rate"], p["hop_length"]),
        beat_frames(style, p["sample_rate"], p["hop_length"]),
        content_spec.shape[-1],
        style_spec.shape[-1],
    )
    return SegmentedTransfer(content_spec, style_spec, segments, p, device)


def _iteration_bar(spec: RowSpec, start: int, total: int):
    """A progress bar over iterations when a person watches (TTY); silent in job logs."""
    from tqdm import tqdm

    return tqdm(
        total=total, initial=start, desc=f"row {spec.row}", unit="it", leave=False,
        disable=not sys.stderr.isatty(),
    )


def _write_figures(spec: RowSpec, results: ResultsRoot, content, style, output, trace) -> dict[str, str]:
    """Spectrogram and loss PNGs; a plotting problem is recorded, never fails the row."""
    from .figures import loss_figure, spectrogram_figure

    p = spec.params
    run_dir = results.run_dir(spec.id)
    title = f"{spec.name or spec.id}: {Path(spec.content).name} + {Path(spec.style).name}"
    try:
        spectrogram_figure(
            run_dir / "spectrograms.png",
            {
                "content": content.cpu().numpy(),
                "style": style.cpu().numpy(),
                "output": output.cpu().numpy(),
            },
            p["sample_rate"],
            p["hop_length"],
            title,
        )
        loss_figure(run_dir / "losses.png", trace, title)
    except Exception as exc:  # noqa: BLE001 - figures are a convenience
        return {"figure_error": f"{type(exc).__name__}: {exc}"}
    return {
        "spectrogram_png": str((run_dir / "spectrograms.png").relative_to(results.root)),
        "loss_png": str((run_dir / "losses.png").relative_to(results.root)),
    }


class ResumeLimitError(RuntimeError):
    """A row was interrupted and resumed more often than allowed."""


class MemoryBudgetError(ValueError):
    """The row would need more memory than its max_memory_gb budget."""


# Failures that come from the inputs or settings: retrying cannot help, so --retry-failed skips them.
def _is_retryable(exc: BaseException) -> bool:
    from .audio import AudioError
    from .transfer import TransferError

    return not isinstance(exc, (AudioError, TransferError, ResumeLimitError, MemoryBudgetError))


def run_row(
    spec: RowSpec,
    results: ResultsRoot,
    should_pause: Callable[[], bool] = lambda: False,
    submission_id: str = "",
    checkpoint_every_s: float = 300.0,
    max_resumes: int = 10,
) -> dict[str, Any]:
    """Run one row: load, optimise, reconstruct phase, write outputs and record. Never raises except
    ``Paused`` (state saved for a later resume); failures become a ``failed`` record.

    The optimisation state is checkpointed every ``checkpoint_every_s`` seconds (at an iteration
    boundary) so that even a hard kill (node failure, ``scontrol requeue``) loses little work."""
    import torch

    from .audio import load_audio, write_wav
    from .metrics import output_metrics
    from .phase import griffin_lim, magnitude_from_log, spectral_convergence
    from .transfer import (
        check_length,
        estimate_memory_bytes,
        log_spectrogram,
        pick_device,
        stft_frames,
    )

    p = spec.params
    record: dict[str, Any] = {
        **spec.to_dict(),
        "status": "running",
        "error": "",
        "retryable": False,
        "submission_id": submission_id,
        "started_at": _now(),
        "batch_ast_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        **_cluster_context(),
    }
    run_dir = results.run_dir(spec.id)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = results.checkpoint_path(spec.id)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    try:
        device = pick_device(p["device"])
        record["device_used"] = str(device)
        t0 = time.perf_counter()
        content = load_audio(spec.content, p["sample_rate"], p["max_seconds"])
        style = load_audio(spec.style, p["sample_rate"], p["max_seconds"])
        record["content_seconds"] = len(content) / p["sample_rate"]
        record["style_seconds"] = len(style) / p["sample_rate"]
        timings["time_load_s"] = time.perf_counter() - t0
        check_length(len(content), p, "content")
        check_length(len(style), p, "style")

        t0 = time.perf_counter()
        hop = p["hop_length"]
        need = estimate_memory_bytes(
            p["n_fft"] // 2 + 1, stft_frames(len(content), hop), stft_frames(len(style), hop), p
        )
        if need > p["max_memory_gb"] * 2**30:
            raise MemoryBudgetError(
                f"needs about {need / 2**30:.1f} GiB, above max_memory_gb={p['max_memory_gb']}: "
                "lower max_seconds or n_filters, or raise max_memory_gb"
            )
        to_spec = lambda t: log_spectrogram(t, p["n_fft"], p["hop_length"])  # noqa: E731
        content_spec = to_spec(torch.from_numpy(content).to(device))
        style_spec = to_spec(torch.from_numpy(style).to(device))
        transfer = make_transfer(content, style, content_spec, style_spec, p, device)
        resumes = 0
        if ckpt_path.exists():
            state = torch.load(ckpt_path, map_location=device, weights_only=False)
            transfer.load_state_dict(state)
            resumes = state.get("resumes", 0) + 1
            if resumes > max_resumes:
                raise ResumeLimitError(
                    f"interrupted {resumes} times, more than max_retries={max_resumes}: giving up"
                )
        record["resumed_from_iteration"] = transfer.iteration
        record["resumes"] = resumes

        def save_checkpoint() -> None:
            state = {**transfer.state_dict(), "resumes": resumes}
            write_atomic(ckpt_path, lambda tmp: torch.save(state, tmp))

        last_save = time.monotonic()
        bar = _iteration_bar(spec, transfer.iteration, p["iterations"])
        while not transfer.finished:
            if should_pause():
                save_checkpoint()
                bar.close()
                raise Paused(f"row {spec.row} paused at iteration {transfer.iteration}")
            transfer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{transfer.trace[-1][1]:.4g}", refresh=False)
            if checkpoint_every_s and time.monotonic() - last_save >= checkpoint_every_s:
                save_checkpoint()
                last_save = time.monotonic()
        bar.close()
        log_spec, terms = transfer.result()
        timings["time_optimize_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        magnitude = magnitude_from_log(log_spec)
        audio = griffin_lim(
            magnitude,
            p["n_fft"],
            p["hop_length"],
            n_iter=p["griffin_lim_iters"],
            momentum=p["griffin_lim_momentum"],
            seed=p["seed"],
            # beat-segmented outputs follow the grid input's beats, not the content's length
            length=len(content) if p["rhythm"] == "none" else None,
        )
        record["spectral_convergence"] = spectral_convergence(
            magnitude, audio, p["n_fft"], p["hop_length"]
        )
        timings["time_phase_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        output_audio = audio.cpu().numpy()
        record["output_gain"] = write_wav(results.output_path(spec.id), output_audio, p["sample_rate"])
        _write_trace(results.trace_path(spec.id), transfer.trace)
        timings["time_write_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        record.update(
            _write_figures(spec, results, content_spec, style_spec, to_spec(audio), transfer.trace)
        )
        timings["time_figures_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        record.update(output_metrics(output_audio * record["output_gain"], content, style, p, device))
        timings["time_metrics_s"] = time.perf_counter() - t0
        record.update(
            status="ok",
            output=str(results.output_path(spec.id).relative_to(results.root)),
            trace=str(results.trace_path(spec.id).relative_to(results.root)),
            iterations_run=transfer.iteration,
            stop_reason=transfer.stop_reason,
            final_total=terms.total,
            final_content=terms.content,
            final_style=terms.style,
        )
    except Paused:
        raise
    except Exception as exc:  # one bad row must never stop the batch
        record.update(
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            retryable=_is_retryable(exc),
            traceback=traceback.format_exc(limit=8),
        )
    timings["time_total_s"] = time.perf_counter() - t_start
    record.update(timings, finished_at=_now())
    write_json_atomic(results.record_path(spec.id), record)
    if record["status"] == "ok" or not record["retryable"]:
        ckpt_path.unlink(missing_ok=True)
    return record


class TransferJob(submitit.helpers.Checkpointable):
    """The callable submitit pickles: runs a pack of rows in order, skipping rows already finished.

    On preemption or timeout submitit calls ``checkpoint()``; the requeued job re-runs this same
    call, which skips finished rows and resumes the interrupted one from its checkpoint file.
    Signals are deferred to the next iteration boundary so the saved state is always consistent.
    """

    def __init__(
        self,
        submission_id: str = "",
        force: bool = False,
        checkpoint_every_s: float = 300.0,
        max_resumes: int = 10,
    ) -> None:
        self.submission_id = submission_id
        self.force = force  # redo rows finished by earlier submissions
        self.checkpoint_every_s = checkpoint_every_s
        self.max_resumes = max_resumes
        self._pause_requested = False

    def _already_done(self, record: dict[str, Any] | None) -> bool:
        if not record or record.get("status") != "ok":
            return False
        return not self.force or record.get("submission_id") == self.submission_id

    def __call__(self, specs: list[dict[str, Any]], root: str) -> list[dict[str, str]]:
        configure_threads()
        results = ResultsRoot(root)
        self._install_deferred_signal_handler()
        summary = []
        for raw in specs:
            spec = RowSpec(**raw)
            if self._already_done(results.read_record(spec.id)):
                summary.append({"id": spec.id, "status": "ok", "error": ""})
                continue
            try:
                record = run_row(
                    spec,
                    results,
                    should_pause=lambda: self._pause_requested,
                    submission_id=self.submission_id,
                    checkpoint_every_s=self.checkpoint_every_s,
                    max_resumes=self.max_resumes,
                )
            except Paused:
                self._hand_signal_to_submitit()
                raise
            summary.append({"id": spec.id, "status": record["status"], "error": record["error"]})
        return summary

    def _install_deferred_signal_handler(self) -> None:
        """Replace submitit's USR2 handler by one that only raises a flag; the loop checks the flag
        between iterations, saves the state, then calls submitit's handler to requeue."""
        self._pause_requested = False
        self._submitit_handler = signal.getsignal(signal.SIGUSR2)
        if not callable(self._submitit_handler):
            return  # not under submitit (e.g. called directly): nothing to defer

        def request_pause(signum: int, frame: Any) -> None:
            self._pause_requested = True

        signal.signal(signal.SIGUSR2, request_pause)

    def _hand_signal_to_submitit(self) -> None:
        handler = getattr(self, "_submitit_handler", None)
        if callable(handler):
            handler(signal.SIGUSR2, None)  # checkpoints (requeue) and exits the process

    def __getstate__(self) -> dict[str, Any]:
        # nothing of a running job (flags, signal handlers) belongs in the requeue pickle
        return {
            "submission_id": self.submission_id,
            "force": self.force,
            "checkpoint_every_s": self.checkpoint_every_s,
            "max_resumes": self.max_resumes,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)
