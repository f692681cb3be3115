"""Transfer stage: the spectrogram, the random-weight conv features, the losses and the optimisation.

The math lives in small pure functions (``log_spectrogram``, ``random_filters``, ``features``,
``gram``, ``content_loss``, ``style_loss``); ``StyleTransfer`` owns the optimisation state so a job
can stop it between iterations, save it and resume it later.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .config import Params


class TransferError(ValueError):
    """Inputs that cannot be transferred with the given settings (e.g. shorter than the kernel)."""


def pick_device(name: str) -> torch.device:
    """Resolve the ``device`` hyperparameter: ``auto`` takes CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TransferError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def stft_frames(n_samples: int, hop_length: int) -> int:
    """Frames of a centred STFT (``torch.stft(center=True)``): ``1 + n_samples // hop_length``."""
    return 1 + n_samples // hop_length


def check_length(n_samples: int, params: Params, what: str) -> None:
    """Refuse audio too short for the STFT (reflect padding needs > n_fft/2 samples) or the kernel."""
    n_fft, kernel = params.n_fft, params.kernel_size
    frames = stft_frames(n_samples, params.hop_length)
    if n_samples <= n_fft // 2 or frames < kernel:
        raise TransferError(
            f"{what} is {n_samples} samples ({frames} STFT frames) long, shorter than kernel_size "
            f"{kernel} frames or n_fft/2: use longer audio or a smaller n_fft/kernel_size/hop_length"
        )


