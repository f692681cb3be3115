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
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import submitit

from . import __version__
from .plan import RowSpec, result_params
from .store import ResultsRoot, release_claim, write_atomic, write_json_atomic

TRACE_COLUMNS = ("iteration", "total", "content", "style", "evaluations")


# One limit for both: how often a row may be resumed, and how many time-limit requeues submitit
# grants (its slurm_max_num_timeout), so the help text and the job log count the same thing.
DEFAULT_MAX_RESUMES = 10
DEFAULT_CHECKPOINT_EVERY_S = 300.0
SILENCE_DBFS = -90.0  # an input whose peak is below this carries no content or style to transfer


class Paused(Exception):
    """The row was interrupted at an iteration boundary and its state checkpointed; ``runs`` are
    the rows that paused (to be failed if no requeue follows)."""

    def __init__(self, message: str, runs: list[RowRun] | None = None):
        super().__init__(message)
        self.runs = runs or []


class TimeLimitError(RuntimeError):
    """The row hit its job's time limit more often than requeues allow (retryable: resumes from its
    checkpoint with --retry-failed, ideally with a larger timeout_min)."""


class DivergedError(ValueError):
    """The optimisation produced a non-finite loss: the settings (lr, weights) are unusable."""


class SilentInputError(ValueError):
    """An input has no audible signal, so there is no content or style to transfer."""


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


def _write_trace(path: Path, trace: list[tuple]) -> None:
    import pandas as pd

    frame = pd.DataFrame(trace, columns=list(TRACE_COLUMNS)).astype(
        {"iteration": "int64", "total": "float64", "content": "float64", "style": "float64",
         "evaluations": "Int64"}  # unknown (None) for iterations resumed from an older checkpoint
    )
    write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def make_transfer(content, style, content_spec, style_spec, p: dict[str, Any], device, weight=None):
    """(transfer, beat alignment): a plain StyleTransfer (alignment None), or Tomczak et al.'s
    beat-segmented one (rhythm=beats), whose alignment (beats, tempi, warnings) goes in the record."""
    from .transfer import StyleTransfer

    if p["rhythm"] == "none":
        return StyleTransfer(content_spec, style_spec, p, device, weight), None
    from .rhythm import beat_transfer

    return beat_transfer(content, style, content_spec, style_spec, p, device, weight)


def _iteration_bar(spec: RowSpec, start: int, total: int, position: int = 0):
    """A progress bar over iterations when a person watches (TTY); silent in job logs. Rows
    optimised together each get a line (``position``)."""
    from tqdm import tqdm

    return tqdm(
        total=total, initial=start, desc=f"row {spec.row}", unit="it", leave=False,
        position=position, disable=not sys.stderr.isatty(),
    )


def _beat_lines(record: dict[str, Any]) -> dict[str, list[float]] | None:
    """Beat times (s) per figure panel of a beat-segmented row: the output follows its grid's."""
    if "content_beat_times" not in record:
        return None
    grid = record["params"]["beat_grid"]
    content, style = record["content_beat_times"], record["style_beat_times"]
    return {"content": content, "style": style, "output": style if grid == "style" else content}


def _write_figures(spec: RowSpec, results: ResultsRoot, content, style, output, trace,
                   beats: dict[str, list[float]] | None = None) -> dict[str, str]:
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
            beats,
        )
        loss_figure(run_dir / "losses.png", trace, title)
    except Exception as exc:  # noqa: BLE001 - figures are a convenience
        return {"figure_error": f"{type(exc).__name__}: {exc}"}
    return {
        "spectrogram_png": str((run_dir / "spectrograms.png").relative_to(results.root)),
        "loss_png": str((run_dir / "losses.png").relative_to(results.root)),
    }


def figures_missing(results: ResultsRoot, record: dict[str, Any]) -> bool:
    """An ok row whose figures failed (disk full, a plotting error) or whose PNGs are gone."""
    if record.get("status") != "ok":
        return False
    if record.get("figure_error"):
        return True
    return any(not record.get(key) or not (results.root / record[key]).exists()
               for key in ("spectrogram_png", "loss_png"))


