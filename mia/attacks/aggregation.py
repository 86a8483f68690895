"""NA's aggregation statistics over k noise predictions E = {ε̂_1..ε̂_k} (docs/method.md, "noise aggregation", step 3).

Each function takes E as [B, k, D] and returns [B]. Distances are exact differences in float64
(``torch.cdist`` without its matrix-product shortcut, which cancels badly for tight clusters).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _distances(eps: torch.Tensor, p: float) -> torch.Tensor:
    eps = eps.to(torch.float64)
    return torch.cdist(eps, eps, p=p, compute_mode="donot_use_mm_for_euclid_dist")


def pairwise_l2(eps: torch.Tensor) -> torch.Tensor:
    """``(1/k²)·Σ_{i,j} ‖ε̂_i − ε̂_j‖²₂`` (the paper's default)."""
    k = eps.shape[1]
    return _distances(eps, 2.0).pow(2).sum((1, 2)) / k**2


def pairwise_l1(eps: torch.Tensor) -> torch.Tensor:
    """``(1/k²)·Σ_{i,j} ‖ε̂_i − ε̂_j‖₁``."""
    k = eps.shape[1]
    return _distances(eps, 1.0).sum((1, 2)) / k**2


def centroid(eps: torch.Tensor) -> torch.Tensor:
    """``(1/k)·Σ_i ‖ε̂_i − ē‖₂`` with ē the mean prediction."""
    eps = eps.to(torch.float64)
    return (eps - eps.mean(1, keepdim=True)).norm(dim=2).mean(1)


def density(eps: torch.Tensor, delta: float = 1e-12) -> torch.Tensor:
    """``(1/k)·Σ_i 1/(d_i + δ)``, d_i the L2 distance of ε̂_i to its nearest other prediction."""
    dist = _distances(eps, 2.0)
    dist = dist + torch.diag_embed(torch.full(dist.shape[:2], float("inf"), dtype=dist.dtype, device=dist.device))
    return (1.0 / (dist.min(2).values + delta)).mean(1)


def magnitude(eps: torch.Tensor) -> torch.Tensor:
    """``(1/k)·Σ_i ‖ε̂_i‖²₂``: how large the predictions are, not how they scatter (a variant, not the paper's).

    Measured against the injected noise (docs/results.md, "Why NA flips"), a member's predictions come out
    smaller than a non-member's at every start timestep and noise scale tried, while the paper's dispersion
    flips sign with the noise scale; on the same k predictions, so it costs no extra query.
    """
    return eps.to(torch.float64).pow(2).sum(2).mean(1)


# Statistics where a lower value means "member"; the score is −log(value + δ).
DISPERSIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "pairwise_l2": pairwise_l2,
    "pairwise_l1": pairwise_l1,
    "centroid": centroid,
    "magnitude": magnitude,
}
STATISTICS = (*DISPERSIONS, "density")


def aggregation_score(eps: torch.Tensor, statistic: str, delta: float = 1e-12) -> torch.Tensor:
    """Membership score, higher = member: ``−log(C + δ)`` for the dispersions, the density itself otherwise."""
    if statistic == "density":
        return density(eps, delta)
    return -torch.log(DISPERSIONS[statistic](eps) + delta)
