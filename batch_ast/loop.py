"""Job stage, the loop: a job's groups of rows, one after another, in this process.

It owns what concerns a pack of rows as a whole once it runs: grouping rows that share a network
(built once per group and handed to each row), decoding the next group's audio while this one
optimises, finishing a row in the background while the next optimises, and collecting a pause
from every row before it reaches the job. One row's life (prepare, optimise, reconstruct,
publish) is ``row.py``'s; the pickled callable that calls this loop is ``job.py``'s; k processes
running it side by side are ``pool.py``'s. Importing this module imports torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import torch

from .backends import job_threads
from .batched import run_together
from .features import Network, TransferError, pick_device
from .plan import RowSpec
from .row import RowRun, load_inputs
from .runopts import DEFAULTS, Paused, RunOptions, summary
from .store import ResultsRoot


def configure_threads(share: int | None = None) -> None:
    """Use the CPUs the scheduler gave us (not the whole node's count) for torch's intra-op pool,
    else ``BATCH_AST_THREADS``, else the job's ``share`` of the machine (local workers)."""
    threads = job_threads() or share
    if threads:
        torch.set_num_threads(threads)


def _group_weights(specs: Sequence[RowSpec]) -> Callable[[Any], Any]:
    """``weights(device)``: the network of a group of rows (equal ``plan.group_key``), built once,
    when the first row that has passed its input and memory checks asks for it: a row refused by
    its ``max_memory_gb`` budget must be refused before the network is allocated."""
    return functools.cache(Network.of(specs[0].params).weights)


def run_rows(
    specs: list[RowSpec],
    results: ResultsRoot,
    should_pause: Callable[[], bool] = lambda: False,
    options: RunOptions | None = None,
    inputs: list[Future] | None = None,
    finisher: Executor | None = None,
) -> list[dict[str, Any] | Future]:
    """Run rows that share a network (``plan.group_key``) as one batched optimisation; a single
    row runs on its own in this thread. Returns their records — or, with a ``finisher`` pool, a
    future of the record for each row that reached its finishing: its Griffin-Lim runs here, on
    the device, and its files, figures, metrics and record in the pool while the caller goes on
    to the next rows. Raises ``Paused`` (after every row has saved its state, published its
    record or handed its finishing to the pool) when ``should_pause()`` interrupted any of them."""
    runs = [RowRun(s, results, options or DEFAULTS) for s in specs]
    records: list[dict[str, Any] | Future | None] = [None] * len(runs)
    weights = _group_weights(specs)
    for i, (run, row_inputs) in enumerate(zip(runs, inputs or [None] * len(runs), strict=True)):
        try:
            run.prepare(row_inputs, weights)
        except Exception as exc:  # one bad row must never stop the batch
            records[i] = run.fail(exc)
    ready = [i for i, r in enumerate(records) if r is None]

    def finish(i: int) -> None:
        records[i] = runs[i].finish(finisher)

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
        raise Paused(
            str(paused[0]),
            [runs[ready[k]] for k, exc in enumerate(errors) if isinstance(exc, Paused)],
            [r for r in records if isinstance(r, Future)],
        )
    return [r for r in records if r is not None]


def run_groups(
    groups: list[list[RowSpec]],
    results: ResultsRoot,
    should_pause: Callable[[], bool],
    options: RunOptions,
    finish_in_background: bool = False,
) -> list[dict[str, str]]:
    """Run groups of rows (``run_rows`` each) one after another in this process: one thread
    decodes the next group's audio while this one optimises and, with ``finish_in_background``,
    one thread finishes each row (files, figures, metrics, record) while the next optimises.
    Returns the rows' summaries; on a pause, waits for the rows being finished, then raises
    ``Paused``."""
    done: list[dict[str, Any] | Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as decoder, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="finish") as finisher:
        def decode(group: list[RowSpec]) -> list[Future]:
            return [decoder.submit(load_inputs, s) for s in group]

        upcoming = decode(groups[0]) if groups else []
        for k, group in enumerate(groups):
            inputs, upcoming = upcoming, decode(groups[k + 1]) if k + 1 < len(groups) else []
            try:
                done += run_rows(group, results, should_pause, options, inputs,
                                 finisher if finish_in_background else None)
            except Paused as paused:
                for future in upcoming:
                    future.cancel()
                for record in [*done, *paused.finishing]:  # a pause waits for the rows being finished
                    if isinstance(record, Future):
                        record.result()
                raise
    return [summary(r.result() if isinstance(r, Future) else r) for r in done]


def run_row(spec: RowSpec, results: ResultsRoot, should_pause: Callable[[], bool] = lambda: False,
            options: RunOptions | None = None) -> dict[str, Any]:
    """Run one row end to end; never raises except ``Paused`` (state saved for a later resume)."""
    return run_rows([spec], results, should_pause, options)[0]


def run_in_this_process(
    groups: list[list[RowSpec]],
    results: ResultsRoot,
    should_pause: Callable[[], bool],
    options: RunOptions,
    finish_in_background: bool | None,
    threads: int | None,
) -> list[dict[str, str]]:
    """A job's groups run here, one process: torch gets the job's threads (``configure_threads``)
    and rows finish in the background where ``finishing_overlap`` says. What a single-process
    job does, and a job whose row processes would not start."""
    configure_threads(threads)
    background = finishing_overlap(finish_in_background, [s for g in groups for s in g])
    return run_groups(groups, results, should_pause, options, background)


def finishing_overlap(setting: bool | None, specs: list[RowSpec]) -> bool:
    """Whether a job finishes its rows in the background: as asked (None: where its rows run on a
    GPU, which would otherwise wait on that CPU work) — but never when a row computes in TF32:
    that switch is process-wide, and the finishing thread's metrics set IEEE float32 while the
    next row optimises."""
    if not specs or any(s.params.precision == "tf32" for s in specs):
        return False
    return runs_on_gpu(specs[0]) if setting is None else setting


def runs_on_gpu(spec: RowSpec) -> bool:
    try:
        return pick_device(spec.params.device).type == "cuda"
    except TransferError:
        return False
