"""PIA and PIAN (Kong et al., "An Efficient Membership Inference Attack for the Diffusion Model by
Proximal Initialization", ICLR 2024).

PIA takes the model's own noise at t = 0, ``ε0 = ε_θ(x0, 0)``, noises x0 with it to t, and scores
``−Σ|ε0 − ε_θ(x_t, t)|^p``: a member's prediction returns to ε0. PIAN first rescales ε0 per sample to
look Gaussian: ``ε0 / mean(|ε0|) · √(2/π)``. Two queries per sample, no randomness. With
``frequency_filter=high`` the difference ε0 − ε_θ(x_t, t) is filtered first (FreMIA compares x0 with x̂0, which
differ by √(1−ᾱ_t)/√ᾱ_t times that difference; docs/method.md, "FreMIA's filter").

The paper's timestep is 200 for DDPM and 500 for Stable Diffusion: with ``t`` unset, targets whose
scheduler uses SD's ``scaled_linear`` β schedule get 500, all others 200 (recorded in the settings).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from mia.attacks.base import require
from mia.attacks.frequency import FrequencyFiltered
from mia.attacks.moves import forward_noise
from mia.attacks.sample_noise import SampleNoise
from mia.targets.base import DiffusionTarget

SD_SCHEDULE = "scaled_linear"  # Stable Diffusion's β schedule: what "SD-scale" means for the default t
SD_TIMESTEP, DDPM_TIMESTEP = 500, 200


@dataclasses.dataclass
class PIA(FrequencyFiltered):
    name = "pia"
    t: int | None = None  # timestep; None = the paper's: 500 for SD-scale (scaled_linear) schedules, else 200
    p: float = 4.0  # exponent of the ℓp distance
    seed: int = 0  # unused (PIA is deterministic); kept so every attack has a seed key

    def __post_init__(self) -> None:
        super().__post_init__()  # types first: t=80.5 is refused, not truncated
        require(self.p > 0, f"attack.p must be > 0, got {self.p!r}")

    def timestep(self, target: DiffusionTarget) -> int:
        """``t``, or the paper's default for the target's schedule when it is unset."""
        if self.t is not None:
            return self.t
        return SD_TIMESTEP if target.beta_schedule == SD_SCHEDULE else DDPM_TIMESTEP

    def check(self, target: DiffusionTarget) -> None:
        super().check(target)  # the frequency filter's box
        self._effective_t = self.timestep(target)
        self._check_timestep(target, self._effective_t, "attack.t")

    def settings(self) -> dict[str, Any]:
        """The settings, with the timestep in effect; ``t_default`` says the schedule chose it (t was unset)."""
        settings = super().settings()
        if self.t is None and hasattr(self, "_effective_t"):
            settings.update(t=self._effective_t, t_default=True)
        return settings

    def initial_noise(self, target: DiffusionTarget, x0: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return target.predict_noise(x0, 0, cond)

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        t = self.timestep(target)
        eps0 = self.initial_noise(target, x0, cond)
        eps_t = target.predict_noise(forward_noise(target, x0, eps0, t), t, cond)
        difference = eps0 - eps_t
        if self.frequency_filter != "none":
            difference = self.filtered(difference)
        return -difference.flatten(1).to(torch.float64).abs().pow(self.p).sum(1)


@dataclasses.dataclass
class PIAN(PIA):
    name = "pian"

    def initial_noise(self, target: DiffusionTarget, x0: torch.Tensor, cond: Any = None) -> torch.Tensor:
        eps0 = target.predict_noise(x0, 0, cond)
        scale = eps0.abs().mean(dim=tuple(range(1, eps0.ndim)), keepdim=True).clamp_min(torch.finfo(eps0.dtype).tiny)
        return eps0 / scale * math.sqrt(2 / math.pi)
