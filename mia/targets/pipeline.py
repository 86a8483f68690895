"""Pixel-space diffusers pipeline folders as targets: what ``mia-train`` exports, or e.g. ``google/ddpm-cifar10-32``."""

from __future__ import annotations

import json
from pathlib import Path

from mia.data.split import Split
from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.targets.identity import file_digest


def read_model_index(path: Path) -> dict:
    """The folder's ``model_index.json``, refusing anything that is not a pipeline folder."""
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


def unet_sample_shape(config) -> tuple[int, int, int]:
    """(channels, height, width) a diffusers UNet takes, from its config."""
    size = config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return config.in_channels, height, width


def load_pipeline_target(path: str | Path) -> DiffusionTarget:
    """A pixel-space diffusers pipeline folder (``unet/`` + ``scheduler/``) as a DiffusionTarget."""
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(path).expanduser()
    index = read_model_index(path)
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
    return DiffusionTarget(unet, scheduler.alphas_cumprod, unet_sample_shape(unet.config), name=path.name,
                           identity=file_digest(*files))


def load_split(path: str | Path) -> Split | None:
    """The target's ``split.json``, or None when it has none (e.g. a pretrained pipeline)."""
    split_file = Path(path).expanduser() / "split.json"
    return Split.load(split_file) if split_file.is_file() else None
