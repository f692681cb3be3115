"""One row's life in a job: prepare → optimise → reconstruct → publish.

A row's files are published in a fixed order — WAV, trace, then the record — each atomically, so
an ``ok`` record guarantees its outputs are complete. A row that fails at any step publishes a
``failed`` record with the error (``RowRun.fail``); it never raises past its job's loop. The
optimisation state is checkpointed at iteration boundaries, so a requeued job resumes the row.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .audio import AudioError, decoded_samples, load_audio, probe_audio, write_wav
from .backends import job_environment
from .checkpoint import checkpoint_identity, checkpoint_shape_problem, history_problem, read_checkpoint
from .claims import release_claim
from .config import Params
from .features import TransferError, check_length, log_spectrogram, pick_device, stft_frames
from .figures import loss_figure, spectrogram_figure
from .gpu_usage import cuda_peak_bytes, nvml_utilisation
from .metrics import output_metrics
from .phase import griffin_lim, magnitude_from_log, spectral_convergence
from .plan import RowSpec, file_sha256
from .progress import Heartbeat, Progress
from .record import Record, now_utc
from .rhythm import BeatAlignment, beat_transfer, check_coverage
from .runopts import DEFAULTS, Paused, RunOptions
from .store import ResultsRoot, move_aside
from .transfer import StyleTransfer, estimate_memory_bytes, optimise
from .usage import carried_usage, process_ledger

TRACE_COLUMNS = ("iteration", "total", "content", "style", "evaluations")
SILENCE_DBFS = -90.0  # an input whose peak is below this carries no content or style to transfer


class DivergedError(ValueError):
    """The optimisation produced a non-finite loss: the settings (lr, weights) are unusable."""


class SilentInputError(ValueError):
    """An input has no audible signal, so there is no content or style to transfer."""


class ResumeLimitError(RuntimeError):
    """A row was interrupted and resumed more often than allowed."""


class MemoryBudgetError(ValueError):
    """The row would need more memory than its max_memory_gb budget."""


class InputChangedError(ValueError):
    """An input's bytes are not those the row was planned with (its id hashes them): the file was
    replaced after the submit, so the row's result would be recorded under another input's id."""


# Failures that come from the inputs or settings: retrying cannot help, so --retry-failed skips them.
DETERMINISTIC_ERRORS = (
    AudioError,
    TransferError,
    ResumeLimitError,
    MemoryBudgetError,
    DivergedError,
    SilentInputError,
    InputChangedError,
)


@dataclass
class Inputs:
    """A row's decoded audio; a job decodes the next rows in the background while this one runs."""

    content: np.ndarray
    style: np.ndarray
    seconds: float  # decode and resample time


def check_memory_budget(
    params: Params, content_samples: int, style_samples: int, decode_bytes: int = 0
) -> None:
    """Refuse a row whose estimated peak memory is above its max_memory_gb, before allocating it."""
    hop = params.hop_length
    need = decode_bytes + estimate_memory_bytes(
        params.n_bins, stft_frames(content_samples, hop), stft_frames(style_samples, hop), params
    )
    if need > params.max_memory_gb * 2**30:
        raise MemoryBudgetError(
            f"needs about {need / 2**30:.1f} GiB, above max_memory_gb={params.max_memory_gb}: "
            "lower max_seconds or n_filters, or raise max_memory_gb"
        )


_VERIFIED: dict[tuple[str, tuple[int, int, int]], str] = {}  # this process's hashes: (path, stat) -> sha256


