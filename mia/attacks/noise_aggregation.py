"""Noise aggregation (NA): Li et al., "Noise Aggregation Analysis Driven by Small-Noise Injection",
arXiv 2510.21783 (docs/method.md, "noise aggregation").

Inject slight noise at timestep t, follow a deterministic DDIM path of k timesteps spaced m apart,
collect the model's k noise predictions, and score by how tightly they aggregate: members' predictions
cluster, non-members' scatter.

The injected noise has two readings (the paper's "σ = 0.1" is not defined against t): ``injection=schedule``
scales the schedule's own noise, ``x_t = √ᾱ_t·x0 + s·√(1−ᾱ_t)·ε`` (s = ``noise_scale``; s = 1 is the forward
process and the default); ``injection=absolute`` takes σ as the noise's standard deviation,
``x_t = √ᾱ_t·x0 + σ·ε`` (σ = ``sigma``, 0.1). Each reading refuses the other's knob away from its default.
With ``frequency_filter=high`` the k predictions are filtered (FreMIA) before they are aggregated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mia.attacks.aggregation import STATISTICS, aggregation_score
from mia.attacks.base import require
from mia.attacks.frequency import FrequencyFiltered
from mia.attacks.moves import coefficients, ddim_move
from mia.attacks.sample_noise import SampleNoise
from mia.checks import require_integer
from mia.targets.base import DiffusionTarget

INJECTIONS = ("schedule", "absolute")
ABSOLUTE_SIGMA = 0.1  # the paper's "noise std σ = 0.1", read as an absolute standard deviation


@dataclasses.dataclass
class NoiseAggregation(FrequencyFiltered):
    """NA with the paper's defaults t = 80, k = 5, m = 10, pairwise L2 over the predictions."""

    name = "na"
    t: int = 80  # start timestep
    k: int = 5  # predictions collected (= queries per sample)
    m: int = 10  # timestep interval of the DDIM path
    noise_scale: float = 1.0  # s in x_t = √ᾱ_t·x0 + s·√(1−ᾱ_t)·ε (injection=schedule); 1 = the forward process
    statistic: str = "pairwise_l2"  # pairwise_l2 | pairwise_l1 | centroid | density | magnitude
    direction: str = "down"  # down (t, t−m, …, as in the paper) or up (t, t+m, …)
    seed: int = 0  # seeds the injected noise (per sample)
    delta: float = 1e-12  # δ in −log(C + δ)
    injection: str = "schedule"  # schedule (s·√(1−ᾱ_t), today's reading) | absolute (σ, the noise's std)
    sigma: float = ABSOLUTE_SIGMA  # σ in x_t = √ᾱ_t·x0 + σ·ε (injection=absolute)

    def __post_init__(self) -> None:
        super().__post_init__()  # types first: t=80.5 is refused, not truncated
        require_integer("attack.k", self.k, minimum=2)
        require_integer("attack.m", self.m, minimum=1)
        require(self.noise_scale >= 0, f"attack.noise_scale must be ≥ 0, got {self.noise_scale!r}")
        require(self.sigma >= 0, f"attack.sigma must be ≥ 0, got {self.sigma!r}")
        require(self.injection in INJECTIONS,
                f"attack.injection must be one of {', '.join(INJECTIONS)}, got {self.injection!r}")
        # Each reading has its own knob; the other's, set away from its default, would be ignored: refused.
        require(self.injection == "absolute" or self.sigma == ABSOLUTE_SIGMA,
                "attack.sigma applies with attack.injection=absolute; with injection=schedule the noise is "
                "attack.noise_scale·√(1−ᾱ_t)")
        require(self.injection == "schedule" or self.noise_scale == 1.0,
                "attack.noise_scale applies with attack.injection=schedule; with injection=absolute the noise's "
                "standard deviation is attack.sigma")
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
        super().check(target)  # the frequency filter's box
        require(
            self.fits(target),
            f"NA's path {self.timesteps()} leaves the target's timesteps 0..{target.num_timesteps - 1}; "
            "change attack.t, attack.k, attack.m or attack.direction",
        )

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        """The k noise predictions along the path, [B, k, D] (k queries per sample), filtered if asked."""
        path = self.timesteps()
        signal, sigma_t = coefficients(target, path[0])
        eps = noise.randn(x0.shape[1:], device=x0.device).double()
        if self.injection == "schedule":
            x = signal * x0.double() + self.noise_scale * sigma_t * eps  # the expression of mia ≤ 0.1, bit for bit
        else:
            x = signal * x0.double() + self.sigma * eps
        predictions = []
        for i, t in enumerate(path):
            eps = target.predict_noise(x, t, cond)
            # The path goes on with the model's own prediction; only the compared copy is filtered (float32,
            # the predictions' dtype, so the cache holds one kind of value).
            compared = eps if self.frequency_filter == "none" else self.filtered(eps).to(eps.dtype)
            predictions.append(compared.flatten(1))
            if i + 1 < len(path):
                x = ddim_move(target, x, eps, t, path[i + 1])
        return torch.stack(predictions, dim=1)

    def prediction_settings(self) -> dict:
        """What the predictions depend on: all settings but the statistic and δ."""
        return {k: v for k, v in super().prediction_settings().items() if k not in ("statistic", "delta")}

    def aggregate(self, predictions: torch.Tensor) -> torch.Tensor:
        """The statistic's score per sample, −log(C + δ) (the density itself), from the k predictions."""
        return aggregation_score(predictions, self.statistic, self.delta)