def regenerate_figures(results: ResultsRoot, record: dict[str, Any]) -> dict[str, Any]:
    """Redraw an ok row's figures from its inputs, output WAV and trace, and republish its record
    (only the figure fields change; the results stay as they are). Returns the new record."""
    import pandas as pd
    import torch

    from .audio import load_audio
    from .transfer import log_spectrogram

    spec = RowSpec(**{k: record[k] for k in RowSpec.__dataclass_fields__ if k in record})
    p = spec.params
    rate, n_fft, hop = p["sample_rate"], p["n_fft"], p["hop_length"]
    specs = [
        log_spectrogram(torch.from_numpy(load_audio(path, rate, p["max_seconds"])), n_fft, hop)
        for path in (spec.content, spec.style, results.root / record["output"])
    ]
    trace = [tuple(t) for t in pd.read_parquet(results.root / record["trace"])[list(TRACE_COLUMNS[:4])].itertuples(index=False)]
    figures = _write_figures(spec, results, *specs, trace, _beat_lines(record))
    updated = {k: v for k, v in record.items() if k not in ("figure_error", "spectrogram_png", "loss_png")}
    updated.update(figures)
    write_json_atomic(results.record_path(spec.id), updated)
    return updated


class ResumeLimitError(RuntimeError):
    """A row was interrupted and resumed more often than allowed."""


class MemoryBudgetError(ValueError):
    """The row would need more memory than its max_memory_gb budget."""


# Failures that come from the inputs or settings: retrying cannot help, so --retry-failed skips them.
def _is_retryable(exc: BaseException) -> bool:
    from .audio import AudioError
    from .transfer import TransferError

    deterministic = (AudioError, TransferError, ResumeLimitError, MemoryBudgetError, DivergedError, SilentInputError)
    return not isinstance(exc, deterministic)


@dataclass
class Inputs:
    """A row's decoded audio; a job decodes the next rows in the background while this one runs."""

    content: np.ndarray
    style: np.ndarray
    seconds: float  # decode and resample time


def check_memory_budget(spec: RowSpec, content_samples: int, style_samples: int, decode_bytes: int = 0) -> None:
    """Refuse a row whose estimated peak memory is above its max_memory_gb, before allocating it."""
    from .transfer import estimate_memory_bytes, stft_frames

    p = spec.params
    hop = p["hop_length"]
    need = decode_bytes + estimate_memory_bytes(
        p["n_fft"] // 2 + 1, stft_frames(content_samples, hop), stft_frames(style_samples, hop), p
    )
    if need > p["max_memory_gb"] * 2**30:
        raise MemoryBudgetError(
            f"needs about {need / 2**30:.1f} GiB, above max_memory_gb={p['max_memory_gb']}: "
            "lower max_seconds or n_filters, or raise max_memory_gb"
        )


def load_inputs(spec: RowSpec) -> Inputs:
    """Decode both inputs, after checking from their headers alone that the row fits its memory
    budget (a long many-channel file is refused before it is decoded)."""
    from .audio import decoded_samples, load_audio, probe_audio

    p = spec.params
    t0 = time.perf_counter()
    infos = [probe_audio(path) for path in (spec.content, spec.style)]
    if all(infos):
        samples = [decoded_samples(info, p["sample_rate"], p["max_seconds"]) for info in infos]
        check_memory_budget(spec, *samples, decode_bytes=max(info.decode_bytes(p["max_seconds"]) for info in infos))
    content = load_audio(spec.content, p["sample_rate"], p["max_seconds"])
    style = load_audio(spec.style, p["sample_rate"], p["max_seconds"])
    for what, audio, path in (("content", content, spec.content), ("style", style, spec.style)):
        peak = float(np.max(np.abs(audio)))
        if peak < 10 ** (SILENCE_DBFS / 20):
            level = f"{20 * np.log10(peak):.0f} dBFS" if peak > 0 else "digital silence"
            raise SilentInputError(
                f"{what} input {path} is silent (peak {level}, below {SILENCE_DBFS:.0f} dBFS): "
                f"there is no {what} to transfer"
            )
    return Inputs(content, style, time.perf_counter() - t0)


CHECKPOINT_FORMAT = 1


def checkpoint_identity(spec: RowSpec) -> dict[str, Any]:
    """What a checkpoint stores to prove whose state it is: the row id and its settings."""
    import json

    return {
        "format": CHECKPOINT_FORMAT,
        "row_id": spec.id,
        "settings": json.dumps(result_params(spec.params), sort_keys=True),
    }


