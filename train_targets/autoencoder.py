"""The text-to-image target's autoencoder: trained first, on pool images outside the member split.

Stable Diffusion's autoencoder was trained on other data than the images a team fine-tunes on; the same
holds here: the VAE sees neither members nor non-members (pool images outside the split only), so it
cannot leak membership itself and the attacks measure the denoiser. The objective is the KL-regularised
reconstruction loss of latent diffusion (MSE + a small KL weight; no perceptual or adversarial term at
this size), and the latent scaling factor is 1 / std of the latents, as in the LDM paper.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from mia.data.images import load_images, to_model_range
from mia.data.pools import ImagePool
from mia.data.split import Split
from mia.errors import MiaError

log = logging.getLogger(__name__)


@dataclass
class AutoencoderTraining:
    """How the VAE is trained before the denoiser (``target.autoencoder.*``)."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6  # latent diffusion's KL weight
    images: int = 2048  # pool images outside the split to train on (fewer when the pool has fewer)
    seed: int = 0  # which images, their order and the posterior samples


def outside_split(pool: ImagePool, split: Split) -> list[int]:
    """Pool indices that are neither members nor non-members; refused when there are none."""
    taken = set(split.members) | set(split.nonmembers)
    free = [i for i, sample_id in enumerate(pool.ids) if sample_id not in taken]
    if not free:
        raise MiaError(
            f"the split takes all {len(pool)} pool images, so none is left to train the autoencoder on; "
            "lower split.members / split.nonmembers, or set target.vae_from=<a text-to-image folder>"
        )
    return free


def images_outside_split(pool: ImagePool, split: Split, count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Up to ``count`` seeded pool images that are neither members nor non-members, uint8 [N, C, H, W], and
    their ids (the split records them: ``also_trained_on``)."""
    chosen = np.random.default_rng(seed).permutation(outside_split(pool, split))[:count].tolist()
    images, _ = load_images(pool, chosen)
    return images, [pool.ids[i] for i in chosen]


def train_autoencoder(
    vae: AutoencoderKL, images: torch.Tensor, settings: AutoencoderTraining, device: torch.device,
    loggers: Sequence = (),
) -> float:
    """Fit the VAE to ``images`` (uint8) in place; returns the final reconstruction MSE (on [-1, 1] pixels)."""
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.lr)
    vae.to(device).train().requires_grad_(True)
    batch = min(settings.batch_size, len(images))
    mse = float("nan")
    for step in range(settings.steps):
        rows = torch.randint(0, len(images), (batch,), generator=generator)
        x = to_model_range(images[rows]).to(device)
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss_mse = F.mse_loss(reconstruction, x)
        loss = loss_mse + settings.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        mse = loss_mse.detach().item()
        if step % 100 == 0 or step == settings.steps - 1:
            log.info("autoencoder step %d/%d: reconstruction MSE %.4f", step + 1, settings.steps, mse)
            for logger in loggers:
                logger.log_metrics({"vae/mse": mse}, step=step)
    vae.eval().requires_grad_(False)
    return mse


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, images: torch.Tensor, device: torch.device, seed: int = 0) -> float:
    """1 / std of the latents of (up to 1,024 of) ``images``: the diffusion model then sees unit-variance inputs."""
    generator = torch.Generator(device).manual_seed(seed)
    latents = [vae.encode(to_model_range(images[start:start + 256]).to(device)).latent_dist.sample(generator)
               for start in range(0, min(len(images), 1024), 256)]
    return 1.0 / float(torch.cat(latents).float().std())
