"""The closed-form moves of the DDPM/DDIM processes that attacks compose (docs/method.md, "notation").

They run in float64 (the model itself sees float32): SecMI chains a dozen of them and then subtracts two
nearly equal states, where float32 rounding would add noise to the score. Tests check them against
diffusers' own schedulers (``DDPMScheduler.add_noise``, ``DDIMScheduler.step(eta=0)``,
``DDIMInverseScheduler.step``).
"""

from __future__ import annotations

import torch

from mia.targets.base import DiffusionTarget


def coefficients(target: DiffusionTarget, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(√ᾱ_t, √(1−ᾱ_t)) as float64 scalars on the target's device."""
    a = target.alphas_cumprod[t]
    return a.sqrt(), (1 - a).sqrt()


def forward_noise(target: DiffusionTarget, x0: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
    """``x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε`` (float64)."""
    signal, noise = coefficients(target, t)
    return signal * x0.double() + noise * eps.double()


def ddim_move(target: DiffusionTarget, x_t: torch.Tensor, eps: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """Deterministic DDIM move from t to s (either direction) with the noise estimate ``eps`` made at t (float64).

    ``x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t``, then ``x_s = √ᾱ_s·x̂0 + √(1−ᾱ_s)·ε̂``.
    """
    signal_t, noise_t = coefficients(target, t)
    signal_s, noise_s = coefficients(target, s)
    x_t, eps = x_t.double(), eps.double()
    x0_hat = (x_t - noise_t * eps) / signal_t
    return signal_s * x0_hat + noise_s * eps
