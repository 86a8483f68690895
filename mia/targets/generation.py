"""The generation side of a target, as an API offers it: image variation (img2img) and text-to-image sampling.

Black-box attacks (ReDiffuse, the reconstruction attack) see a model only through what a pipeline's
``__call__`` returns. Both calls here run diffusers' ``DDIMScheduler`` (η = 0, its own ``set_timesteps``,
``add_noise`` and ``step``) on the target's ᾱ, and reach the denoiser only through ``target.denoise``, so the
forward hook counts every denoiser step as a query (two per step under classifier-free guidance), exactly as
for the other attacks; ``predict_noise`` is never called. Each call also adds one generation call per sample
to ``target.generation_calls``.

Timesteps follow diffusers' img2img rule: ``steps`` spaces the whole schedule ("trailing" spacing, so a
10-step schedule of 1000 is 999, 899, …, 99 and a generation starts from pure noise), and a variation of
``strength`` s keeps the last ``int(steps·s)`` of them, noising the input to the first one kept.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from mia.errors import MiaError
from mia.targets.base import DiffusionTarget

log = logging.getLogger(__name__)

# Trailing spacing puts the first step at T − 1, so text-to-image starts from pure noise, and a variation at
# strength 0.2 of a 10-step schedule noises to t = 199 and runs 199 → 99 → 0, as ReDiffuse's DDIM code does.
TIMESTEP_SPACING = "trailing"


def ddim_scheduler(target: DiffusionTarget, steps: int) -> Any:
    """A DDIMScheduler on the target's ᾱ (betas recovered from it), set to ``steps`` inference steps.

    ``set_alpha_to_one=False``: the last step lands on ᾱ_0, as the reference codes' last DDIM step does.
    """
    from diffusers import DDIMScheduler

    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= target.num_timesteps:
        raise MiaError(f"attack.steps must be an integer in 1..{target.num_timesteps} (the DDIM steps of the "
                       f"whole schedule), got {steps!r}")
    alphas = target.alphas_cumprod.detach().cpu().to(torch.float64)
    betas = 1 - alphas / torch.cat([alphas.new_ones(1), alphas[:-1]])
    scheduler = DDIMScheduler(num_train_timesteps=len(alphas), trained_betas=betas.tolist(), clip_sample=False,
                              set_alpha_to_one=False, steps_offset=0, timestep_spacing=TIMESTEP_SPACING)
    scheduler.set_timesteps(steps)
    return scheduler


def variation_timesteps(scheduler: Any, strength: float, steps: int) -> torch.Tensor:
    """The timesteps an img2img call of ``strength`` runs (diffusers' rule: the last ``int(steps·strength)``)."""
    kept = min(int(steps * strength), steps)
    return scheduler.timesteps[steps - kept:]


def denoiser_steps(strength: float, steps: int) -> int:
    """Denoiser steps of one variation (queries per sample without guidance)."""
    return min(int(steps * strength), steps)


def check_strength(strength: float, steps: int) -> None:
    """Refuse a strength outside (0, 1], or one that leaves no denoising step at this many steps."""
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0 < strength <= 1:
        raise MiaError(f"attack.strength must be in (0, 1] (the share of the schedule a variation noises to), "
                       f"got {strength!r}")
    if denoiser_steps(strength, steps) < 1:
        enough = max(steps + 1, math.ceil(1 / strength) - 1)
        while denoiser_steps(strength, enough) < 1:  # the float product decides, as in diffusers' rule
            enough += 1
        raise MiaError(f"attack.strength={strength} of attack.steps={steps} leaves no denoising step "
                       f"(int(steps·strength) = 0); raise attack.steps to at least {enough}")


def _epsilon(target: DiffusionTarget, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
    """One denoiser step through ``target.denoise`` (counted by the target's hook), as float32."""
    timesteps = torch.full((len(x),), int(t), device=x.device, dtype=torch.long)
    weight = next(target.denoiser.parameters(), None)  # none for the closed-form memoriser
    eps = target.denoise(x if weight is None else x.to(weight.dtype), timesteps, cond).float()
    if not torch.isfinite(eps).all():
        raise MiaError(f"the model's noise prediction at t={int(t)} is NaN or infinite during generation; "
                       "the target's weights are broken")
    return eps


def _run(target: DiffusionTarget, scheduler: Any, x: torch.Tensor, timesteps: torch.Tensor, cond: Any) -> torch.Tensor:
    for t in timesteps:
        x = scheduler.step(_epsilon(target, x, t, cond), t, x, eta=0.0).prev_sample
    target.generation_calls += len(x)
    return x


def _draw(shape: tuple[int, ...], noise: torch.Tensor | None, generator: torch.Generator | None,
          device: torch.device) -> torch.Tensor:
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise of shape {tuple(noise.shape)} for samples of shape {tuple(shape)}")
        return noise.to(device=device, dtype=torch.float32)
    return torch.randn(shape, generator=generator).to(device)


def vary(target: DiffusionTarget, x0: torch.Tensor, strength: float, steps: int, noise: torch.Tensor | None = None,
         cond: Any = None, generator: torch.Generator | None = None, decode: bool = True) -> torch.Tensor:
    """Image variation (img2img) of a batch of x0: noised to the strength's timestep, DDIM-denoised.

    ``noise`` [B, *x0 shape] (else drawn from ``generator``); returns images in [-1, 1] (the VAE's decoding
    for latent targets), or the final x0-space samples with ``decode=False``. Queries: B × int(steps·strength)
    (× 2 under guidance).
    """
    check_strength(strength, steps)
    scheduler = ddim_scheduler(target, steps)
    timesteps = variation_timesteps(scheduler, strength, steps)
    eps = _draw(tuple(x0.shape), noise, generator, x0.device)
    start = timesteps[:1].repeat(len(x0)).to(x0.device)
    x = _run(target, scheduler, scheduler.add_noise(x0.float(), eps, start), timesteps, cond)
    return target.decode(x).clamp(-1, 1) if decode else x


def generate(target: DiffusionTarget, cond: Any, steps: int, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None, n: int | None = None, decode: bool = True) -> torch.Tensor:
    """Text-to-image (or class-conditional) generation from pure noise, one image per row of ``cond``.

    ``noise`` [B, *sample_shape] (else drawn from ``generator``; ``n`` rows when ``cond`` is None); returns
    images in [-1, 1], or the final x0-space samples with ``decode=False``. Queries: B × steps (× 2 under
    guidance).
    """
    rows = len(cond) if cond is not None else (len(noise) if noise is not None else n)
    if rows is None:
        raise ValueError("generate needs a condition, noise or n to know how many images to make")
    scheduler = ddim_scheduler(target, steps)
    device = target.alphas_cumprod.device
    x = _draw((rows, *target.sample_shape), noise, generator, device) * scheduler.init_noise_sigma
    x = _run(target, scheduler, x, scheduler.timesteps, cond)
    return target.decode(x).clamp(-1, 1) if decode else x
