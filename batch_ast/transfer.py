"""Transfer stage: the spectrogram, the random-weight conv features, the losses and the optimisation.

The math lives in small pure functions (``log_spectrogram``, ``random_filters``, ``features``,
``gram``, ``content_loss``, ``style_loss``); ``StyleTransfer`` owns the optimisation state so a job
can stop it between iterations, save it and resume it later.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


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
    """Frames of a centred STFT (torch.stft(center=True)) of ``n_samples`` samples."""
    return 1 + n_samples // hop_length


def check_length(n_samples: int, params: dict[str, Any], what: str) -> None:
    """Refuse audio too short for the STFT (reflect padding needs > n_fft/2 samples) or the kernel."""
    n_fft, kernel = params["n_fft"], params["kernel_size"]
    frames = stft_frames(n_samples, params["hop_length"])
    if n_samples <= n_fft // 2 or frames < kernel:
        raise TransferError(
            f"{what} is {n_samples} samples ({frames} STFT frames) long, shorter than kernel_size "
            f"{kernel} frames or n_fft/2: use longer audio or a smaller n_fft/kernel_size/hop_length"
        )


def log_spectrogram(audio: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """log1p|STFT| of a mono signal, shape (n_fft // 2 + 1, frames)."""
    window = torch.hann_window(n_fft, device=audio.device, dtype=audio.dtype)
    spec = torch.stft(
        audio, n_fft, hop_length=hop_length, window=window, center=True, return_complex=True
    )
    return torch.log1p(spec.abs())


def random_filters(n_bins: int, n_filters: int, kernel_size: int, seed: int) -> torch.Tensor:
    """Seeded random conv weights (n_filters, n_bins, kernel_size), scaled as Ulyanov's reference:
    std = sqrt(2) * sqrt(2 / ((n_bins + n_filters) * kernel_size)). Drawn on the CPU so the same
    seed gives the same network on every device."""
    generator = torch.Generator().manual_seed(seed)
    std = math.sqrt(2.0) * math.sqrt(2.0 / ((n_bins + n_filters) * kernel_size))
    return torch.randn(n_filters, n_bins, kernel_size, generator=generator) * std


def row_filters(params: dict[str, Any], n_bins: int, device: torch.device, seed: int | None = None) -> torch.Tensor:
    """A row's random network on ``device``: its own seed, or ``seed`` for a held-out network."""
    seed = params["seed"] if seed is None else seed
    return random_filters(n_bins, params["n_filters"], params["kernel_size"], seed).to(device)


# Loss terms (total, content, style) as tensors.
LossTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

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
    """activation(conv1d(spec, weight)) for a batch (B, bins, T) -> (B, filters, T'), float32 out.
    bf16 runs only the conv under autocast: the Gram and the losses stay float32 (a bfloat16 Gram
    made L-BFGS stall far above the float32 loss: measured, benchmarks/RESULTS.md)."""
    if precision == "bf16":
        with torch.autocast(spec.device.type, dtype=torch.bfloat16):
            out = F.conv1d(spec, weight)
        return ACTIVATIONS[activation](out.float())
    return ACTIVATIONS[activation](F.conv1d(spec, weight))


def features(
    spec: torch.Tensor, weight: torch.Tensor, activation: str = "relu", precision: str = "float32"
) -> torch.Tensor:
    """activation(conv1d) over time with frequency bins as channels; VALID padding, no bias.
    (bins, T) -> (filters, T'). ReLU is Ulyanov's choice, SELU the student's and Tomczak et al.'s."""
    return conv_features(spec.unsqueeze(0), weight, activation, precision).squeeze(0)


def match_length(spec: torch.Tensor, frames: int) -> torch.Tensor:
    """Stretch or squeeze a spectrogram (bins, T) to ``frames`` frames by linear interpolation in time."""
    if spec.shape[-1] == frames:
        return spec
    return F.interpolate(spec.unsqueeze(0), size=frames, mode="linear", align_corners=False).squeeze(0)


def gram(feats: torch.Tensor) -> torch.Tensor:
    """Gram matrix F Fᵀ / T: normalised by frames so it does not grow with the input's length."""
    return feats @ feats.T / feats.shape[-1]


def content_loss(feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared feature distance per frame: sum((F - Fc)²) / T, so the weight means the same at any
    length (Ulyanov's reference uses the plain sum; at its 430 frames, ALPHA=1e-2 equals 4.3 here)."""
    return (feats - target).pow(2).sum() / feats.shape[-1]


def style_loss(gram_matrix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius distance of Gram matrices, sum((G - Gs)²), as in Ulyanov's reference."""
    return (gram_matrix - target).pow(2).sum()


def estimate_memory_bytes(n_bins: int, content_frames: int, style_frames: int, params: dict[str, Any]) -> int:
    """Rough peak float32 memory of one transfer, to refuse inputs that cannot fit before allocating.

    The Gram matrices do not grow with length; the conv activations and L-BFGS history do."""
    n_filters = params["n_filters"]
    spec = n_bins * content_frames
    activations = n_filters * max(content_frames, style_frames)
    history = 2 * params["lbfgs_history"] * spec if params["optimizer"] == "lbfgs" else 2 * spec
    floats = 6 * spec + 5 * activations + 3 * n_filters * n_filters + history
    # The weights, plus the reordered copy the CPU conv backend keeps (measured: benchmarks/RESULTS.md).
    floats += 2 * n_filters * n_bins * params["kernel_size"]
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
        params: dict[str, Any],
        device: torch.device,
        weight: torch.Tensor | None = None,
    ):
        self.params = params
        self.device = device
        kernel = params["kernel_size"]
        for what, spec in (("content", content_spec), ("style", style_spec)):
            if spec.shape[-1] < kernel:
                raise TransferError(
                    f"{what} is {spec.shape[-1]} STFT frames long, shorter than kernel_size "
                    f"{kernel}: use longer audio or a smaller kernel_size/hop_length"
                )
        n_bins = content_spec.shape[0]
        # Rows optimised together share one copy of the network (``weight``, see batched.py).
        self.weight = weight if weight is not None else row_filters(params, n_bins, device)
        use_precision(params["precision"], device)
        with torch.no_grad():
            content_spec, style_spec = content_spec.to(device), style_spec.to(device)
            act, prec = params["activation"], params["precision"]
            content_feats = features(content_spec, self.weight, act, prec)
            self.content_target = content_feats
            self.style_target = gram(features(style_spec, self.weight, act, prec))
            # Tomczak et al.'s general loss also matches the *style* input's features (beta, length-
            # matched to the output) and the *content* input's Gram (gamma); off by default.
            self.content_target_style = (
                features(match_length(style_spec, content_spec.shape[-1]), self.weight, act, prec)
                if params["content_weight_style"] > 0 else None
            )
            self.style_target_content = gram(content_feats) if params["style_weight_content"] > 0 else None
        generator = torch.Generator().manual_seed(params["seed"] + 1)
        init = torch.randn(content_spec.shape, generator=generator) * 1e-3
        self.x = init.to(device).requires_grad_(True)
        self.optimizer = self._make_optimizer()
        self.scheduler = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode="min",
                factor=params["lr_factor"],
                patience=params["lr_patience"],
                threshold=params["min_delta"],
            )
            if params["optimizer"] != "lbfgs"
            else None
        )
        self.iteration = 0
        self.trace: list[tuple[int, float, float, float]] = []  # (iteration, total, content, style)
        self.best_loss = math.inf
        self.best_x = self.x.detach().clone()
        self.stale = 0  # iterations without a relative improvement of min_delta
        self.stop_reason = ""
        # How the closure gets the loss and gradient at self.x: alone by default, or through a
        # batched evaluation shared with other rows (batched.py); either way self.x.grad is set.
        self.evaluate: Callable[[StyleTransfer], LossTensors] = evaluate_alone

    def _make_optimizer(self) -> torch.optim.Optimizer:
        p = self.params
        if p["optimizer"] == "lbfgs":
            # One L-BFGS iteration per step() (max_iter=1) keeps iterations observable, stoppable and
            # checkpointable; the curvature history lives in the optimizer state across steps.
            # The strong-Wolfe line search is what makes torch's L-BFGS robust on this loss.
            return torch.optim.LBFGS(
                [self.x],
                lr=p["lr"],
                max_iter=1,
                max_eval=25,
                history_size=p["lbfgs_history"],
                tolerance_grad=1e-12,
                tolerance_change=1e-15,
                line_search_fn="strong_wolfe",
            )
        if p["optimizer"] == "adamw":
            return torch.optim.AdamW([self.x], lr=p["lr"], weight_decay=p["weight_decay"])
        return torch.optim.Adam([self.x], lr=p["lr"])

    def loss_terms(self, x: torch.Tensor) -> LossTensors:
        """(total, content, style) at spectrogram ``x``."""
        use_precision(self.params["precision"], self.device)
        feats = features(x, self.weight, self.params["activation"], self.params["precision"])
        return self.loss_terms_from(feats, gram(feats))

    def loss_terms_from(self, feats: torch.Tensor, g: torch.Tensor) -> LossTensors:
        """(total, content, style) from features and their Gram: total = alpha c(content) +
        beta c(style input) + delta s(style) + gamma s(content input); the content and style terms
        returned are the unweighted sums of the terms in use."""
        p = self.params
        c = content_loss(feats, self.content_target)
        s = style_loss(g, self.style_target)
        total = p["content_weight"] * c + p["style_weight"] * s
        if self.content_target_style is not None:
            c_b = content_loss(feats, self.content_target_style)
            total, c = total + p["content_weight_style"] * c_b, c + c_b
        if self.style_target_content is not None:
            s_a = style_loss(g, self.style_target_content)
            total, s = total + p["style_weight_content"] * s_a, s + s_a
        return total, c, s

    @property
    def finished(self) -> bool:
        return bool(self.stop_reason)

    def step(self) -> bool:
        """Run one iteration; record the loss at the iterate it started from. False when finished."""
        if self.finished:
            return False
        first: list[tuple[float, float, float]] = []

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            total, c, s = self.evaluate(self)
            if not first:
                first.append((total.item(), c.item(), s.item()))
            return total

        if isinstance(self.optimizer, torch.optim.LBFGS):
            self.optimizer.step(closure)
        else:
            closure()
            self.optimizer.step()
        total, c, s = first[0]
        self.trace.append((self.iteration, total, c, s))
        self.iteration += 1
        if not math.isfinite(total):
            self.stop_reason = "diverged"
            return False
        if self.scheduler is not None:
            self.scheduler.step(total)
        if total < self.best_loss * (1 - self.params["min_delta"]) or self.best_loss == math.inf:
            self.stale = 0
        else:
            self.stale += 1
        if total < self.best_loss:
            self.best_loss = total
            self.best_x = self.x.detach().clone()
        if total == 0.0:
            self.stop_reason = "converged"
        elif self.stale >= self.params["patience"]:
            self.stop_reason = "early_stopping"
        elif self.iteration >= self.params["iterations"]:
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.x.copy_(state["x"].to(self.device))
        self.best_x = state["best_x"].to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.iteration = state["iteration"]
        self.trace = list(state["trace"])
        self.best_loss = state["best_loss"]
        self.stale = state["stale"]
        self.stop_reason = state["stop_reason"]
