"""Pixel-space diffusers pipeline folders as targets: what ``mia-train`` exports, or e.g. ``google/ddpm-cifar10-32``."""

from __future__ import annotations

import json
from pathlib import Path

from mia.data.split import Split
from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.targets.class_conditional import ClassConditionalTarget, is_class_conditional
from mia.targets.identity import file_digest
from mia.targets.schedule import read_schedule


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


def load_pipeline_target(path: str | Path, null_class: int | None = None) -> DiffusionTarget:
    """A pixel-space diffusers pipeline folder (``unet/`` + ``scheduler/``) as a DiffusionTarget.

    A UNet2DModel with class embeddings becomes a class-conditional target (``null_class``: its "no class").
    """
    from diffusers import UNet2DModel

    path = Path(path).expanduser()
    index = read_model_index(path)
    if isinstance(index.get("vae"), list) and index["vae"][-1] is not None:
        raise MiaError(f"{path} is a latent diffusion pipeline; load it with mia.targets.folder.load_folder")
    if "unet" not in index or "scheduler" not in index:
        raise MiaError(f"{path} has no unet/ and scheduler/; it is not a diffusion pipeline mia can attack")
    if isinstance(index["unet"], list) and index["unet"][-1] not in ("UNet2DModel", None):
        raise MiaError(f"{path}'s unet is a {index['unet'][-1]}; pixel pipelines need a UNet2DModel (text-to-image "
                       "pipelines need a vae/, text_encoder/ and tokenizer/ too)")
    missing = [part for part in ("unet", "scheduler") if not (path / part).is_dir()]
    if missing:
        raise MiaError(f"{path}/{missing[0]}/ is missing although model_index.json lists it; copy the whole folder")
    schedule = read_schedule(path, index)  # refuses non-DDPM (e.g. variance-exploding) schedulers
    try:
        unet = UNet2DModel.from_pretrained(path, subfolder="unet")
    except (OSError, ValueError) as err:
        raise MiaError(f"cannot load the pipeline in {path}: {err}") from err
    files = [*sorted(p for p in (path / "unet").iterdir() if p.is_file()), path / "scheduler" / "scheduler_config.json"]
    identity = file_digest(*files)
    if is_class_conditional(unet.config):
        target = ClassConditionalTarget(unet, schedule.alphas_cumprod, unet_sample_shape(unet.config), null_class,
                                        name=path.name, identity=identity)
    elif null_class is not None:
        raise MiaError(f"target.null_class is for class-conditional models; {path} is unconditional")
    else:
        target = DiffusionTarget(unet, schedule.alphas_cumprod, unet_sample_shape(unet.config), name=path.name,
                                 identity=identity)
    target.beta_schedule = schedule.beta_schedule
    return target


def load_split(path: str | Path) -> Split | None:
    """The target's ``split.json``, or None when it has none (e.g. a pretrained pipeline)."""
    split_file = Path(path).expanduser() / "split.json"
    return Split.load(split_file) if split_file.is_file() else None