def verify_input(path: str, expected: str, what: str) -> None:
    """Check that ``path`` still holds the bytes the row was planned with (its SHA-256 is in the
    row id); a job hashes each distinct file once while it is unchanged (size, mtime, inode)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise AudioError(f"{what} input {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(f"{what} input {path}: not a regular file")
    key = (str(path), (st.st_size, st.st_mtime_ns, st.st_ino))
    if key not in _VERIFIED:
        _VERIFIED[key] = file_sha256(Path(path))
    if _VERIFIED[key] != expected:
        raise InputChangedError(
            f"{what} input {path} changed since it was submitted: its SHA-256 is now {_VERIFIED[key]}, the "
            "row "
            f"was planned with {expected} (submit the manifest again to run the file as it is now)"
        )


def load_inputs(spec: RowSpec) -> Inputs:
    """Check that both inputs are the files the row was planned with (``verify_input``) and fit
    the row's memory budget from their headers alone (a long many-channel file is refused before
    it is decoded), then decode them."""
    p = spec.params
    t0 = time.perf_counter()
    verify_input(spec.content, spec.content_sha256, "content")
    verify_input(spec.style, spec.style_sha256, "style")
    infos = [probe_audio(path) for path in (spec.content, spec.style)]
    if all(infos):
        samples = [decoded_samples(info, p.sample_rate, p.max_seconds) for info in infos]
        check_memory_budget(p, *samples, decode_bytes=max(info.decode_bytes(p.max_seconds) for info in infos))
    content = load_audio(spec.content, p.sample_rate, p.max_seconds)
    style = load_audio(spec.style, p.sample_rate, p.max_seconds)
    for what, audio, path in (("content", content, spec.content), ("style", style, spec.style)):
        peak = float(np.max(np.abs(audio)))
        if peak < 10 ** (SILENCE_DBFS / 20):
            level = f"{20 * np.log10(peak):.0f} dBFS" if peak > 0 else "digital silence"
            raise SilentInputError(
                f"{what} input {path} is silent (peak {level}, below {SILENCE_DBFS:.0f} dBFS): "
                f"there is no {what} to transfer"
            )
    return Inputs(content, style, time.perf_counter() - t0)


def make_transfer(inputs: Inputs, specs: tuple[torch.Tensor, torch.Tensor], params: Params,
                  weight: torch.Tensor) -> tuple[StyleTransfer, BeatAlignment | None]:
    """(transfer, beat alignment): a plain StyleTransfer (alignment None), or Tomczak et al.'s
    beat-segmented one (rhythm=beats), whose alignment (beats, tempi, warnings) goes in the record."""
    if not params.beat_segmented:
        return StyleTransfer(*specs, params, weight.device, weight), None
    return beat_transfer(inputs.content, inputs.style, *specs, params, weight.device, weight)


def write_trace(results: ResultsRoot, path: Path, trace: list[tuple]) -> None:
    """The loss trace as Parquet, one row per iteration (``TRACE_COLUMNS``)."""
    frame = pd.DataFrame(trace, columns=list(TRACE_COLUMNS)).astype(
        {"iteration": "int64", "total": "float64", "content": "float64", "style": "float64",
         "evaluations": "Int64"}  # unknown (None) for iterations resumed from an older checkpoint
    )
    results.write(path, lambda fh: frame.to_parquet(fh, index=False))


def beat_lines(
    grid: str, content: list[float] | None, style: list[float] | None
) -> dict[str, list[float]] | None:
    """Beat times (s) per figure panel of a beat-segmented row (None for other rows): the output
    follows its ``grid`` input's beats."""
    if content is None or style is None:
        return None
    return {"content": content, "style": style, "output": style if grid == "style" else content}


def write_figures(spec: RowSpec, results: ResultsRoot, content: torch.Tensor, style: torch.Tensor,
                  output: torch.Tensor, trace: list[tuple],
                  beats: dict[str, list[float]] | None = None) -> dict[str, str]:
    """Spectrogram and loss PNGs (record fields); a plotting problem is recorded, never fails the row."""
    run_dir = results.run_dir(spec.id)
    title = f"{spec.name or spec.id}: {Path(spec.content).name} + {Path(spec.style).name}"
    panels = {"content": content, "style": style, "output": output}
    try:
        spectrogram_figure(run_dir / "spectrograms.png", {k: v.cpu().numpy() for k, v in panels.items()},
                           spec.params.sample_rate, spec.params.hop_length, title, beats, root=results.root)
        loss_figure(run_dir / "losses.png", trace, title, root=results.root)
    except Exception as exc:  # noqa: BLE001 - figures are a convenience
        return {"figure_error": f"{type(exc).__name__}: {exc}"}
    return {
        "spectrogram_png": str((run_dir / "spectrograms.png").relative_to(results.root)),
        "loss_png": str((run_dir / "losses.png").relative_to(results.root)),
    }


