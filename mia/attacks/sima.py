"""SimA (Rao et al. 2025): one query on the *clean* image; a member's predicted noise is small.

Score ``−Σ|ε_θ(x0, t)|^p`` with p = 4.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mia.attacks.base import Attack, require
from mia.attacks.sample_noise import SampleNoise
from mia.targets.base import DiffusionTarget


@dataclasses.dataclass
class SimA(Attack):
    name = "sima"
    t: int = 100  # timestep given to the model with the clean image (the paper sweeps 10..300)
    p: float = 4.0  # exponent
    seed: int = 0  # unused (SimA is deterministic); kept so every attack has a seed key

    def __post_init__(self) -> None:
        super().__post_init__()  # types first: t=80.5 is refused, not truncated
        require(self.p > 0, f"attack.p must be > 0, got {self.p!r}")

    def check(self, target: DiffusionTarget) -> None:
        self._check_timestep(target, self.t, "attack.t")

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        return -target.predict_noise(x0, self.t, cond).flatten(1).to(torch.float64).abs().pow(self.p).sum(1)
