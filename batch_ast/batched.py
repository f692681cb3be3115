"""Transfer stage, batched: rows that share a network are optimised together, one conv for all.

Each row keeps its own optimiser, scheduler and stopping rule, so its result does not depend on
which rows it was batched with (equal to running it alone up to floating-point rounding); only the
expensive part, the conv features and the Grams, runs as one batched conv over every row waiting
for an evaluation. That is what keeps a GPU busy when one row is too small to fill it.

torch.optim.LBFGS calls its closure a varying number of times per iteration (line search), so the
rows cannot simply be stepped in lockstep. Each row runs in its own thread instead and the closures
meet at a rendezvous: when every row still optimising has asked for an evaluation, the last one to
ask evaluates them all at once. No library offers independent optimisers over a shared batched
forward pass, hence this is written by hand.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .features import conv_features, use_precision
from .transfer import LossTensors, StyleTransfer


def batched_features(
    xs: Sequence[torch.Tensor], weight: torch.Tensor, activation: str, precision: str = "float32"
) -> torch.Tensor:
    """activation(conv1d) of several spectrograms (bins, T_i) in one call: (B, filters, max T_i').

    Shorter inputs are zero-padded at the end; with VALID convolution the first T_i - k + 1 output
    frames of row i see only its own frames, so slicing them off gives exactly its features."""
    longest = max(x.shape[-1] for x in xs)
    stacked = torch.stack([F.pad(x, (0, longest - x.shape[-1])) for x in xs])
    return conv_features(stacked, weight, activation, precision)


def evaluate_together(transfers: Sequence[StyleTransfer]) -> list[LossTensors]:
    """Loss terms of every transfer at its current ``x``, with each ``x.grad`` set, from one
    batched conv. The rows' losses are independent, so the gradient of their sum is each row's own."""
    first = transfers[0]
    kernel = first.weight.shape[-1]
    frames = [t.x.shape[-1] - kernel + 1 for t in transfers]
    use_precision(first.params.precision, first.device)
    feats = batched_features(
        [t.x for t in transfers], first.weight, first.params.activation, first.params.precision
    )
    # unbind, not feats[i]: indexing's backward writes each row's gradient into a zero tensor of the
    # whole batch's size (B² traffic; measured 20 % of a 4-row evaluation), unbind's stacks them once.
    # Each row's style loss then runs in its own form (its Grams or its T×T products).
    rows = zip(transfers, feats.unbind(0), frames, strict=True)
    terms = [t.loss_terms_from(f[:, :n]) for t, f, n in rows]
    torch.stack([total for total, _, _ in terms]).sum().backward()
    return [(total.detach(), c.detach(), s.detach()) for total, c, s in terms]


@dataclass
class _Request:
    transfer: StyleTransfer
    result: LossTensors | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class Rendezvous:
    """Where the rows' closures meet. Row threads only post requests and wait; the thread that
    ``serve``s runs every evaluation, so all heavy torch work stays on one thread with the full
    intra-op thread pool (several OpenMP teams spinning on the same cores made batching slower
    than no batching on 2 CPU cores: measured, benchmarks/RESULTS.md)."""

    active: int = 0
    evaluations: int = 0  # batched evaluations run (for the benchmark and tests)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _pending: list[_Request] = field(default_factory=list)
    _left: list[int] = field(default_factory=list)
    _aborted: BaseException | None = None

    def join(self) -> None:
        with self._cond:
            self.active += 1

    def leave(self, row: int) -> None:
        """Row ``row`` stopped optimising (finished, paused or failed): it no longer holds the
        others up."""
        with self._cond:
            self.active -= 1
            self._left.append(row)
            self._cond.notify_all()

    def evaluate(self, transfer: StyleTransfer) -> LossTensors:
        """The ``StyleTransfer.evaluate`` hook of a batched row: blocks until its turn comes."""
        request = _Request(transfer)
        with self._cond:
            if self._aborted is not None:
                raise self._aborted
            self._pending.append(request)
            self._cond.notify_all()
            while not request.done:
                self._cond.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def serve(self, on_leave: Callable[[int], None]) -> None:
        """Run the batched evaluations until every row has left; ``on_leave(i)`` runs here too,
        as soon as row i has left (its phase reconstruction and files)."""
        while True:
            with self._cond:
                while not (self._left or self.active == 0 or len(self._pending) >= self.active > 0):
                    self._cond.wait(timeout=0.5)  # timed: keeps a main thread responsive to signals
                left, self._left = self._left, []
                requests = []
                if not left and self._pending and len(self._pending) >= self.active:
                    requests, self._pending = self._pending, []
                if not left and not requests and self.active == 0:
                    return
            for row in left:
                on_leave(row)
            if requests:
                self._evaluate(requests)

    def abort(self, exc: BaseException) -> None:
        """The serving thread was interrupted: release every waiting row with ``exc``."""
        with self._cond:
            self._aborted = exc
            for request in self._pending:
                request.error, request.done = exc, True
            self._pending = []
            self._cond.notify_all()

    def _evaluate(self, requests: list[_Request]) -> None:
        self.evaluations += 1
        try:
            results = evaluate_together([r.transfer for r in requests])
            for request, result in zip(requests, results, strict=True):
                request.result = result
        except Exception:  # noqa: BLE001 - e.g. out of memory: retry alone so the error lands on its row
            for request in requests:
                request.transfer.optimizer.zero_grad(set_to_none=True)
                try:
                    request.result = evaluate_together([request.transfer])[0]
                except Exception as exc:  # noqa: BLE001 - handed to the row's own thread
                    request.error = exc
        with self._cond:
            for request in requests:
                request.done = True
            self._cond.notify_all()


def run_together(
    transfers: Sequence[StyleTransfer],
    optimize: Callable[[int], None],
    then: Callable[[int], None],
) -> list[BaseException | None]:
    """Run ``optimize(i)`` (row i's iteration loop) for every row in its own thread with the rows'
    evaluations batched on the calling thread, then ``then(i)`` (its phase reconstruction and
    files, also on the calling thread) as soon as row i has left the batch, so a row that stops
    early does not wait for the others. Returns each row's exception from ``optimize`` (None when
    it ended normally; ``then`` runs only for those and must handle its own)."""
    rendezvous = Rendezvous()
    errors: list[BaseException | None] = [None] * len(transfers)
    threads_here = torch.get_num_threads()
    for transfer in transfers:
        transfer.evaluate = rendezvous.evaluate
        rendezvous.join()

    def worker(i: int) -> None:
        # The row's own work (optimiser arithmetic) is light: one thread, no competing OpenMP team.
        torch.set_num_threads(1)
        try:
            optimize(i)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller, row by row
            errors[i] = exc
        finally:
            rendezvous.leave(i)

    threads = [threading.Thread(target=worker, args=(i,), name=f"row-{i}") for i in range(len(transfers))]
    for thread in threads:
        thread.start()
    try:
        rendezvous.serve(lambda i: then(i) if errors[i] is None else None)
    except BaseException as exc:  # e.g. KeyboardInterrupt: do not leave the rows waiting forever
        rendezvous.abort(exc)
        raise
    finally:
        for thread in threads:
            thread.join()
        torch.set_num_threads(threads_here)
    return errors
