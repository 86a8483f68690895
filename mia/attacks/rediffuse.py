"""ReDiffuse (Li, Dong, He, Zhang, "Towards Black-Box Membership Inference Attack for Diffusion Models",
arXiv 2405.20771, ICML 2025; reference code lijingwei0502/diffusion_mia): image variation only.

Vary the image n times through the target's img2img call (``mia.targets.generation.vary``: noise to the
strength's timestep with seeded noise, deterministic DDIM back), average the n variations, and score
``−‖mean − image‖²`` (or the SSIM of the mean to the image): a member's variations scatter around the image
itself, so their average comes back closer. Black-box: the denoiser is reached only through the variation
call, never ``predict_noise``. Queries per sample: n × int(steps·strength) (× 2 under guidance); generation
calls per sample: n.

The reference scores its DDIM (pixel) setting with a ResNet-18 trained on |image − mean| of 20 % of the
samples; mia reports the threshold-free distance, which needs no labels (``attack=learned``-style fitting
of that map is left out).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mia.attacks.base import Attack, require
from mia.attacks.sample_noise import SampleNoise
from mia.attacks.similarity import check_ssim_size, negative_squared_l2, ssim
from mia.checks import require_integer
from mia.data.images import to_model_range
from mia.targets.base import DiffusionTarget
from mia.targets.generation import check_strength, denoiser_steps, vary

SPACES = ("image", "latent")
DISTANCES = ("l2", "ssim")


@dataclasses.dataclass
class ReDiffuse(Attack):
    name = "rediffuse"
    n: int = 10  # variations averaged (the reference's `average`); generation calls per sample
    strength: float = 0.2  # img2img strength in (0, 1]: with steps = 10, noise to t = 199 and run 2 DDIM steps
    steps: int = 10  # DDIM steps spacing the whole schedule; a variation runs int(steps·strength) of them
    space: str = "image"  # image: average the decoded variations, compare with the image; latent: in x0-space
    distance: str = "l2"  # l2: −‖mean − original‖²; ssim: SSIM(mean, image) (image space only)
    seed: int = 0  # seeds the variations' noise (per sample and variation)

    def __post_init__(self) -> None:
        super().__post_init__()  # types first: n=2.5 is refused, not truncated
        require_integer("attack.n", self.n, minimum=1)
        require_integer("attack.steps", self.steps, minimum=1)
        check_strength(self.strength, self.steps)
        require(self.space in SPACES, f"attack.space must be one of {', '.join(SPACES)}, got {self.space!r}")
        require(self.distance in DISTANCES,
                f"attack.distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")
        require(not (self.distance == "ssim" and self.space == "latent"),
                "attack.distance=ssim compares images; use it with attack.space=image")

    def check(self, target: DiffusionTarget) -> None:
        require(self.steps <= target.num_timesteps,
                f"attack.steps must be at most the target's {target.num_timesteps} timesteps, got {self.steps}")
        if self.distance == "ssim":
            check_ssim_size(target.image_shape, "attack.distance")

    def settings(self) -> dict[str, Any]:
        """The settings, with the cost they define spelled out (denoiser steps per variation, per sample)."""
        return {**super().settings(), "denoiser_steps_per_generation": denoiser_steps(self.strength, self.steps),
                "generation_calls_per_sample": self.n}

    def inputs(self, target: DiffusionTarget, batch: dict[str, Any], noise: SampleNoise) -> tuple[torch.Tensor, Any]:
        """The images themselves (in [-1, 1]): the variations are compared with them, not with their encoding."""
        return to_model_range(batch["image"]), target.conditions(batch, self.guidance_scale)

    def average_variation(self, target: DiffusionTarget, images: torch.Tensor, noise: SampleNoise,
                          cond: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean of the n variations, what it is compared with), both in ``space``."""
        x0 = target.encode(images, noise)
        decode = self.space == "image"
        total = torch.zeros((len(x0), *(images if decode else x0).shape[1:]), dtype=torch.float64, device=x0.device)
        for stream in range(self.n):
            eps = noise.randn(x0.shape[1:], stream=stream, device=x0.device)
            total += vary(target, x0, self.strength, self.steps, eps, cond, decode=decode).double()
        return total / self.n, (images if decode else x0)

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        """Scores [B] (``x0`` holds the batch's images: see ``inputs``)."""
        mean, original = self.average_variation(target, x0, noise, cond)
        if self.distance == "ssim":
            return ssim(mean, original)
        return negative_squared_l2(mean, original)
