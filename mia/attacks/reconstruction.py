"""The reconstruction attack on text-to-image models (Pang & Wang, "Black-box Membership Inference Attacks
against Fine-tuned Diffusion Models", NDSS 2025; reference code py85252876/Reconstruction-based-Attack).

Generate n images from the sample's own caption (``mia.targets.generation.generate``: seeded noise, DDIM,
decoded), and score how alike they are to the sample, averaged over the n: a model that memorised the
pair reproduces the image from its caption. Black-box: the denoiser is reached only through the generation
call, never ``predict_noise``. Queries per sample: n × steps (× 2 under guidance: 7.5 by default, as the
paper generates); generation calls per sample: n.

``similarity`` (higher = more alike):
- ``pixel``: −‖generated − image‖² on the decoded images in [-1, 1];
- ``latent``: −‖z_generated − z_image‖² on the latents the denoiser works on (no decoding);
- ``ssim``: SSIM of the decoded images to the image (torchmetrics, Gaussian window 11, data range 2);
- ``embedding``: cosine similarity of a user's embedding model's outputs (``embedding``: a ``_target_``
  naming a callable images [B, 3, H, W] in [0, 1] → [B, ...], or a factory returning one). The paper's
  is DeiT-B/16 (``facebook/deit-base-distilled-patch16-384``), which mia does not download.

The paper feeds the per-dimension similarities to a classifier trained on shadow models; mia reports the
mean similarity as the score, with nothing fitted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from mia.attacks.base import Attack, require
from mia.attacks.sample_noise import SampleNoise
from mia.attacks.similarity import build_embedding, check_ssim_size, cosine, negative_squared_l2, ssim
from mia.checks import require_integer
from mia.data.images import to_model_range
from mia.errors import MiaError, NotApplicable
from mia.targets.base import DiffusionTarget
from mia.targets.generation import generate

SIMILARITIES = ("pixel", "latent", "ssim", "embedding")


@dataclasses.dataclass
class Reconstruction(Attack):
    name = "reconstruction"
    n: int = 3  # images generated per caption (the paper's num_validation_images); generation calls per sample
    steps: int = 30  # DDIM steps of each generation (the paper's README: 30 inference steps)
    similarity: str = "ssim"  # pixel | latent | ssim | embedding
    embedding: dict | None = None  # similarity=embedding: {_target_: <callable or factory>, ...its kwargs}
    seed: int = 0  # seeds the generations' starting noise (per sample and generation)

    def __post_init__(self) -> None:
        super().__post_init__()  # types first: n=2.5 is refused, not truncated
        require_integer("attack.n", self.n, minimum=1)
        require_integer("attack.steps", self.steps, minimum=1)
        require(self.similarity in SIMILARITIES,
                f"attack.similarity must be one of {', '.join(SIMILARITIES)}, got {self.similarity!r}")
        if self.embedding is not None:
            require(isinstance(self.embedding, Mapping) and "_target_" in self.embedding,
                    f"attack.embedding must be a node with a _target_ (a callable or a factory of one), got "
                    f"{self.embedding!r}")
            require(self.similarity == "embedding", "attack.embedding is used by attack.similarity=embedding only; "
                                                    "set that, or leave attack.embedding=null")
            self.embedding = dict(self.embedding)
        self._embed = None

    def check(self, target: DiffusionTarget) -> None:
        if target.conditioning != "text":
            kind = "unconditional" if target.conditioning is None else f"{target.conditioning}-conditional"
            raise NotApplicable(f"{self.name} generates from each sample's caption and needs a text-conditional "
                                f"target; {target.name} is {kind}")
        require(self.steps <= target.num_timesteps,
                f"attack.steps must be at most the target's {target.num_timesteps} timesteps, got {self.steps}")
        if self.similarity == "ssim":
            check_ssim_size(target.image_shape, "attack.similarity")
        if self.similarity == "embedding" and self._embed is None:
            self._embed = build_embedding(self.embedding)

    def settings(self) -> dict[str, Any]:
        """The settings, with the cost they define spelled out (denoiser steps per generation, per sample)."""
        return {**super().settings(), "denoiser_steps_per_generation": self.steps,
                "generation_calls_per_sample": self.n}

    def inputs(self, target: DiffusionTarget, batch: dict[str, Any], noise: SampleNoise) -> tuple[torch.Tensor, Any]:
        """The images themselves (in [-1, 1]) and their captions' conditions."""
        return to_model_range(batch["image"]), target.conditions(batch, self.guidance_scale)

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        """Scores [B]: the mean similarity of n generations to each image (``x0`` holds the images)."""
        images = x0
        if not any(c.strip() for c in cond.captions):
            raise MiaError(f"{self.name} generates from each sample's caption, but every caption of the batch is "
                           "empty (data.caption=none?); give the evaluation set its captions")
        latent = target.encode(images, noise) if self.similarity == "latent" else None
        if self.similarity == "embedding":
            if self._embed is None:
                self._embed = build_embedding(self.embedding)
            if isinstance(self._embed, torch.nn.Module):
                self._embed.to(images.device)
        total = torch.zeros(len(images), dtype=torch.float64, device=images.device)
        for stream in range(self.n):
            start = noise.randn(target.sample_shape, stream=stream, device=images.device)
            made = generate(target, cond, self.steps, start, decode=latent is None)
            if latent is not None:
                total += negative_squared_l2(made, latent)
            elif self.similarity == "pixel":
                total += negative_squared_l2(made, images)
            elif self.similarity == "ssim":
                total += ssim(made, images)
            else:
                total += cosine(self._embed, made, images)
        return total / self.n
