"""Targets as attacks see them: noise prediction, ᾱ, ``encode``, and a counter every forward pass goes through.

A target is loaded from a diffusers pipeline folder (what ``mia-train`` exports, or any pixel-space
pipeline such as ``google/ddpm-cifar10-32`` saved locally). Queries are counted by a forward hook on the
denoiser itself, so an attack cannot under-report them.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from torch import nn

from mia.cache import file_digest
from mia.data.split import Split
from mia.errors import MiaError


class DiffusionTarget(nn.Module):
    """A denoiser ``ε_θ(x_t, t)`` with its noise schedule; counts one query per sample per forward pass."""

    def __init__(
        self, denoiser: nn.Module, alphas_cumprod: torch.Tensor, name: str = "target", identity: str = ""
    ) -> None:
        super().__init__()
        self.denoiser = denoiser.eval().requires_grad_(False)
        # Kept as the scheduler computed it (float32 in diffusers, the values the model was trained with),
        # stored in float64 so that the coefficients derived from it add no rounding of their own.
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().to(torch.float64), persistent=False)
        self.name = name
        self.identity = identity  # a digest of the weights and schedule; keys the prediction cache
        self.queries = 0  # sample-forwards since construction (or since reset_queries)
        self.denoiser.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.queries += int(sample.shape[0])

    def reset_queries(self) -> None:
        self.queries = 0

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) the denoiser takes."""
        config = self.denoiser.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return config.in_channels, height, width

    def alpha_bar(self, t: int) -> float:
        return float(self.alphas_cumprod[t])

    def predict_noise(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """``ε_θ(x_t, t)`` for a batch at one timestep, as float32: one query per sample."""
        if not 0 <= t < self.num_timesteps:
            raise MiaError(f"timestep {t} is outside the model's schedule 0..{self.num_timesteps - 1}")
        timesteps = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        weight = next(self.denoiser.parameters(), None)  # none for the closed-form memoriser, which takes float64
        eps = self.denoiser(x_t if weight is None else x_t.to(weight.dtype), timesteps).sample.float()
        if not torch.isfinite(eps).all():
            bad = int((~torch.isfinite(eps.flatten(1))).any(1).sum())
            raise MiaError(
                f"the model's noise prediction at t={t} is NaN or infinite for {bad} of {len(eps)} samples; "
                "the target's weights are broken (check the training run's loss)"
            )
        return eps

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the x0 the denoiser works on (identity for pixel-space models)."""
        return images


def _read_model_index(path: Path) -> dict:
    index_file = path / "model_index.json"
    if not path.is_dir():
        raise MiaError(f"target {path} does not exist or is not a folder; pass target.path=<a mia-train export>")
    if not index_file.is_file():
        raise MiaError(
            f"{path} is not a target folder (no model_index.json); pass the folder mia-train exported "
            "(<run>/target) or a diffusers pipeline folder"
        )
    try:
        return json.loads(index_file.read_text())
    except json.JSONDecodeError as err:
        raise MiaError(f"{index_file} is not valid JSON: {err}") from err


def load_pipeline_target(path: str | Path) -> DiffusionTarget:
    """A pixel-space diffusers pipeline folder (``unet/`` + ``scheduler/``) as a DiffusionTarget."""
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(path).expanduser()
    index = _read_model_index(path)
    if "vae" in index:
        raise MiaError(
            f"{path} is a latent diffusion pipeline; this version attacks pixel-space pipelines only"
        )
    if "unet" not in index or "scheduler" not in index:
        raise MiaError(f"{path} has no unet/ and scheduler/; it is not a diffusion pipeline mia can attack")
    try:
        unet = UNet2DModel.from_pretrained(path, subfolder="unet")
        # Any DDPM-family scheduler config gives the same ᾱ; DDPMScheduler reads them all.
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    except (OSError, ValueError) as err:
        raise MiaError(f"cannot load the pipeline in {path}: {err}") from err
    if scheduler.config.prediction_type != "epsilon":
        raise MiaError(
            f"{path} predicts '{scheduler.config.prediction_type}', but the attacks need an ε-prediction model"
        )
    files = [*sorted(p for p in (path / "unet").iterdir() if p.is_file()), path / "scheduler" / "scheduler_config.json"]
    return DiffusionTarget(unet, scheduler.alphas_cumprod, name=path.name, identity=file_digest(*files))


def load_checkpoint_target(path: str | Path) -> DiffusionTarget:
    """The weights of a ``mia-train`` training checkpoint (the EMA weights when EMA was on) as a target."""
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(path).expanduser()
    if not path.is_file():
        raise MiaError(f"checkpoint {path} does not exist; pass target.checkpoint=<run>/checkpoints/<step>.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        hparams = checkpoint["hyper_parameters"]
        unet = UNet2DModel(**hparams["unet"])
        state = {k[len("unet."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("unet.")}
        unet.load_state_dict(state)
        scheduler = DDPMScheduler(**hparams["scheduler"])
    except (OSError, KeyError, RuntimeError, TypeError, EOFError, pickle.UnpicklingError) as err:
        raise MiaError(f"{path} is not a mia-train checkpoint: {err}") from err
    name = f"{path.parent.parent.name}/{path.stem}"
    return DiffusionTarget(unet, scheduler.alphas_cumprod, name=name, identity=file_digest(path))


def load_split(path: str | Path) -> Split | None:
    """The target's ``split.json``, or None when it has none (e.g. a pretrained pipeline)."""
    split_file = Path(path).expanduser() / "split.json"
    return Split.load(split_file) if split_file.is_file() else None
