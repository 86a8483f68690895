"""What every attack shares: the interface, per-sample seeded noise, and the closed-form DDPM/DDIM moves."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from mia.errors import MiaError
from mia.targets import DiffusionTarget


class SampleNoise:
    """Gaussian noise seeded per sample: a sample gets the same noise in any batch, order or device."""

    def __init__(self, keys: torch.Tensor, seed: int) -> None:
        self.keys = [int(k) for k in keys.tolist()]  # one device-to-host copy, not one per sample
        self.seed = int(seed)

    def randn(self, shape: tuple[int, ...], stream: int = 0, device=None) -> torch.Tensor:
        """[B, *shape] standard normal; ``stream`` gives independent draws for the same sample."""
        out = torch.empty(len(self.keys), *shape)
        for row, key in enumerate(self.keys):
            state = np.random.SeedSequence([self.seed, key, stream]).generate_state(1, np.uint64)[0]
            out[row] = torch.randn(shape, generator=torch.Generator().manual_seed(int(state)))
        return out.to(device)


@dataclasses.dataclass
class Attack(ABC):
    """Hyperparameters as dataclass fields; ``score`` maps clean x0 to one score per sample (higher = member).

    Attacks never touch files, loggers or metrics.
    """

    name: ClassVar[str] = "attack"
    # True for attacks with ``collect`` (model predictions) and ``aggregate`` (scores from them), whose
    # predictions can be cached; ``prediction_settings`` then names the settings the predictions depend on.
    cacheable: ClassVar[bool] = False

    @abstractmethod
    def score(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise) -> torch.Tensor:
        """float64 [B] membership scores."""

    def check(self, target: DiffusionTarget) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Raise MiaError when the settings do not fit this target (before any query is made)."""

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def _check_timestep(target: DiffusionTarget, t: int, what: str) -> None:
        if not 0 <= t < target.num_timesteps:
            raise MiaError(f"{what} = {t} is outside the target's timesteps 0..{target.num_timesteps - 1}")


def require(condition: bool, message: str) -> None:
    """Validate a hyperparameter with a message naming the config key."""
    if not condition:
        raise MiaError(message)


# The closed-form moves below run in float64 (the model itself sees float32): SecMI chains a dozen of
# them and then subtracts two nearly equal states, where float32 rounding would add noise to the score.


def coefficients(target: DiffusionTarget, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(√ᾱ_t, √(1−ᾱ_t)) as float64 scalars on the target's device."""
    a = target.alphas_cumprod[t]
    return a.sqrt(), (1 - a).sqrt()


def forward_noise(target: DiffusionTarget, x0: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
    """``x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε`` (float64)."""
    signal, noise = coefficients(target, t)
    return signal * x0.double() + noise * eps.double()


def ddim_move(target: DiffusionTarget, x_t: torch.Tensor, eps: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """Deterministic DDIM move from t to s (either direction) with the noise estimate ``eps`` made at t (float64)."""
    signal_t, noise_t = coefficients(target, t)
    signal_s, noise_s = coefficients(target, s)
    x_t, eps = x_t.double(), eps.double()
    x0_hat = (x_t - noise_t * eps) / signal_t
    return signal_s * x0_hat + noise_s * eps