def regenerate_figures(results: ResultsRoot, record: dict[str, Any]) -> dict[str, Any]:
    """Redraw an ok row's figures from its inputs, output WAV and trace, and republish its record
    (only the figure fields change; the results stay as they are). Returns the new record."""
    spec = RowSpec.from_dict(record)
    p = spec.params
    specs = [
        log_spectrogram(
            torch.from_numpy(load_audio(path, p.sample_rate, p.max_seconds)), p.n_fft, p.hop_length
        )
        for path in (spec.content, spec.style, results.output_path(spec.id))
    ]
    frame = pd.read_parquet(results.run_dir(spec.id) / "trace.parquet")[list(TRACE_COLUMNS[:4])]
    trace = [tuple(t) for t in frame.itertuples(index=False)]
    beats = beat_lines(p.beat_grid, record.get("content_beat_times"), record.get("style_beat_times"))
    figures = write_figures(spec, results, *specs, trace, beats)
    updated = {k: v for k, v in record.items() if k not in ("figure_error", "spectrogram_png", "loss_png")}
    updated.update(figures)
    results.write_json(results.record_path(spec.id), updated)
    return updated


def _iteration_bar(spec: RowSpec, start: int, total: int, position: int = 0):
    """A progress bar over iterations when a person watches (TTY); silent in job logs. Rows
    optimised together each get a line (``position``)."""
    return tqdm(total=total, initial=start, desc=f"row {spec.row}", unit="it", leave=False,
                position=position, disable=not sys.stderr.isatty())


# --- the row -------------------------------------------------------------------------------------

