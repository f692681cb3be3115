"""Losses stage: the content loss and the style loss (Gram matrices) over the conv features,
with the style loss's two exact hand-written autograd forms.

Pure functions of feature tensors; nothing here knows about optimisers, files or devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


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
        coefficients = torch.cat(
            [grad_terms.sum() * own, *[-w * c for w, c in zip(grad_terms, cross, strict=True)]]
        )
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
