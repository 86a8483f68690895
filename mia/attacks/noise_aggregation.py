"""Noise aggregation (NA): Li et al., "Noise Aggregation Analysis Driven by Small-Noise Injection",
arXiv 2510.21783 (docs/method.md, "noise aggregation").

Inject slight noise at timestep t, follow a deterministic DDIM path of k timesteps spaced m apart,
collect the model's k noise predictions, and score by how tightly they aggregate: members' predictions
cluster, non-members' scatter.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mia.attacks.aggregation import STATISTICS, aggregation_score
from mia.attacks.base import Attack, require
from mia.attacks.moves import coefficients, ddim_move
from mia.attacks.sample_noise import SampleNoise
from mia.checks import require_integer
from mia.targets.base import DiffusionTarget


@dataclasses.dataclass
class NoiseAggregation(Attack):
    """NA with the paper's defaults t = 80, k = 5, m = 10, pairwise L2 over the predictions."""

    name = "na"
    t: int = 80  # start timestep
    k: int = 5  # predictions collected (= queries per sample)
    m: int = 10  # timestep interval of the DDIM path
    noise_scale: float = 1.0  # s in x_t = √ᾱ_t·x0 + s·√(1−ᾱ_t)·ε; 1 = the plain forward process
    statistic: str = "pairwise_l2"  # pairwise_l2 | pairwise_l1 | centroid | density | magnitude
    direction: str = "down"  # down (t, t−m, …, as in the paper) or up (t, t+m, …)
    seed: int = 0  # seeds the injected noise (per sample)
    delta: float = 1e-12  # δ in −log(C + δ)

    def __post_init__(self) -> None:
        super().__post_init__()  # types first: t=80.5 is refused, not truncated
        require_integer("attack.k", self.k, minimum=2)
        require_integer("attack.m", self.m, minimum=1)
        require(self.noise_scale >= 0, f"attack.noise_scale must be ≥ 0, got {self.noise_scale!r}")
        require(
            self.statistic in STATISTICS,
            f"attack.statistic must be one of {', '.join(STATISTICS)}; got {self.statistic!r}",
        )
        require(self.direction in ("down", "up"), f"attack.direction must be down or up, got {self.direction!r}")
        # δ = 0 turns a perfect aggregation (C = 0) into an infinite score, which no ROC can rank.
        require(self.delta > 0, f"attack.delta must be > 0 (e.g. 1e-12), got {self.delta!r}")

    def timesteps(self) -> list[int]:
        step = -self.m if self.direction == "down" else self.m
        return [self.t + i * step for i in range(self.k)]

    def fits(self, target: DiffusionTarget) -> bool:
        """Whether the whole path lies inside the target's schedule."""
        path = self.timesteps()
        return min(path) >= 0 and max(path) < target.num_timesteps

    def check(self, target: DiffusionTarget) -> None:
        require(
            self.fits(target),
            f"NA's path {self.timesteps()} leaves the target's timesteps 0..{target.num_timesteps - 1}; "
            "change attack.t, attack.k, attack.m or attack.direction",
        )

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        """The k noise predictions along the path, [B, k, D] (k queries per sample)."""
        path = self.timesteps()
        signal, sigma = coefficients(target, path[0])
        eps = noise.randn(x0.shape[1:], device=x0.device).double()
        x = signal * x0.double() + self.noise_scale * sigma * eps
        predictions = []
        for i, t in enumerate(path):
            eps = target.predict_noise(x, t, cond)
            predictions.append(eps.flatten(1))
            if i + 1 < len(path):
                x = ddim_move(target, x, eps, t, path[i + 1])
        return torch.stack(predictions, dim=1)

    def prediction_settings(self) -> dict:
        """What the predictions depend on: all settings but the statistic and δ."""
        return {k: v for k, v in super().prediction_settings().items() if k not in ("statistic", "delta")}

    def aggregate(self, predictions: torch.Tensor) -> torch.Tensor:
        """The statistic's score per sample, −log(C + δ) (the density itself), from the k predictions."""
        return aggregation_score(predictions, self.statistic, self.delta)