def load_checkpoint(path: Path, spec: RowSpec, device: Any) -> tuple[dict[str, Any] | None, str]:
    """(state, "") for a checkpoint that is plain data and belongs to ``spec``, else (None, why).

    ``weights_only=True``: torch's restricted unpickler accepts tensors, numbers, strings, lists,
    tuples and dicts only, so a planted pickle cannot run code in the job."""
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated, foreign or malicious: all "absent"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"not a loadable checkpoint ({type(exc).__name__}: {first[:200]})"
    if not isinstance(state, dict):
        return None, f"not a batch-ast checkpoint (a {type(state).__name__})"
    expected = checkpoint_identity(spec)
    if state.get("row_id") != expected["row_id"]:
        return None, f"belongs to row {str(state.get('row_id'))[:40]!r}, not {spec.id}"
    if state.get("settings") != expected["settings"] or state.get("format") != CHECKPOINT_FORMAT:
        return None, "was written with other settings or by another version"
    return state, ""


class RowRun:
    """One row's way through a job: ``prepare`` (inputs, checks, transfer, resume), ``optimize``,
    ``finish`` (phase, files, metrics, record). Rows batched together are prepared one by one,
    optimised together (batched.py), and finished one by one; a failure at any stage becomes the
    row's ``failed`` record (``fail``), never an exception that stops the other rows.

    The optimisation state is checkpointed every ``checkpoint_every_s`` seconds (at an iteration
    boundary) so that even a hard kill (node failure, ``scontrol requeue``) loses little work."""

    def __init__(
        self,
        spec: RowSpec,
        results: ResultsRoot,
        submission_id: str = "",
        checkpoint_every_s: float = DEFAULT_CHECKPOINT_EVERY_S,
        max_resumes: int = DEFAULT_MAX_RESUMES,
    ) -> None:
        import torch

        self.spec, self.results = spec, results
        self.checkpoint_every_s, self.max_resumes = checkpoint_every_s, max_resumes
        self.record: dict[str, Any] = {
            **spec.to_dict(),
            "status": "running",
            "error": "",
            "retryable": False,
            "submission_id": submission_id,
            "started_at": _now(),
            "batch_ast_version": __version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            # results are bit-identical only at equal device and thread count (float reductions)
            "torch_threads": torch.get_num_threads(),
            **_cluster_context(),
        }
        self.timings: dict[str, float] = {}
        self.t_start = time.perf_counter()
        self.ckpt_path = results.checkpoint_path(spec.id)
        self.resumes = 0
        self.transfer: Any = None
        self.beats: Any = None  # rhythm.BeatAlignment of a beat-segmented row
        self.inputs: Inputs | None = None
        self.specs: tuple[Any, Any] | None = None  # the inputs' log spectrograms, on the device

    def prepare(self, inputs: Future | None = None, weight: Any = None) -> None:
        """Check the inputs and build the transfer (resumed from its checkpoint if there is one).
        ``inputs``: the audio being decoded in the background, or None to decode it now;
        ``weight``: the network, when rows batched together share one."""
        import torch

        from .transfer import check_length, log_spectrogram, pick_device

        p, record = self.spec.params, self.record
        # A job's rows share one log: this line lets `status` show each row its own lines.
        print(f"[row {self.spec.id}] start (manifest row {self.spec.row})", file=sys.stderr, flush=True)
        self.results.run_dir(self.spec.id).mkdir(parents=True, exist_ok=True)
        device = pick_device(p["device"])
        record["device_used"] = str(device)
        self.inputs = inputs = inputs.result() if inputs is not None else load_inputs(self.spec)
        content, style = inputs.content, inputs.style
        record["content_seconds"] = len(content) / p["sample_rate"]
        record["style_seconds"] = len(style) / p["sample_rate"]
        self.timings["time_load_s"] = inputs.seconds
        check_length(len(content), p, "content")
        check_length(len(style), p, "style")

        self.t_optimize = time.perf_counter()
        hop = p["hop_length"]
        check_memory_budget(self.spec, len(content), len(style))  # headers may have been unreadable
        self.specs = tuple(
            log_spectrogram(torch.from_numpy(a).to(device), p["n_fft"], hop) for a in (content, style)
        )
        self.transfer, self.beats = make_transfer(content, style, *self.specs, p, device, weight)
        if self.beats is not None:
            record.update(self.beats.record(p["sample_rate"], hop))
            if self.beats.warnings:
                record["warning"] = "; ".join(self.beats.warnings)
                for warning in self.beats.warnings:
                    print(f"[row {self.spec.id}] warning: {warning}", file=sys.stderr, flush=True)
        self._resume(device)
        record["resumed_from_iteration"] = self.transfer.iteration
        record["resumes"] = self.resumes

    def _resume(self, device: Any) -> None:
        """Continue from the row's checkpoint when there is a valid one. A checkpoint is only ever
        data: it is loaded with ``weights_only=True`` (no pickled code runs) and must name this row
        and its settings; anything else is moved aside to ``checkpoint.pt.bad``, noted in the
        record, and the row starts afresh."""
        if not self.ckpt_path.exists():
            return
        state, problem = load_checkpoint(self.ckpt_path, self.spec, device)
        if state is not None:
            try:
                self.transfer.load_state_dict(state)
            except Exception as exc:  # noqa: BLE001 - any mismatch means "not this row's state"
                problem = f"does not fit this row's transfer ({type(exc).__name__}: {exc})"
                self.transfer, _ = make_transfer(
                    self.inputs.content, self.inputs.style, *self.specs, self.spec.params, device,
                    self.transfer.weight,
                )
        if problem:
            bad = self.ckpt_path.with_name(self.ckpt_path.name + ".bad")
            os.replace(self.ckpt_path, bad)
            self.record["checkpoint_error"] = f"{self.ckpt_path}: {problem}; moved to {bad.name}, row restarted"
            print(f"[row {self.spec.id}] warning: {self.record['checkpoint_error']}", file=sys.stderr, flush=True)
            return
        # Resumes count within one submission: a new submission (--retry-failed) starts afresh.
        same_submission = state.get("submission_id") == self.record["submission_id"]
        self.resumes = (int(state.get("resumes", 0)) if same_submission else 0) + 1
        if self.resumes > self.max_resumes:
            raise ResumeLimitError(
                f"interrupted {self.resumes} times, more than max_retries={self.max_resumes}: giving up"
            )

    def save_checkpoint(self) -> None:
        import torch

        state = {
            **self.transfer.state_dict(),
            "resumes": self.resumes,
            **checkpoint_identity(self.spec),
            "submission_id": self.record["submission_id"],
        }
        write_atomic(self.ckpt_path, lambda tmp: torch.save(state, tmp))

    def optimize(self, should_pause: Callable[[], bool], bar_position: int = 0) -> None:
        """Iterate to the end, checkpointing periodically; on ``should_pause()`` save and raise Paused."""
        transfer, p = self.transfer, self.spec.params
        last_save = time.monotonic()
        bar = _iteration_bar(self.spec, transfer.iteration, p["iterations"], bar_position)
        try:
            while not transfer.finished:
                if should_pause():
                    self.save_checkpoint()
                    raise Paused(f"row {self.spec.row} paused at iteration {transfer.iteration}")
                transfer.step()
                bar.update(1)
                bar.set_postfix(loss=f"{transfer.trace[-1][1]:.4g}", refresh=False)
                if self.checkpoint_every_s and time.monotonic() - last_save >= self.checkpoint_every_s:
                    self.save_checkpoint()
                    last_save = time.monotonic()
        finally:
            bar.close()

    def finish(self) -> dict[str, Any]:
        """Phase reconstruction, then the files and the ``ok`` record, each published atomically."""
        from .audio import write_wav
        from .metrics import output_metrics
        from .phase import griffin_lim, magnitude_from_log, spectral_convergence
        from .transfer import log_spectrogram

        spec, results, record, timings = self.spec, self.results, self.record, self.timings
        p, transfer, inputs = spec.params, self.transfer, self.inputs
        assert inputs is not None and self.specs is not None
        timings["time_optimize_s"] = time.perf_counter() - self.t_optimize
        record.update(
            iterations_run=transfer.iteration, stop_reason=transfer.stop_reason,
            evaluations=transfer.evaluations, style_form=transfer.style_form,
        )
        if "diverged" in transfer.stop_reason:
            # No output: the best iterate before a NaN/inf is not what the user asked for.
            raise DivergedError(
                f"the loss became non-finite at iteration {transfer.iteration}: lower lr (now "
                f"{p['lr']:g}) or the loss weights"
            )
        log_spec, terms = transfer.result()
        if self.beats is not None:
            from .rhythm import check_coverage

            grid_spec = self.specs[1] if self.beats.grid == "style" else self.specs[0]
            check_coverage(log_spec.shape[-1], grid_spec.shape[-1])

        t0 = time.perf_counter()
        magnitude = magnitude_from_log(log_spec)
        audio = griffin_lim(
            magnitude,
            p["n_fft"],
            p["hop_length"],
            n_iter=p["griffin_lim_iters"],
            momentum=p["griffin_lim_momentum"],
            seed=p["seed"],
            length=self._output_samples(),
        )
        record["spectral_convergence"] = spectral_convergence(magnitude, audio, p["n_fft"], p["hop_length"])
        timings["time_phase_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        output_audio = audio.cpu().numpy()
        record["output_gain"] = write_wav(results.output_path(spec.id), output_audio, p["sample_rate"])
        _write_trace(results.trace_path(spec.id), transfer.trace)
        timings["time_write_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        output_spec = log_spectrogram(audio, p["n_fft"], p["hop_length"])
        beats = _beat_lines({**record, "params": p})
        record.update(_write_figures(spec, results, *self.specs, output_spec, transfer.trace, beats))
        timings["time_figures_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        record.update(
            output_metrics(
                output_audio * record["output_gain"], inputs.content, inputs.style, p, audio.device,
                input_specs=self.specs, weight=transfer.weight,
            )
        )
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
        return self._publish()

    def _output_samples(self) -> int:
        """The output is as long as the content, or a beat-segmented one as its grid input."""
        assert self.inputs is not None
        on_style_grid = self.beats is not None and self.beats.grid == "style"
        return len(self.inputs.style if on_style_grid else self.inputs.content)

    def fail(self, exc: BaseException) -> dict[str, Any]:
        """The row's ``failed`` record: the error, and whether a retry could help."""
        self.record.update(
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            retryable=_is_retryable(exc),
            traceback="".join(traceback.format_exception(exc, limit=8)),
        )
        return self._publish()

    def _publish(self) -> dict[str, Any]:
        record = self.record
        self.timings["time_total_s"] = time.perf_counter() - self.t_start
        record.update(self.timings, finished_at=_now())
        write_json_atomic(self.results.record_path(self.spec.id), record)
        if record["status"] == "ok" or not record["retryable"]:
            self.ckpt_path.unlink(missing_ok=True)
        release_claim(self.results, self.spec.id, record["submission_id"])
        outcome = record["status"] + (f": {record['error'].splitlines()[0][:300]}" if record["error"] else "")
        print(f"[row {self.spec.id}] {outcome}", file=sys.stderr, flush=True)
        return record


def run_rows(
    specs: list[RowSpec],
    results: ResultsRoot,
    should_pause: Callable[[], bool] = lambda: False,
    submission_id: str = "",
    checkpoint_every_s: float = DEFAULT_CHECKPOINT_EVERY_S,
    max_resumes: int = DEFAULT_MAX_RESUMES,
    inputs: list[Future] | None = None,
) -> list[dict[str, Any]]:
    """Run rows that share a network (``batched.network_key``) as one batched optimisation; a single
    row runs on its own in this thread. Returns their records; raises ``Paused`` (after every row
    has saved its state or published its record) when ``should_pause()`` interrupted any of them."""
    runs = [RowRun(s, results, submission_id, checkpoint_every_s, max_resumes) for s in specs]
    records: list[dict[str, Any] | None] = [None] * len(runs)
    weight = None
    for i, (run, row_inputs) in enumerate(zip(runs, inputs or [None] * len(runs), strict=True)):
        try:
            run.prepare(row_inputs, weight)
            weight = run.transfer.weight if len(runs) > 1 else None
        except Exception as exc:  # one bad row must never stop the batch
            records[i] = run.fail(exc)
    ready = [i for i, r in enumerate(records) if r is None]

    def finish(i: int) -> None:
        try:
            records[i] = runs[i].finish()
        except Exception as exc:  # noqa: BLE001 - becomes the row's failed record
            records[i] = runs[i].fail(exc)

    errors: list[BaseException | None] = []
    if len(ready) == 1:  # alone: in this thread, no rendezvous
        try:
            runs[ready[0]].optimize(should_pause)
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - Paused included: handled with the batched rows'
            errors.append(exc)
        if errors[0] is None:
            finish(ready[0])
    elif ready:
        from .batched import run_together

        errors = run_together(
            [runs[i].transfer for i in ready],
            lambda k: runs[ready[k]].optimize(should_pause, bar_position=k),
            lambda k: finish(ready[k]),
        )
    paused = [exc for exc in errors if isinstance(exc, Paused)]
    for k, exc in enumerate(errors):
        if exc is not None and not isinstance(exc, Paused):
            records[ready[k]] = runs[ready[k]].fail(exc)
    if paused:
        raise Paused(str(paused[0]), [runs[ready[k]] for k, exc in enumerate(errors) if isinstance(exc, Paused)])
    return [r for r in records if r is not None]


def run_row(spec: RowSpec, results: ResultsRoot, should_pause: Callable[[], bool] = lambda: False,
            **options: Any) -> dict[str, Any]:
    """Run one row end to end; never raises except ``Paused`` (state saved for a later resume)."""
    return run_rows([spec], results, should_pause, **options)[0]


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
        checkpoint_every_s: float = DEFAULT_CHECKPOINT_EVERY_S,
        max_resumes: int = DEFAULT_MAX_RESUMES,
        batch_rows: int = 1,
    ) -> None:
        self.submission_id = submission_id
        self.force = force  # redo rows finished by earlier submissions
        self.checkpoint_every_s = checkpoint_every_s
        self.max_resumes = max_resumes
        self.batch_rows = batch_rows  # rows of a pack optimised together (batched.py)
        self._pause_requested = False

    def _already_done(self, record: dict[str, Any] | None) -> bool:
        if not record or record.get("status") != "ok":
            return False
        return not self.force or record.get("submission_id") == self.submission_id

    def __call__(self, specs: list[dict[str, Any]], root: str) -> list[dict[str, str]]:
        from concurrent.futures import ThreadPoolExecutor

        from .batched import group_for_batching

        configure_threads()
        results = ResultsRoot(root)
        self._install_deferred_signal_handler()
        rows = [RowSpec(**raw) for raw in specs]
        finished = {s.id: {"id": s.id, "status": "ok", "error": ""} for s in rows
                    if self._already_done(results.read_record(s.id))}
        todo = [s for s in rows if s.id not in finished]
        groups = [[todo[i] for i in g] for g in group_for_batching([s.params for s in todo], self.batch_rows)]
        # One decoder thread: the next group's audio is decoded while this group optimises.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as decoder:
            def decode(group: list[RowSpec]) -> list[Future]:
                return [decoder.submit(load_inputs, s) for s in group]

            upcoming = decode(groups[0]) if groups else []
            for k, group in enumerate(groups):
                inputs, upcoming = upcoming, decode(groups[k + 1]) if k + 1 < len(groups) else []
                try:
                    records = run_rows(
                        group,
                        results,
                        should_pause=lambda: self._pause_requested,
                        submission_id=self.submission_id,
                        checkpoint_every_s=self.checkpoint_every_s,
                        max_resumes=self.max_resumes,
                        inputs=inputs,
                    )
                except Paused as paused:
                    for future in upcoming:
                        future.cancel()
                    self._hand_signal_to_submitit(paused.runs)
                    raise
                finished.update({r["id"]: {"id": r["id"], "status": r["status"], "error": r["error"]}
                                 for r in records})
        return [finished[s.id] for s in rows if s.id in finished]

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

    def _hand_signal_to_submitit(self, paused: list[RowRun]) -> None:
        """submitit's handler requeues and exits; when it refuses (time limit reached more often
        than max_num_timeout) the paused rows get a failed record first, so no row is left without
        one. Their checkpoints stay: --retry-failed resumes them."""
        handler = getattr(self, "_submitit_handler", None)
        if not callable(handler):
            return
        try:
            handler(signal.SIGUSR2, None)  # checkpoints (requeue) and exits the process
        except submitit.core.utils.UncompletedJobError as exc:
            for run in paused:
                run.fail(TimeLimitError(
                    f"time limit reached more often than max_retries={self.max_resumes} requeues allow "
                    f"({exc}); raise timeout_min or --max-retries, then --retry-failed resumes the row"
                ))
            raise

    def __getstate__(self) -> dict[str, Any]:
        # nothing of a running job (flags, signal handlers) belongs in the requeue pickle
        return {
            "submission_id": self.submission_id,
            "force": self.force,
            "checkpoint_every_s": self.checkpoint_every_s,
            "max_resumes": self.max_resumes,
            "batch_rows": self.batch_rows,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)
