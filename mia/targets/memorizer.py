"""The closed-form memorising target: the empirical optimal denoiser of a small training set.

``ε*(x_t, t) = (x_t − √ᾱ_t·Σ_i w_i x_i) / √(1−ᾱ_t)`` with
``w = softmax_i(−‖x_t − √ᾱ_t·x_i‖² / (2(1−ᾱ_t)))``: the exact minimiser of the DDPM loss on that set.
It memorises perfectly with no training, which makes attack tests fast and deterministic and gives
benchmarks an upper reference.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from mia.data.evaluation_set import from_split
from mia.data.images import to_model_range
from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.targets.latent import is_latent_pipeline
from mia.targets.pipeline import load_pipeline_target, load_split, read_model_index


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


def load_memorizer(path: str, data_root: str | None = None) -> DiffusionTarget:
    """``target=memorizer``: the closed-form memoriser of ``path``'s split members, on the folder's schedule.

    An upper reference for a trained target: it memorises exactly the members its split.json names (read from
    their dataset, ``data_root`` when it moved), so it is evaluated on that split only.
    """
    if not path:
        raise MiaError("target.path is not set; pass target.path=<folder exported by mia-train>")
    folder = Path(path).expanduser()
    trained = load_pipeline_target(folder) if not is_latent_pipeline(read_model_index(folder)) else None
    if trained is None or trained.conditioning is not None:
        raise MiaError("target=memorizer memorises pixel images without conditions; use target=pipeline")
    split = load_split(folder)
    if split is None:
        raise MiaError("target=memorizer memorises a split's members; the target has no split.json")
    # The memoriser learns whichever images it reads, so its labels hold with or without a fingerprint.
    members = from_split(split, data_root, max_nonmembers=1, allow_unverified=True)
    model = memorizing_target(to_model_range(members.stack(range(members.n_members))), trained.alphas_cumprod)
    model.kind, model.source, model.split = "memorizer", str(folder.resolve()), split
    model.split_only = ("target=memorizer memorises the split's members; it cannot be evaluated on data.members / "
                        "data.nonmembers folders, whose labels it does not know")
    return model