class RowRun:
    """One row's way through a job. ``prepare`` (inputs, checks, transfer, resume), ``optimize``,
    then ``finish`` = ``reconstruct`` (Griffin-Lim) + ``write`` (WAV, trace, figures) + ``measure``
    (metrics) + ``publish``. Rows batched together are prepared one by one, optimised together
    (batched.py) and finished one by one; a failure at any step becomes the row's ``failed``
    record (``fail``), never an exception that stops the other rows."""

    def __init__(self, spec: RowSpec, results: ResultsRoot, options: RunOptions = DEFAULTS) -> None:
        self.spec, self.results, self.options = spec, results, options
        self.record = Record.start(spec.to_dict(), options.submission_id, job_environment())
        self.record.update(alloc_rows=options.processes_per_job)
        if self.record.alloc_time_limit_s is None and options.time_limit_s > 0:
            self.record.update(alloc_time_limit_s=options.time_limit_s)  # what the job was submitted with
        self.usage = process_ledger(device_peak=cuda_peak_bytes, utilisation=nvml_utilisation)
        self.usage.enter(spec.id)
        self.t_start = time.perf_counter()
        self.ckpt_path = results.checkpoint_path(spec.id)
        self.resumes = 0
        self.transfer: StyleTransfer | None = None
        self.beats: BeatAlignment | None = None
        self.inputs: Inputs | None = None
        self.specs: tuple[torch.Tensor, torch.Tensor] | None = None  # inputs' log spectrograms, on the device
        self.weight: torch.Tensor | None = None  # the row's network, shared by its group

    def say(self, message: str) -> None:
        """A line in the job log; ``[row <id>]`` lets `status` show each row its own lines."""
        print(f"[row {self.spec.id}] {message}", file=sys.stderr, flush=True)

    @contextmanager
    def timed(self, field: str) -> Iterator[None]:
        """Record the seconds the block took in the record's ``field``."""
        t0 = time.perf_counter()
        yield
        self.record.update(**{field: time.perf_counter() - t0})

    # prepare ------------------------------------------------------------------------------------
    def prepare(self, inputs: Future | None, weights: Callable[[torch.device], torch.Tensor]) -> None:
        """Check the inputs and build the transfer on the row's device (resumed from the row's
        checkpoint if there is one). ``inputs``: the audio being decoded in the background, or None
        to decode it now; ``weights(device)``: the group's network (``transfer.Network``), asked for
        only once the inputs have passed their length and memory checks."""
        self.say(f"start (manifest row {self.spec.row}, pid {os.getpid()})")
        os.close(self.results.row_dir_fd(self.spec.id))  # the row's folder, never through a planted link
        self.beat(Progress.starting(self.spec.params.iterations, socket.gethostname(),
                                    self.options.submission_id), log=False)
        device = pick_device(self.spec.params.device)
        self.record.update(device_used=str(device))
        self.usage.assign(self.spec.id, device=str(device))
        self._load(inputs)
        self.weight = weights(device)
        self._build_transfer()
        self._resume()
        self.record.update(resumed_from_iteration=self.transfer.iteration, resumes=self.resumes)

    def _load(self, inputs: Future | None) -> None:
        p = self.spec.params
        self.inputs = inputs.result() if inputs is not None else load_inputs(self.spec)
        content, style = self.inputs.content, self.inputs.style
        self.record.update(
            content_seconds=len(content) / p.sample_rate,
            style_seconds=len(style) / p.sample_rate,
            time_load_s=self.inputs.seconds,
        )
        check_length(len(content), p, "content")
        check_length(len(style), p, "style")
        check_memory_budget(p, len(content), len(style))  # the headers may have been unreadable

    def _build_transfer(self) -> None:
        p, inputs = self.spec.params, self.inputs
        self.t_optimize = time.perf_counter()
        self.specs = tuple(log_spectrogram(torch.from_numpy(a).to(self.weight.device), p.n_fft, p.hop_length)
                           for a in (inputs.content, inputs.style))
        self.transfer, self.beats = make_transfer(inputs, self.specs, p, self.weight)
        if self.beats is not None:
            self.record.update(**self.beats.record(p.sample_rate, p.hop_length))
            if self.beats.warnings:
                self.record.update(warning="; ".join(self.beats.warnings))
                for warning in self.beats.warnings:
                    self.say(f"warning: {warning}")

    def _resume(self) -> None:
        """Continue from the row's checkpoint when there is a valid one. A checkpoint is only ever
        data: it is loaded with ``weights_only=True`` (no pickled code runs) and must name this row
        and its settings; anything else is moved aside to ``checkpoint.pt.bad``, noted in the
        record, and the row starts afresh."""
        if not os.path.lexists(self.ckpt_path):
            return
        state, problem = read_checkpoint(self.ckpt_path, self.spec, self.weight.device, self.results.root)
        if state is not None:
            fresh = self.transfer.state_dict()
            problem = checkpoint_shape_problem(state, fresh) or history_problem(state, fresh["x"])
            if problem:
                problem, state = f"not this row's state ({problem})", None
        if state is not None:
            try:
                self.transfer.load_state_dict(state)
            except Exception as exc:  # noqa: BLE001 - any mismatch means "not this row's state"
                problem = f"does not fit this row's transfer ({type(exc).__name__}: {exc})"
                self.transfer, _ = make_transfer(self.inputs, self.specs, self.spec.params, self.weight)
        if problem:
            bad = move_aside(self.ckpt_path)
            self.record.update(
                checkpoint_error=f"{self.ckpt_path}: {problem}; moved to {bad.name}, row restarted"
            )
            self.say(f"warning: {self.record.checkpoint_error}")
            return
        # Resumes count within one submission: a new submission (--retry-failed) starts afresh.
        same_submission = state.get("submission_id") == self.options.submission_id
        self.usage.assign(self.spec.id, carried=carried_usage(state.get("usage")))  # before the requeue
        self.resumes = (int(state.get("resumes", 0)) if same_submission else 0) + 1
        if self.resumes > self.options.max_retries:
            raise ResumeLimitError(
                f"interrupted {self.resumes} times, more than max_retries={self.options.max_retries}: giving "
                "up"
            )

    def save_checkpoint(self) -> None:
        state = {
            **self.transfer.state_dict(),
            "resumes": self.resumes,
            **checkpoint_identity(self.spec),
            "submission_id": self.options.submission_id,
            "usage": self.usage.so_far(self.spec.id),
        }
        self.results.write(self.ckpt_path, lambda fh: torch.save(state, fh))

    # optimise -----------------------------------------------------------------------------------
    def optimize(self, should_pause: Callable[[], bool], bar_position: int = 0) -> None:
        """Iterate to the end (``transfer.optimise``), checkpointing periodically; on
        ``should_pause()`` save the state and raise Paused."""
        every = self.options.checkpoint_every_s
        last_save = time.monotonic()
        bar = _iteration_bar(self.spec, self.transfer.iteration, self.spec.params.iterations, bar_position)
        heartbeat = Heartbeat(self.transfer.iteration, self.spec.params.iterations, socket.gethostname(),
                              self.options.submission_id)

        def after_step(transfer: StyleTransfer) -> None:
            nonlocal last_save
            bar.update(1)
            bar.set_postfix(loss=f"{transfer.last_total:.4g}", refresh=False)
            if every and time.monotonic() - last_save >= every:
                self.save_checkpoint()
                last_save = time.monotonic()
            if (progress := heartbeat.beat(transfer.iteration, transfer.last_total)) is not None:
                self.beat(progress, log=heartbeat.log_due())

        self.usage.optimising(self.spec.id, True)
        try:
            if not optimise(self.transfer, should_pause, after_step):
                self.save_checkpoint()
                self.usage.drop(self.spec.id)  # its usage so far went into the checkpoint
                raise Paused(f"row {self.spec.row} paused at iteration {self.transfer.iteration}")
        finally:
            self.usage.optimising(self.spec.id, False)
            bar.close()

    def beat(self, progress: Progress, log: bool) -> None:
        """Publish the row's heartbeat for `status` (and, with ``log``, a line in the job log, which
        shows no progress bar). A heartbeat that cannot be written costs the row nothing."""
        if log:
            self.say(progress.describe())
        try:
            self.results.write_json(self.results.progress_path(self.spec.id), progress.to_json())
        except OSError as exc:
            self.say(f"warning: heartbeat not written ({exc})")

    # finish -------------------------------------------------------------------------------------
    def finish(self, finisher: Executor | None = None) -> dict[str, Any] | Future:
        """Reconstruct (here: Griffin-Lim runs on the row's device), then write, measure and
        publish the ``ok`` record — in ``finisher``'s thread when one is given (a future of the
        record), else here. A failure at any of these steps becomes the row's failed record."""
        self.record.update(time_optimize_s=time.perf_counter() - self.t_optimize)
        try:
            audio, _ = self.reconstruct()
        except Exception as exc:  # noqa: BLE001 - becomes the row's failed record
            return self.fail(exc)
        if finisher is None:
            return self.complete(audio)
        return finisher.submit(self.complete, audio)

    def complete(self, audio: torch.Tensor) -> dict[str, Any]:
        """Write, measure, then publish the ``ok`` record (a failure: the failed record)."""
        try:
            self.write(audio)
            self.measure(audio)
            self.record.update(
                status="ok",
                output=str(self.results.output_path(self.spec.id).relative_to(self.results.root)),
                trace=str(self.results.trace_path(self.spec.id).relative_to(self.results.root)),
            )
            return self._publish()
        except Exception as exc:  # noqa: BLE001 - becomes the row's failed record
            return self.fail(exc)

    def reconstruct(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio, optimised log spectrogram): the best spectrogram's phase by Griffin-Lim."""
        p, transfer = self.spec.params, self.transfer
        self.record.update(iterations_run=transfer.iteration, stop_reason=transfer.stop_reason,
                           evaluations=transfer.evaluations, style_form=transfer.style_form)
        if "diverged" in transfer.stop_reason:
            # No output: the best iterate before a NaN/inf is not what the user asked for.
            raise DivergedError(f"the loss became non-finite at iteration {transfer.iteration}: lower lr "
                                f"(now {p.lr:g}) or the loss weights")
        log_spec, terms = transfer.result()
        self.record.update(final_total=terms.total, final_content=terms.content, final_style=terms.style)
        if self.beats is not None:
            check_coverage(log_spec.shape[-1], self.specs[1 if self.beats.grid == "style" else 0].shape[-1])
        with self.timed("time_phase_s"):
            magnitude = magnitude_from_log(log_spec)
            audio = griffin_lim(magnitude, p.n_fft, p.hop_length, n_iter=p.griffin_lim_iters,
                                momentum=p.griffin_lim_momentum, seed=p.seed, length=self._output_samples())
            self.record.update(
                spectral_convergence=spectral_convergence(magnitude, audio, p.n_fft, p.hop_length)
            )
        return audio, log_spec

    def write(self, audio: torch.Tensor) -> None:
        """The WAV and the trace (atomically), then the figures (never fatal)."""
        p, spec, results = self.spec.params, self.spec, self.results
        with self.timed("time_write_s"):
            self.output = audio.cpu().numpy()
            self.record.update(output_gain=write_wav(results.output_path(spec.id), self.output, p.sample_rate,
                                                 root=results.root))
            write_trace(results, results.trace_path(spec.id), self.transfer.trace)
        with self.timed("time_figures_s"):
            output_spec = log_spectrogram(audio, p.n_fft, p.hop_length)
            beats = beat_lines(p.beat_grid, self.record.content_beat_times, self.record.style_beat_times)
            self.record.update(
                **write_figures(spec, results, *self.specs, output_spec, self.transfer.trace, beats)
            )

    def measure(self, audio: torch.Tensor) -> None:
        """The objective metrics of the written audio (its gain applied), on the row's network."""
        with self.timed("time_metrics_s"):
            self.record.update(
                **output_metrics(
                    self.output * self.record.output_gain,
                    self.inputs.content,
                    self.inputs.style,
                    self.spec.params,
                    audio.device,
                    input_specs=self.specs,
                    weight=self.weight,
                )
            )

    def _output_samples(self) -> int:
        """The output is as long as the content, or a beat-segmented one as its grid input."""
        on_style_grid = self.beats is not None and self.beats.grid == "style"
        return len(self.inputs.style if on_style_grid else self.inputs.content)

    # publish ------------------------------------------------------------------------------------
    def fail(self, exc: BaseException) -> dict[str, Any]:
        """The row's ``failed`` record: the error, and whether a retry could help."""
        self.record.update(
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            error_type=type(exc).__name__,
            retryable=not isinstance(exc, DETERMINISTIC_ERRORS),
            traceback="".join(traceback.format_exception(exc, limit=8)),
        )
        return self._publish()

    def _publish(self) -> dict[str, Any]:
        record = self.record
        record.update(time_total_s=time.perf_counter() - self.t_start, finished_at=now_utc(),
                      **self.usage.leave(self.spec.id))
        data = record.to_dict()
        self.results.write_json(self.results.record_path(self.spec.id), data)
        if record.status == "ok" or not record.retryable:
            self.ckpt_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.results.progress_path(self.spec.id).unlink(missing_ok=True)  # no longer running
        release_claim(self.results, self.spec.id, self.options.submission_id)
        self.say(record.status + (f": {record.error.splitlines()[0][:300]}" if record.error else ""))
        return data
