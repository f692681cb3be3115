"""Transfer stage: the optimisation — a spectrogram whose features match the content's and whose
Grams match the style's, iterated by L-BFGS (torch's, with its strong-Wolfe line search) or Adam(W).

The features are features.py's, the losses losses.py's; ``StyleTransfer`` owns the optimisation
state so a job can stop it between iterations, save it and resume it later, and ``optimise`` is
the one loop that iterates it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .features import Network, TransferError, features, match_length, use_precision
from .losses import StyleTargets, content_loss, style_form_for, style_terms

if TYPE_CHECKING:
    from .config import Params


# Loss terms (total, content, style) as tensors.
LossTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
# One iteration of a loss trace: (iteration, total, content, style, evaluations in the iteration).
TraceRow = tuple[int, float, float, float, int]

def estimate_memory_bytes(n_bins: int, content_frames: int, style_frames: int, params: Params,
                          with_metrics: bool = True) -> int:
    """Rough peak memory of one row, to refuse inputs that cannot fit before allocating.

    The Gram matrices do not grow with length; the conv activations and L-BFGS history do. After
    the optimisation, the row's metrics (``metrics.output_metrics``) run a held-out network of the
    same size while the transfer is still held: its weights and activations come on top.

    Parameters
    ----------
    n_bins : int
        Frequency bins (n_fft // 2 + 1).
    content_frames, style_frames : int
        STFT frames of the inputs (``stft_frames``).
    params : Params
        The row's settings (filters, kernel, optimiser, L-BFGS history).
    with_metrics : bool
        The whole row, its metrics included (False: one step of the optimisation alone).

    Returns
    -------
    int
        Bytes of float32 data above the process's own size (compared with ``max_memory_gb``;
        the optimisation measured against one step in the bench's ``memory`` section, whole rows
        against their ``peak_rss_bytes`` in its ``cost`` section: benchmarks/RESULTS.md).
    """
    n_filters, lbfgs = params.n_filters, params.optimizer == "lbfgs"
    spec = n_bins * content_frames
    activations = n_filters * max(content_frames, style_frames)
    # The weights, plus the reordered copy the CPU conv backend keeps (measured: benchmarks/RESULTS.md).
    weights = 2 * n_filters * n_bins * params.kernel_size
    fixed = 3 * n_filters * n_filters + weights
    if not with_metrics:  # one optimisation step, measured against the bench's "memory" section
        history = 2 * params.lbfgs_history * spec if lbfgs else 2 * spec
        return 4 * (6 * spec + 5 * activations + history + fixed)
    # A whole row peaks while its metrics run (features of three signals through the row's network and
    # a held-out one, the transfer still held) after Griffin-Lim and the figures (buffers the size of
    # the spectrogram). Fitted to whole rows' peak_rss_bytes above their process (10 rows: 1024 to
    # 4096 filters, 5 to 30 s, L-BFGS and Adam; benchmarks/RESULTS.md): this is 0.90x to 1.16x of them.
    history = (2 * params.lbfgs_history + 16) * spec if lbfgs else 2 * spec
    return 4 * ((6 + 53) * spec + 7 * activations + history + fixed + 11_000_000)


@dataclass(frozen=True)
class LossTerms:
    total: float
    content: float
    style: float


def evaluate_alone(transfer: StyleTransfer) -> LossTensors:
    """Loss terms at ``transfer.x`` with the gradient of the total left in ``transfer.x.grad``."""
    total, c, s = transfer.loss_terms(transfer.x)
    total.backward()
    return total.detach(), c.detach(), s.detach()


class LineSearchLBFGS(torch.optim.LBFGS):
    """torch's L-BFGS (strong-Wolfe line search), telling after each ``step`` what it did without
    comparing tensors: whether the iterate moved, and whether the line search's last evaluation
    was at the point it accepted (then the next step's first evaluation can be answered from it).

    Why this is exact: the line search evaluates at ``x0 + t_i d`` (``_directional_evaluate``)
    and the step ends at ``x0 + t d`` computed the same way, where ``t`` is one of the ``t_i`` it
    evaluated — the very object — or the start point's ``0``; so "the last ``t_i`` *is* ``t``"
    means bitwise the same point, and ``t == 0`` (an int, never evaluated) or no line search at
    all means the iterate did not move. tests/test_math.py checks this against whole-tensor
    comparisons of the same runs."""

    def step(self, closure):  # type: ignore[override]
        self._searched: tuple[torch.Tensor, Any] | None = None
        return super().step(closure)

    def _directional_evaluate(self, closure, x, t, d):
        self._searched = (d, t, x)  # x: the line search's copy of its start point
        return super()._directional_evaluate(closure, x, t, d)

    def outcome(self, exact: bool = False) -> tuple[bool, bool]:
        """(moved, last evaluation is at the new point) for the step just taken. With ``exact``
        (the caller saw the last evaluation's total equal the start's to the bit), the iterate is
        compared with the start and the last evaluated point: a stalled search whose every step
        ``t*d`` falls below the ulp of ``x`` leaves ``x`` where it was although ``t`` is an
        evaluated tensor (seen on an AMD EPYC from iteration 84 of a 300-iteration row). Only then:
        two comparisons of the spectrogram, in an iteration that made no progress."""
        searched = getattr(self, "_searched", None)
        if searched is None:  # returned before its line search: x unchanged, last evaluated there
            return False, True
        state = self.state[self._params[0]]
        t = state["t"]
        moved = isinstance(t, torch.Tensor) or t != 0  # a tensor t is an evaluated point, never x0
        at_last = searched[0] is state["d"] and searched[1] is t
        if exact:
            d, t_last, (start,) = searched
            now = self._params[0].detach()
            last = start.clone().add_(d.view_as(start), alpha=t_last)  # as _add_grad computes it
            moved = bool((now != start).any())
            at_last = bool((now == last).all())
        return moved, at_last


class StyleTransfer:
    """Optimise a log-spectrogram whose features match the content and whose Grams match the style.

    Targets (content features, style Gram) are computed once. The spectrogram starts from small
    seeded noise, as in the reference; ``step()`` runs one optimiser iteration and returns False
    when the run is finished (iteration budget, early stopping, or divergence).

    ``reuse_evaluations`` (a class attribute, for a subclass to turn off) lets a step start from
    the evaluation its line search ended on instead of evaluating that point again; the benchmark's
    same-run reference (the algorithm before issue #12) turns it off.
    """

    reuse_evaluations: ClassVar[bool] = True

    def __init__(
        self,
        content_spec: torch.Tensor,
        style_spec: torch.Tensor,
        params: Params,
        device: torch.device,
        weight: torch.Tensor | None = None,
    ):
        self.params = params
        self.device = device
        kernel = params.kernel_size
        for what, spec in (("content", content_spec), ("style", style_spec)):
            if spec.shape[-1] < kernel:
                raise TransferError(
                    f"{what} is {spec.shape[-1]} STFT frames long, shorter than kernel_size "
                    f"{kernel}: use longer audio or a smaller kernel_size/hop_length"
                )
        # The job builds the network once per group of rows and passes its ``weight`` (rows
        # optimised together share one copy, see batched.py); alone, a transfer draws its own.
        self.weight = weight if weight is not None else Network.of(params).weights(device)
        use_precision(params.precision, device)
        with torch.no_grad():
            content_spec, style_spec = content_spec.to(device), style_spec.to(device)
            act, prec = params.activation, params.precision
            content_feats = features(content_spec, self.weight, act, prec)
            style_feats = features(style_spec, self.weight, act, prec)
            self.content_target = content_feats
            # Tomczak et al.'s general loss also matches the *style* input's features (beta, length-
            # matched to the output) and the *content* input's Gram (gamma); off by default.
            self.content_target_style = (
                features(match_length(style_spec, content_spec.shape[-1]), self.weight, act, prec)
                if params.content_weight_style > 0 else None
            )
            # The Gram targets: the style input's (delta), then the content input's (gamma).
            self._set_style_targets(
                [style_feats] + ([content_feats] if params.style_weight_content > 0 else [])
            )
        self.term_scales = self._term_scales()
        generator = torch.Generator().manual_seed(params.seed + 1)
        init = torch.randn(content_spec.shape, generator=generator) * 1e-3
        self.x = init.to(device).requires_grad_(True)
        self.optimizer = self._make_optimizer()
        self.scheduler = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode="min",
                factor=params.lr_factor,
                patience=params.lr_patience,
                threshold=params.min_delta,
            )
            if params.optimizer != "lbfgs"
            else None
        )
        self.iteration = 0
        # (iteration, total, content, style, evaluations run in the iteration); the content and
        # style of the latest iterations wait on the device in _unread until the trace is read.
        self._trace: list[TraceRow] = []
        self._unread: list[tuple[int, float, torch.Tensor, int]] = []
        self.last_total = math.nan  # the latest iteration's total loss, on the host
        self.best_loss = math.inf
        self.best_x = self.x.detach().clone()
        self.stale = 0  # iterations without a relative improvement of min_delta
        self.stop_reason = ""
        self.evaluations = 0  # loss+gradient evaluations run (the cost of the row)
        # The last evaluation (gradient, terms, total on the host), and whether it was at the point
        # self.x now holds: torch's L-BFGS asks again, at the start of every step(), for the point
        # its line search accepted; answering from here saves ~45 % of the evaluations.
        self._last: tuple[torch.Tensor, LossTensors, float] | None = None
        self._last_at_x = False
        # How the closure gets the loss and gradient at self.x: alone by default, or through a
        # batched evaluation shared with other rows (batched.py); either way self.x.grad is set.
        self.evaluate: Callable[[StyleTransfer], LossTensors] = evaluate_alone

    def _make_optimizer(self) -> torch.optim.Optimizer:
        p = self.params
        if p.optimizer == "lbfgs":
            # One L-BFGS iteration per step() (max_iter=1) keeps iterations observable, stoppable and
            # checkpointable; the curvature history lives in the optimizer state across steps.
            # The strong-Wolfe line search is what makes torch's L-BFGS robust on this loss.
            return LineSearchLBFGS(
                [self.x],
                lr=p.lr,
                max_iter=1,
                max_eval=25,
                history_size=p.lbfgs_history,
                tolerance_grad=1e-12,
                tolerance_change=1e-15,
                line_search_fn="strong_wolfe",
            )
        if p.optimizer == "adamw":
            return torch.optim.AdamW([self.x], lr=p.lr, weight_decay=p.weight_decay)
        return torch.optim.Adam([self.x], lr=p.lr)

    def loss_terms(self, x: torch.Tensor) -> LossTensors:
        """(total, content, style) at spectrogram ``x``."""
        use_precision(self.params.precision, self.device)
        return self.loss_terms_from(features(x, self.weight, self.params.activation, self.params.precision))

    def _set_style_targets(self, gram_targets: list[torch.Tensor]) -> None:
        """The Gram targets' statistics, in the exact form that is cheaper for their sizes."""
        self.style_form = style_form_for(
            self.weight.shape[0], self.content_target.shape[-1], [f.shape[-1] for f in gram_targets]
        )
        self.style_targets = StyleTargets.of(gram_targets, self.style_form)

    def _content_term(self, feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return content_loss(feats, target)

    def _style_terms(self, feats: torch.Tensor) -> torch.Tensor:
        """‖G(feats) − G_k‖² for each Gram target k, shape (K,)."""
        return style_terms(feats, self.style_targets)

    def _terms(self, feats: torch.Tensor) -> list[torch.Tensor | None]:
        """Unweighted terms in ``_weights`` order: c(content input), s(style input), c(style input)
        (None when unused), s(content input) (absent when unused)."""
        styles = self._style_terms(feats)
        c_b = (
            self._content_term(feats, self.content_target_style)
            if self.content_target_style is not None
            else None
        )
        return [self._content_term(feats, self.content_target), styles[0], c_b, *styles[1:]]

    def _weights(self) -> tuple[float, float, float, float]:
        p = self.params
        return p.content_weight, p.style_weight, p.content_weight_style, p.style_weight_content

    def _term_scales(self) -> list[float]:
        """What each term (``_weights`` order) is multiplied by before it is weighted: 1
        (``loss_scale: absolute``), or (``relative``) V_max / V_k, V_k being the term's value at a
        silent output (its target's own squared norm) and V_max the largest V_k of the terms in use.
        Every term is then a relative squared error times one common constant, so a weight means the
        same whatever the network width, the segment lengths or the inputs' loudness, while the loss
        keeps the magnitude of its largest term (torch's L-BFGS sizes its first step from the
        gradient's magnitude)."""
        if self.params.loss_scale == "absolute":
            return [1.0] * 4
        with torch.no_grad():
            values = [
                float(t) if t is not None else 0.0 for t in self._terms(torch.zeros_like(self.content_target))
            ]
        in_use = [v for v, w in zip(values, self._weights(), strict=False) if w > 0 and v > 0]
        reference = max(in_use, default=1.0)
        return [reference / v if v > 0 else 1.0 for v in values]  # a silent target stays unscaled

    def loss_terms_from(self, feats: torch.Tensor) -> LossTensors:
        """(total, content, style) from the output's features: total = alpha c(content) +
        delta s(style) + beta c(style input) + gamma s(content input), each term multiplied by its
        ``term_scales`` entry (1 on the absolute scale); the content and style terms returned are
        the unweighted, unscaled sums of the terms in use."""
        terms = self._terms(feats)
        total = sum(
            w * scale * t
            for w, scale, t in zip(self._weights(), self.term_scales, terms, strict=False)
            if t is not None
        )
        c, s, c_b, *s_a = terms
        return total, (c if c_b is None else c + c_b), (s if not s_a else s + s_a[0])

    def _evaluate_cached(self, at_start: bool) -> tuple[LossTensors, float]:
        """(loss terms, total on the host) at ``self.x`` with ``self.x.grad`` set: from the last
        evaluation when it was at this very point (``at_start`` of a step that follows an
        evaluation there), else evaluated (``self.evaluate``) and remembered."""
        if self.reuse_evaluations and at_start and self._last_at_x and self._last is not None:
            grad, terms, total = self._last
            self.x.grad = grad.clone()
            return terms, total
        terms = self.evaluate(self)
        total = terms[0].item()  # the one read-back an evaluation needs: the line search branches on it
        self.evaluations += 1
        self._last_at_x = False  # a line-search point, until the step accepts it (see step)
        if isinstance(self.optimizer, LineSearchLBFGS):  # only L-BFGS comes back to a point
            self._last = (self.x.grad.detach().clone(), terms, total)
        return terms, total

    @property
    def finished(self) -> bool:
        return bool(self.stop_reason)

    @property
    def trace(self) -> list[TraceRow]:
        """The loss trace so far; reading it copies the waiting content/style values to the host
        (one transfer for all of them, not two syncs per iteration)."""
        if self._unread:
            values = torch.stack([cs for _, _, cs, _ in self._unread]).tolist()
            self._trace.extend(
                (i, total, c, s, n) for (i, total, _, n), (c, s) in zip(self._unread, values, strict=True)
            )
            self._unread = []
        return self._trace

    def step(self) -> bool:
        """Run one iteration; record the loss at the iterate it started from. False when finished.

        Host syncs per iteration: the total of each evaluation (torch's line search, the
        scheduler and the stopping rule decide on it) and nothing else — whether the step moved
        and whether its last evaluation is the new point are told by the line search's own
        scalars (``LineSearchLBFGS``), not by comparing tensors."""
        if self.finished:
            return False
        first: list[tuple[float, LossTensors]] = []
        evaluations_before = self.evaluations

        def closure() -> float:
            self.optimizer.zero_grad(set_to_none=True)
            terms, total = self._evaluate_cached(at_start=not first)
            if not first:
                first.append((total, terms))
            return total

        if isinstance(self.optimizer, LineSearchLBFGS):
            self.optimizer.step(closure)
            # a last total bitwise the start's: maybe a stalled search (see LineSearchLBFGS.outcome)
            stalled = self._last is not None and self._last[2] == first[0][0]
            moved, self._last_at_x = self.optimizer.outcome(exact=stalled)
            if not moved:
                # The line search found no step along the quasi-Newton direction (a stale curvature
                # history on this quartic loss): restart L-BFGS from steepest descent, as scipy's
                # L-BFGS-B does, instead of repeating the same failed step until early stopping.
                self.optimizer.state.clear()
        else:
            closure()
            self.optimizer.step()
        total, (_, c, s) = first[0]
        self._unread.append(
            (self.iteration, total, torch.stack([c, s]), self.evaluations - evaluations_before)
        )
        if len(self._unread) >= 256:
            _ = self.trace  # bound the tensors waiting on the device
        return self._stopping_rule(total)

    def _stopping_rule(self, total: float) -> bool:
        """Count the iteration whose start loss was ``total``: divergence, the scheduler, the best
        iterate, early stopping and the iteration budget. False when the run is finished."""
        self.last_total = total
        self.iteration += 1
        if not math.isfinite(total):
            self.stop_reason = "diverged"
            return False
        if self.scheduler is not None:
            self.scheduler.step(total)
        if total < self.best_loss * (1 - self.params.min_delta) or self.best_loss == math.inf:
            self.stale = 0
        else:
            self.stale += 1
        if total < self.best_loss:
            self.best_loss = total
            self.best_x = self.x.detach().clone()
        if total == 0.0:
            self.stop_reason = "converged"
        elif self.stale >= self.params.patience:
            self.stop_reason = "early_stopping"
        elif self.iteration >= self.params.iterations:
            self.stop_reason = "max_iterations"
        return not self.finished

    def result(self) -> tuple[torch.Tensor, LossTerms]:
        """The best spectrogram seen (the final one may be worse after divergence) and its losses."""
        with torch.no_grad():
            x = self.best_x
            if torch.isfinite(self.x).all():
                total_now = self.loss_terms(self.x)[0].item()
                if math.isfinite(total_now) and total_now <= self.best_loss:
                    x = self.x.detach()
            total, c, s = self.loss_terms(x)
        return x.clone(), LossTerms(total.item(), c.item(), s.item())

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the spectrogram, optimiser/scheduler state, trace, counters."""
        return {
            "x": self.x.detach().cpu(),
            "best_x": self.best_x.cpu(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "iteration": self.iteration,
            "trace": list(self.trace),
            "best_loss": self.best_loss,
            "stale": self.stale,
            "stop_reason": self.stop_reason,
            "evaluations": self.evaluations,
            # the last evaluation, so a resumed row does not evaluate its point again
            "last": None
            if self._last is None or not self._last_at_x
            else {
                "x": self.x.detach().cpu(),
                "grad": self._last[0].cpu(),
                "terms": [t.item() for t in self._last[1]],
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.x.copy_(state["x"].to(self.device))
        self.best_x = state["best_x"].to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.iteration = state["iteration"]
        # checkpoints written before evaluations were counted: their iterations' counts are unknown
        self._trace = [tuple(row) if len(row) == 5 else (*row, None) for row in state["trace"]]
        self._unread = []
        self.last_total = self._trace[-1][1] if self._trace else math.nan
        self.best_loss = state["best_loss"]
        self.stale = state["stale"]
        self.stop_reason = state["stop_reason"]
        self.evaluations = state.get("evaluations", 0)
        last = state.get("last")
        self._last, self._last_at_x = None, False
        if last is not None:
            terms = tuple(torch.tensor(v, device=self.device) for v in last["terms"])
            self._last = (last["grad"].to(self.device), terms, float(last["terms"][0]))
            # once per resume, not per iteration: is the saved evaluation at the resumed point?
            self._last_at_x = torch.equal(last["x"].to(self.device), self.x.detach())


def optimise(
    transfer: StyleTransfer,
    should_pause: Callable[[], bool] = lambda: False,
    after_step: Callable[[StyleTransfer], None] | None = None,
) -> bool:
    """The optimisation loop (the only one: jobs, the bench and the tests all iterate through it).
    Iterates until the transfer is finished (True) or ``should_pause()``, asked before every
    iteration, says stop (False); ``after_step`` runs after each iteration (checkpoints, progress)."""
    while not transfer.finished:
        if should_pause():
            return False
        transfer.step()
        if after_step is not None:
            after_step(transfer)
    return True
