"""``target=pipeline``: a diffusers pipeline folder (mia-train's export or any other), with its split.json.

Pixel-space folders (``DDPMPipeline``: unconditional or class-conditional) and latent text-to-image folders
(the ``StableDiffusionPipeline`` format, recognised by its ``vae/``) load alike; ``checkpoint`` attacks the
weights of one of the run's mia-train checkpoints instead, with the folder's split; ``lora`` attacks a LoRA
fine-tune of a Stable Diffusion folder (mia.targets.lora), with the adapter's split.
"""

from __future__ import annotations

from pathlib import Path

from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.targets.checkpoint import load_checkpoint_target
from mia.targets.latent import LATENT_MODES, is_latent_pipeline, load_latent_target
from mia.targets.lora import WEIGHT_NAMES, adapter_split, apply_lora, check_scale
from mia.targets.pipeline import load_pipeline_target, load_split, read_model_index


def load_folder(path: str, checkpoint: str | None = None, latent: str = "mean", null_class: int | None = None,
                lora: str | None = None, lora_scale: float = 1.0, lora_merge: bool = True,
                base_of: str | bool | None = False) -> DiffusionTarget:
    """The pipeline in ``path`` and the split in ``path/split.json`` (None when the folder has none).

    ``latent``: x0 of a latent pipeline is the VAE posterior's mean (``mean``) or a seeded draw (``sample``).
    ``null_class``: the label a class-conditional model was trained with for "no class" (for guidance).
    ``lora``: a LoRA adapter (file or folder, diffusers' format) on the Stable Diffusion folder ``path``, at
    ``lora_scale``, fused into the weights when ``lora_merge``; the split is then the adapter's, never the base's.
    ``base_of``: ``reference=base`` sets it to ``target.lora``: the base is the reference of that adapter, and
    without one (None) it would be the target itself, which is refused. False (the default): not a reference.
    """
    if not path:
        raise MiaError("target.path is not set; pass target.path=<folder exported by mia-train>")
    folder = Path(path).expanduser()
    if base_of is None or base_of == "":
        raise MiaError("reference=base attacks the base model of a LoRA fine-tune as the reference; set target.lora="
                       "<adapter> (without it the reference would be the target itself)")
    if lora is None and (lora_scale != 1.0 or lora_merge is not True):
        raise MiaError("target.lora_scale and target.lora_merge apply to a LoRA adapter; set target.lora=<adapter> "
                       "or leave them out")
    if lora is not None:
        if not str(lora).strip():
            raise MiaError("target.lora is empty; pass the adapter's folder or file, or leave target.lora out")
        if checkpoint:
            raise MiaError("target.checkpoint and target.lora both replace weights; give one")
        lora_scale = check_scale(lora_scale, lora_merge)
    _refuse_an_adapter_as_base(folder)
    index = read_model_index(folder)
    if is_latent_pipeline(index):
        if null_class is not None:
            raise MiaError(f"target.null_class is for class-conditional pixel models; {folder} is text-conditional")
        model = load_latent_target(folder, index, latent or "mean")
    elif lora is not None:
        raise MiaError(f"target.lora puts a LoRA adapter on a Stable Diffusion folder (unet/, vae/, text_encoder/ "
                       f"...); {folder} is a pixel-space pipeline. Leave target.lora out, or pass the adapter's base")
    else:
        if (latent or "mean") != "mean":
            choice = "" if latent in LATENT_MODES else f" (and must be one of {', '.join(LATENT_MODES)})"
            raise MiaError(f"target.latent={latent} is for latent pipelines; {folder} has no vae/{choice}")
        model = load_pipeline_target(folder, null_class=null_class)
    if lora is not None:
        apply_lora(model, folder, lora, lora_scale, lora_merge)
        split = adapter_split(Path(model.lora["adapter"]))  # the fine-tune's members; the base's split says nothing
    else:
        split = load_split(folder)
    if checkpoint:
        if model.is_latent:
            raise MiaError("target.checkpoint holds a pixel model's weights; it cannot replace a latent pipeline's")
        model = load_checkpoint_target(checkpoint, split)
        model.checkpoint = str(checkpoint)
    model.kind, model.source, model.split = "pipeline", str(folder.resolve()), split
    return model


def _refuse_an_adapter_as_base(folder: Path) -> None:
    """A LoRA export passed as target.path: say how to attack it."""
    if (folder / "model_index.json").is_file() or not any((folder / name).is_file() for name in WEIGHT_NAMES):
        return
    raise MiaError(f"{folder} is a LoRA adapter, not a pipeline folder; pass its base model as target.path and the "
                   f"adapter as target.lora={folder}")
