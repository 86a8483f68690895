"""SecMI_stat (Duan et al., "Are Diffusion Models Vulnerable to Membership Inference Attacks?", ICML 2023).

Invert x0 deterministically with DDIM steps of ``interval`` up to ``x̃_{t_sec}``, take one DDIM step up to
t_sec + interval and one back down to t_sec, giving x̂; score ``−‖x̂ − x̃_{t_sec}‖²``. A member's round trip
comes back closer. Queries: t_sec/interval + 2 (12 at the paper's t_sec = 100, interval = 10; the
reference code's off-by-one scores at 90 with 11).

With ``frequency_filter=high`` the two compared states are filtered (FreMIA) before the distance; the raw
residual that SecMI_NN and the ``secmi`` features read is never filtered (they refuse the filter).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mia.attacks.base import require
from mia.attacks.frequency import FrequencyFiltered
from mia.attacks.moves import ddim_move
from mia.attacks.sample_noise import SampleNoise
from mia.checks import require_integer
from mia.targets.base import DiffusionTarget


@dataclasses.dataclass
class SecMI(FrequencyFiltered):
    name = "secmi"
    t_sec: int = 100  # timestep the round trip starts from
    interval: int = 10  # DDIM step (the paper's k)
    seed: int = 0  # unused (SecMI_stat is deterministic); kept so every attack has a seed key

    def __post_init__(self) -> None:
        super().__post_init__()  # types first: t=80.5 is refused, not truncated
        require_integer("attack.interval", self.interval, minimum=1)
        require(
            self.t_sec >= self.interval and self.t_sec % self.interval == 0,
            f"attack.t_sec must be a positive multiple of attack.interval ({self.interval}), got {self.t_sec!r}",
        )

    def check(self, target: DiffusionTarget) -> None:
        super().check(target)  # the frequency filter's box
        self._check_timestep(target, self.t_sec + self.interval, "attack.t_sec + attack.interval")

    def invert(self, target: DiffusionTarget, x0: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Deterministic DDIM inversion 0 → interval → … → t_sec (t_sec/interval queries)."""
        x = x0
        for t in range(0, self.t_sec, self.interval):
            x = ddim_move(target, x, target.predict_noise(x, t, cond), t, t + self.interval)
        return x

    def round_trip(self, target: DiffusionTarget, x0: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """``x̂ − x̃_{t_sec}`` per element, float64 [B, C, H, W] (t_sec/interval + 2 queries)."""
        t, up = self.t_sec, self.t_sec + self.interval
        x_t = self.invert(target, x0, cond)
        x_up = ddim_move(target, x_t, target.predict_noise(x_t, t, cond), t, up)
        x_back = ddim_move(target, x_up, target.predict_noise(x_up, up, cond), up, t)
        return (x_back - x_t).to(torch.float64)

    def residual(self, target: DiffusionTarget, x0: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """``|x̂ − x̃_{t_sec}|`` per element, float64 [B, C, H, W]: what SecMI_stat sums and SecMI_NN classifies."""
        # Its readers (SecMI_NN, the secmi features) key their cache without the filter: refused, never ignored.
        require(self.frequency_filter == "none",
                "attack.frequency_filter applies to SecMI_stat (attack=secmi) only; SecMI's residual features "
                "and secmi_nn read the unfiltered residual")
        return self.round_trip(target, x0, cond).abs()

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        difference = self.round_trip(target, x0, cond)
        # |d|² as before at frequency_filter=none (bit for bit); filter(x̂) − filter(x̃) = filter(d) otherwise.
        compared = difference.abs() if self.frequency_filter == "none" else self.filtered(difference)
        return -compared.flatten(1).pow(2).sum(1)
