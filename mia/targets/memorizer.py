"""The closed-form memorising target: the empirical optimal denoiser of a small training set.

``ε*(x_t, t) = (x_t − √ᾱ_t·Σ_i w_i x_i) / √(1−ᾱ_t)`` with
``w = softmax_i(−‖x_t − √ᾱ_t·x_i‖² / (2(1−ᾱ_t)))``: the exact minimiser of the DDPM loss on that set.
It memorises perfectly with no training, which makes attack tests fast and deterministic and gives
benchmarks an upper reference.
"""

from __future__ import annotations

import hashlib

import torch
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from mia.targets.base import DiffusionTarget


class MemorizingDenoiser(nn.Module):
    """``forward(sample, timestep).sample`` like diffusers' UNet2DModel, computed in closed form."""

    def __init__(self, train_images: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        channels, height, width = train_images.shape[1:]
        self.register_buffer("images", train_images.detach().to(torch.float64).flatten(1))
        self.register_buffer("images_sq", self.images.pow(2).sum(1))
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().to(torch.float64))
        self.shape = (channels, height, width)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int) -> UNet2DOutput:
        x = sample.to(torch.float64).flatten(1)
        t = torch.as_tensor(timestep, device=sample.device).expand(len(sample))
        a = self.alphas_cumprod[t].unsqueeze(1)  # [B, 1]
        # ‖x − √a·x_i‖² expanded, so no [B, N, D] tensor is formed.
        dist = x.pow(2).sum(1, keepdim=True) - 2 * a.sqrt() * (x @ self.images.T) + a * self.images_sq
        weights = torch.softmax(-dist / (2 * (1 - a)), dim=1)
        eps = (x - a.sqrt() * (weights @ self.images)) / (1 - a).sqrt()
        return UNet2DOutput(sample=eps.view_as(sample).to(sample.dtype))


def memorizing_target(train_images: torch.Tensor, alphas_cumprod: torch.Tensor) -> DiffusionTarget:
    """A DiffusionTarget that memorises ``train_images`` (float, in [-1, 1], [N, C, H, W])."""
    digest = hashlib.sha256(train_images.detach().cpu().to(torch.float32).numpy().tobytes())
    digest.update(alphas_cumprod.detach().cpu().to(torch.float64).numpy().tobytes())
    denoiser = MemorizingDenoiser(train_images, alphas_cumprod)
    return DiffusionTarget(denoiser, alphas_cumprod, denoiser.shape, name="memorizer",
                           identity="memorizer:" + digest.hexdigest())