def log_spectrogram(audio: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """The log-magnitude spectrogram every loss works on.

    Parameters
    ----------
    audio : torch.Tensor, shape (samples,)
        Mono signal, float, on the device to compute on.
    n_fft : int
        FFT size in samples (Hann window of the same length).
    hop_length : int
        Hop in samples; frames are centred (reflect padding of n_fft // 2).

    Returns
    -------
    torch.Tensor, shape (n_fft // 2 + 1, 1 + samples // hop_length)
        ``log1p(|STFT(audio)|)``, on ``audio``'s device.
    """
    window = torch.hann_window(n_fft, device=audio.device, dtype=audio.dtype)
    spec = torch.stft(
        audio, n_fft, hop_length=hop_length, window=window, center=True, return_complex=True
    )
    return torch.log1p(spec.abs())


def random_filters(n_bins: int, n_filters: int, kernel_size: int, seed: int) -> torch.Tensor:
    """The random conv network's weights, scaled as Ulyanov's reference.

    Parameters
    ----------
    n_bins : int
        Input channels: the spectrogram's frequency bins (n_fft // 2 + 1).
    n_filters : int
        Output channels (feature maps).
    kernel_size : int
        Width of each filter in STFT frames.
    seed : int
        Seeds the draw; drawn on the CPU so the same seed gives the same network on every device.

    Returns
    -------
    torch.Tensor, shape (n_filters, n_bins, kernel_size), float32, on the CPU
        Normal with std ``sqrt(2) * sqrt(2 / ((n_bins + n_filters) * kernel_size))``.
    """
    generator = torch.Generator().manual_seed(seed)
    std = math.sqrt(2.0) * math.sqrt(2.0 / ((n_bins + n_filters) * kernel_size))
    return torch.randn(n_filters, n_bins, kernel_size, generator=generator) * std


# The held-out network of the metrics: same shape, weights drawn from seed + this.
HELDOUT_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Network:
    """The random conv network a row's features come from: everything that decides its weights
    and what it computes, and nothing else. Rows with equal ``key()`` can share one copy of the
    weights (and one batched conv, see batched.py); a job builds it once per group of rows."""

    n_bins: int
    n_filters: int
    kernel_size: int
    seed: int
    activation: str
    precision: str

    @classmethod
    def of(cls, params: Params) -> Network:
        """The network a row's hyperparameters describe."""
        return cls(params.n_bins, params.n_filters, params.kernel_size, params.seed, params.activation,
                   params.precision)

    def key(self) -> tuple:
        """Hashable identity: equal keys, equal weights and features."""
        return (self.n_bins, self.n_filters, self.kernel_size, self.seed, self.activation, self.precision)

    def heldout(self) -> Network:
        """The same architecture with other weights, for metrics the optimisation never saw."""
        return replace(self, seed=self.seed + HELDOUT_SEED_OFFSET)

    def weights(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The conv weights, shape (n_filters, n_bins, kernel_size), float32 on ``device``; drawn
        on the CPU (``random_filters``), so equal on every device."""
        return random_filters(self.n_bins, self.n_filters, self.kernel_size, self.seed).to(device)


# Loss terms (total, content, style) as tensors.
LossTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
# One iteration of a loss trace: (iteration, total, content, style, evaluations in the iteration).
TraceRow = tuple[int, float, float, float, int]

ACTIVATIONS = {"relu": F.relu, "selu": F.selu}


def _set_cuda_tf32(enabled: bool) -> None:
    mode = "tf32" if enabled else "ieee"
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9: per-backend fp32_precision
        torch.backends.cudnn.conv.fp32_precision = mode
        torch.backends.cuda.matmul.fp32_precision = mode
    else:
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled


def use_precision(precision: str, device: torch.device) -> None:
    """Set the float32 arithmetic of convolutions and matmuls (the ``precision`` hyperparameter)
    before computing features; set per evaluation because rows in one job may differ.

    float32: IEEE float32 (on CUDA this must be asked for: cuDNN convolutions default to TF32);
    tf32: TF32 tensor cores for conv and matmul on CUDA, the same as float32 on the CPU;
    bf16: the conv in bfloat16 (see ``conv_features``), everything else IEEE float32.
    The accuracy each costs is measured by ``python -m batch_ast.bench --only precision``."""
    if device.type == "cuda":
        _set_cuda_tf32(precision == "tf32")


def conv_features(
    spec: torch.Tensor, weight: torch.Tensor, activation: str, precision: str = "float32"
) -> torch.Tensor:
    """Features of a batch of spectrograms: ``activation(conv1d(spec, weight))``.

    Parameters
    ----------
    spec : torch.Tensor, shape (batch, n_bins, frames)
        Log spectrograms.
    weight : torch.Tensor, shape (n_filters, n_bins, kernel_size)
        The network (``Network.weights``), on ``spec``'s device.
    activation : {"relu", "selu"}
    precision : {"float32", "tf32", "bf16"}
        bf16 runs only the conv under autocast: the Gram and the losses stay float32 (a bfloat16
        Gram made L-BFGS stall far above the float32 loss: measured, benchmarks/RESULTS.md).

    Returns
    -------
    torch.Tensor, shape (batch, n_filters, frames - kernel_size + 1), float32
        VALID convolution over time, no bias.
    """
    if precision == "bf16":
        with torch.autocast(spec.device.type, dtype=torch.bfloat16):
            out = F.conv1d(spec, weight)
        return ACTIVATIONS[activation](out.float())
    return ACTIVATIONS[activation](F.conv1d(spec, weight))


def features(
    spec: torch.Tensor, weight: torch.Tensor, activation: str = "relu", precision: str = "float32"
) -> torch.Tensor:
    """Features of one spectrogram: ``conv_features`` without the batch axis.

    Parameters
    ----------
    spec : torch.Tensor, shape (n_bins, frames)
    weight : torch.Tensor, shape (n_filters, n_bins, kernel_size)
    activation : {"relu", "selu"}
        ReLU is Ulyanov's choice, SELU the student's and Tomczak et al.'s.
    precision : {"float32", "tf32", "bf16"}

    Returns
    -------
    torch.Tensor, shape (n_filters, frames - kernel_size + 1)
    """
    return conv_features(spec.unsqueeze(0), weight, activation, precision).squeeze(0)


def match_length(spec: torch.Tensor, frames: int) -> torch.Tensor:
    """Stretch or squeeze a spectrogram in time by linear interpolation.

    Parameters
    ----------
    spec : torch.Tensor, shape (n_bins, T)
    frames : int
        Target length.

    Returns
    -------
    torch.Tensor, shape (n_bins, frames)
        ``spec`` itself when it already has ``frames`` frames.
    """
    if spec.shape[-1] == frames:
        return spec
    return F.interpolate(spec.unsqueeze(0), size=frames, mode="linear", align_corners=False).squeeze(0)


def gram(feats: torch.Tensor) -> torch.Tensor:
    """Gram matrix of features: what the style loss matches.

    Parameters
    ----------
    feats : torch.Tensor, shape (n_filters, T)

    Returns
    -------
    torch.Tensor, shape (n_filters, n_filters)
        ``F Fᵀ / T``: normalised by frames, so it does not grow with the input's length.
    """
    return feats @ feats.T / feats.shape[-1]


def content_loss(feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Content loss: squared feature distance per frame.

    Parameters
    ----------
    feats, target : torch.Tensor, shape (n_filters, T)
        The output's and the content's features.

    Returns
    -------
    torch.Tensor, scalar
        ``sum((F - Fc)²) / T``, so a weight means the same at any length (Ulyanov's reference uses
        the plain sum; at its 430 frames, ALPHA=1e-2 equals 4.3 here).
    """
    return (feats - target).pow(2).sum() / feats.shape[-1]


def style_loss(gram_matrix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Style loss by its definition (the optimisation computes the same with ``style_terms``).

    Parameters
    ----------
    gram_matrix, target : torch.Tensor, shape (n_filters, n_filters)
        The output's and the style's Gram matrices (``gram``).

    Returns
    -------
    torch.Tensor, scalar
        ``sum((G - Gs)²)``, the squared Frobenius distance, as in Ulyanov's reference.
    """
    return (gram_matrix - target).pow(2).sum()


# The style loss in two exact forms (written by hand: autograd of the definition runs two C×C×T
# matmuls in the backward pass where one suffices, and no library has the T×T form).
#
# filters form: G = F Fᵀ / T (C×C), term_k = ‖G − G_k‖², dterm_k/dF = 4 (G − G_k) F / T.
#   Work 2C²T forward + 2C²T backward.
# frames form: ‖G − G_k‖² = ‖FᵀF‖²/T² − 2‖F_kᵀF‖²/(T·T_k) + ‖G_k‖², never forming a C×C matrix.
#   Work 2CT(T + ΣT_k) forward + the same backward: cheaper when frames ≪ filters. The three terms
#   nearly cancel near a good solution, so the T×T products and their norms are taken in float64
#   (rounding relative to ‖G‖² instead of to the loss); the gradient,
#   4 [F (FᵀF)/T − F_k (F_kᵀF)/T_k] / T, cancels only linearly, like the filters form, and stays float32.
STYLE_FORMS = ("filters", "frames")
FLOAT64_COST = 2.5  # float64 matmul time over float32 on the CPUs measured (bench section "gram")


def style_form_for(n_filters: int, frames: int, target_frames: Sequence[int]) -> str:
    """The cheaper exact form for these sizes, by arithmetic: the frames form pays float64 for its
    forward products. (At 1024 filters and ~250 frames the two are close; measured in the bench.)"""
    filters_work = 4 * n_filters * n_filters * frames
    width = frames + sum(target_frames)
    frames_work = 2 * n_filters * frames * width * (FLOAT64_COST + 1)
    return "frames" if frames_work < filters_work else "filters"


@dataclass(frozen=True)
class StyleTargets:
    """What the style loss needs of its K targets, in the row's form: their Grams (filters form),
    or their features in float32 and float64 with the Grams' squared norms (frames form)."""

    form: str
    grams: tuple[torch.Tensor, ...] = ()
    feats: tuple[torch.Tensor, ...] = ()
    feats64: tuple[torch.Tensor, ...] = ()
    sq_norms: torch.Tensor | None = None  # float64 (K,)

    def __len__(self) -> int:
        return len(self.grams or self.feats)

    @classmethod
    def of(cls, target_feats: Sequence[torch.Tensor], form: str) -> StyleTargets:
        """Targets from the features (C, T_k) whose Grams the output should match."""
        if form == "filters":
            return cls(form, grams=tuple(gram(f) for f in target_feats))
        feats64 = tuple(f.double() for f in target_feats)
        # ‖F_kF_kᵀ‖² = ‖F_kᵀF_k‖²: the target's own T_k×T_k product, once
        sq = torch.stack([(f.T @ f).square().sum() / f.shape[-1] ** 2 for f in feats64])
        return cls(form, feats=tuple(target_feats), feats64=feats64, sq_norms=sq)


class _FiltersStyleLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feats: torch.Tensor, *grams: torch.Tensor) -> torch.Tensor:
        diffs = [gram(feats) - g for g in grams]
        ctx.save_for_backward(feats, *diffs)
        return torch.stack([d.pow(2).sum() for d in diffs])

    @staticmethod
    def backward(ctx, grad_terms: torch.Tensor):
        feats, *diffs = ctx.saved_tensors
        combined = sum(w * d for w, d in zip(grad_terms, diffs, strict=True))  # Σ_k w_k (G − G_k), symmetric
        return (4.0 / feats.shape[-1]) * (combined @ feats), *([None] * len(diffs))


class _FramesStyleLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feats: torch.Tensor, targets: StyleTargets) -> torch.Tensor:
        frames = feats.shape[-1]
        f64 = feats.double()
        own = f64.T @ f64  # (T, T)
        cross = [t.T @ f64 for t in targets.feats64]  # (T_k, T) each
        terms = own.square().sum() / frames**2 + targets.sq_norms
        terms = terms - 2 * torch.stack([c.square().sum() / (frames * c.shape[0]) for c in cross])
        ctx.targets = targets
        ctx.save_for_backward(feats, (own / frames).float(), *[(c / c.shape[0]).float() for c in cross])
        # rounding can leave a tiny negative where the true distance is ~0
        return terms.clamp_min(0.0).to(feats.dtype)

    @staticmethod
    def backward(ctx, grad_terms: torch.Tensor):
        feats, own, *cross = ctx.saved_tensors
        # Σ_k w_k 4/T [F own − F_k cross_k] as one matmul: [F, F_1 … F_K] @ [Σw·own; −w_1·cross_1; …]
        stacked = torch.cat([feats, *ctx.targets.feats], dim=1)
        coefficients = torch.cat([grad_terms.sum() * own, *[-w * c for w, c in zip(grad_terms, cross, strict=True)]])
        return (4.0 / feats.shape[-1]) * (stacked @ coefficients), None


def style_terms(feats: torch.Tensor, targets: StyleTargets) -> torch.Tensor:
    """The style loss against each of K targets, with the cheaper exact backward pass.

    Parameters
    ----------
    feats : torch.Tensor, shape (n_filters, T)
        The output's features (the gradient flows to them).
    targets : StyleTargets
        The K targets' statistics, in the filters or frames form (``StyleTargets.of``).

    Returns
    -------
    torch.Tensor, shape (K,)
        ``‖F Fᵀ/T − G_k‖²`` for each target k.
    """
    if targets.form == "frames":
        return _FramesStyleLoss.apply(feats, targets)
    return _FiltersStyleLoss.apply(feats, *targets.grams)


def estimate_memory_bytes(n_bins: int, content_frames: int, style_frames: int, params: Params) -> int:
    """Rough peak memory of one transfer, to refuse inputs that cannot fit before allocating.

    The Gram matrices do not grow with length; the conv activations and L-BFGS history do.

    Parameters
    ----------
    n_bins : int
        Frequency bins (n_fft // 2 + 1).
    content_frames, style_frames : int
        STFT frames of the inputs (``stft_frames``).
    params : Params
        The row's settings (filters, kernel, optimiser, L-BFGS history).

    Returns
    -------
    int
        Bytes of float32 data (compared with ``max_memory_gb``; measured against real peaks in
        the bench's ``memory`` section).
    """
    n_filters = params.n_filters
    spec = n_bins * content_frames
    activations = n_filters * max(content_frames, style_frames)
    history = 2 * params.lbfgs_history * spec if params.optimizer == "lbfgs" else 2 * spec
    floats = 6 * spec + 5 * activations + 3 * n_filters * n_filters + history
    # The weights, plus the reordered copy the CPU conv backend keeps (measured: benchmarks/RESULTS.md).
    floats += 2 * n_filters * n_bins * params.kernel_size
    return 4 * floats


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


class StyleTransfer:
    """Optimise a log-spectrogram whose features match the content and whose Grams match the style.

    Targets (content features, style Gram) are computed once. The spectrogram starts from small
    seeded noise, as in the reference; ``step()`` runs one optimiser iteration and returns False
    when the run is finished (iteration budget, early stopping, or divergence).
    """

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
            self._set_style_targets([style_feats] + ([content_feats] if params.style_weight_content > 0 else []))
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
        # (iteration, total, content, style, evaluations run in the iteration)
        self.trace: list[TraceRow] = []
        self.best_loss = math.inf
        self.best_x = self.x.detach().clone()
        self.stale = 0  # iterations without a relative improvement of min_delta
        self.stop_reason = ""
        self.evaluations = 0  # loss+gradient evaluations run (the cost of the row)
        # The last evaluation (x, gradient, terms): torch's L-BFGS asks again for the point its
        # line search just evaluated at the start of every step(); answering from here saves ~45 %.
        self._last: tuple[torch.Tensor, torch.Tensor, LossTensors] | None = None
        # How the closure gets the loss and gradient at self.x: alone by default, or through a
        # batched evaluation shared with other rows (batched.py); either way self.x.grad is set.
        self.evaluate: Callable[[StyleTransfer], LossTensors] = evaluate_alone

    def _make_optimizer(self) -> torch.optim.Optimizer:
        p = self.params
        if p.optimizer == "lbfgs":
            # One L-BFGS iteration per step() (max_iter=1) keeps iterations observable, stoppable and
            # checkpointable; the curvature history lives in the optimizer state across steps.
            # The strong-Wolfe line search is what makes torch's L-BFGS robust on this loss.
            return torch.optim.LBFGS(
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
        c_b = self._content_term(feats, self.content_target_style) if self.content_target_style is not None else None
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
            values = [float(t) if t is not None else 0.0 for t in self._terms(torch.zeros_like(self.content_target))]
        in_use = [v for v, w in zip(values, self._weights(), strict=False) if w > 0 and v > 0]
        reference = max(in_use, default=1.0)
        return [reference / v if v > 0 else 1.0 for v in values]  # a silent target stays unscaled

    def loss_terms_from(self, feats: torch.Tensor) -> LossTensors:
        """(total, content, style) from the output's features: total = alpha c(content) +
        delta s(style) + beta c(style input) + gamma s(content input), each term multiplied by its
        ``term_scales`` entry (1 on the absolute scale); the content and style terms returned are
        the unweighted, unscaled sums of the terms in use."""
        terms = self._terms(feats)
        total = sum(w * scale * t for w, scale, t in zip(self._weights(), self.term_scales, terms, strict=False)
                    if t is not None)
        c, s, c_b, *s_a = terms
        return total, (c if c_b is None else c + c_b), (s if not s_a else s + s_a[0])

    def _evaluate_cached(self) -> LossTensors:
        """Loss terms at ``self.x`` with ``self.x.grad`` set: from the last evaluation when ``x``
        has not changed since (bit for bit), else evaluated (``self.evaluate``) and remembered."""
        x = self.x.detach()
        if self._last is not None and torch.equal(self._last[0], x):
            self.x.grad = self._last[1].clone()
            return self._last[2]
        terms = self.evaluate(self)
        self.evaluations += 1
        if isinstance(self.optimizer, torch.optim.LBFGS):  # only L-BFGS comes back to a point
            self._last = (x.clone(), self.x.grad.detach().clone(), terms)
        return terms

    @property
    def finished(self) -> bool:
        return bool(self.stop_reason)

    def step(self) -> bool:
        """Run one iteration; record the loss at the iterate it started from. False when finished."""
        if self.finished:
            return False
        first: list[tuple[float, float, float]] = []
        evaluations_before = self.evaluations

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            total, c, s = self._evaluate_cached()
            if not first:
                first.append((total.item(), c.item(), s.item()))
            return total

        if isinstance(self.optimizer, torch.optim.LBFGS):
            before = self.x.detach().clone()
            self.optimizer.step(closure)
            if torch.equal(before, self.x.detach()):
                # The line search found no step along the quasi-Newton direction (a stale curvature
                # history on this quartic loss): restart L-BFGS from steepest descent, as scipy's
                # L-BFGS-B does, instead of repeating the same failed step until early stopping.
                self.optimizer.state.clear()
        else:
            closure()
            self.optimizer.step()
        total, c, s = first[0]
        self.trace.append((self.iteration, total, c, s, self.evaluations - evaluations_before))
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

    def run(self, should_pause: Callable[[], bool] = lambda: False) -> bool:
        """Iterate until finished (True) or until ``should_pause()`` says stop (False)."""
        while not self.finished:
            if should_pause():
                return False
            self.step()
        return True

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
            "last": None if self._last is None else
            {"x": self._last[0].cpu(), "grad": self._last[1].cpu(), "terms": [t.item() for t in self._last[2]]},
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
        self.trace = [tuple(row) if len(row) == 5 else (*row, None) for row in state["trace"]]
        self.best_loss = state["best_loss"]
        self.stale = state["stale"]
        self.stop_reason = state["stop_reason"]
        self.evaluations = state.get("evaluations", 0)
        last = state.get("last")
        if last is not None:
            terms = tuple(torch.tensor(v, device=self.device) for v in last["terms"])
            self._last = (last["x"].to(self.device), last["grad"].to(self.device), terms)
