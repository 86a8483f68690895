"""The loss attack (Matsumoto et al. 2023; Hu & Pang 2023): a member's denoising error is small.

Score ``−‖ε_θ(x_t, t) − ε‖²`` with x_t noised by fresh, seeded ε, averaged over ``draws`` draws. With
``frequency_filter=high`` the error ε_θ − ε is filtered first (FreMIA): the same as filtering x̂0 − x0, since
``x̂0 − x0 = √(1−ᾱ_t)/√ᾱ_t·(ε − ε_θ)`` and the filter is linear (docs/method.md, "FreMIA's filter").
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mia.attacks.frequency import FrequencyFiltered
from mia.attacks.moves import forward_noise
from mia.attacks.sample_noise import SampleNoise
from mia.checks import require_integer
from mia.targets.base import DiffusionTarget


@dataclasses.dataclass
class LossAttack(FrequencyFiltered):
    name = "loss"
    t: int = 200  # timestep of the noising
    draws: int = 1  # noise draws averaged (queries per sample = draws)
    seed: int = 0  # seeds the noise (per sample)

    def __post_init__(self) -> None:
        super().__post_init__()  # types first: t=80.5 is refused, not truncated
        require_integer("attack.draws", self.draws, minimum=1)

    def check(self, target: DiffusionTarget) -> None:
        super().check(target)  # the frequency filter's box
        self._check_timestep(target, self.t, "attack.t")

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        total = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
        for draw in range(self.draws):
            eps = noise.randn(x0.shape[1:], stream=draw, device=x0.device)
            error = target.predict_noise(forward_noise(target, x0, eps, self.t), self.t, cond) - eps
            if self.frequency_filter != "none":
                error = self.filtered(error)
            total += error.flatten(1).to(torch.float64).pow(2).sum(1)
        return -total / self.draws
