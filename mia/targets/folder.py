"""``target=pipeline``: a diffusers pipeline folder (mia-train's export or any other), with its split.json.

Pixel-space folders (``DDPMPipeline``: unconditional or class-conditional) and latent text-to-image folders
(the ``StableDiffusionPipeline`` format, recognised by its ``vae/``) load alike; ``checkpoint`` attacks the
weights of one of the run's mia-train checkpoints instead, with the folder's split.
"""

from __future__ import annotations

from pathlib import Path

from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.targets.checkpoint import load_checkpoint_target
from mia.targets.latent import LATENT_MODES, is_latent_pipeline, load_latent_target
from mia.targets.pipeline import load_pipeline_target, load_split, read_model_index


def load_folder(path: str, checkpoint: str | None = None, latent: str = "mean",
                null_class: int | None = None) -> DiffusionTarget:
    """The pipeline in ``path`` and the split in ``path/split.json`` (None when the folder has none).

    ``latent``: x0 of a latent pipeline is the VAE posterior's mean (``mean``) or a seeded draw (``sample``).
    ``null_class``: the label a class-conditional model was trained with for "no class" (for guidance).
    """
    if not path:
        raise MiaError("target.path is not set; pass target.path=<folder exported by mia-train>")
    folder = Path(path).expanduser()
    index = read_model_index(folder)
    if is_latent_pipeline(index):
        if null_class is not None:
            raise MiaError(f"target.null_class is for class-conditional pixel models; {folder} is text-conditional")
        model = load_latent_target(folder, index, latent or "mean")
    else:
        if (latent or "mean") != "mean":
            choice = "" if latent in LATENT_MODES else f" (and must be one of {', '.join(LATENT_MODES)})"
            raise MiaError(f"target.latent={latent} is for latent pipelines; {folder} has no vae/{choice}")
        model = load_pipeline_target(folder, null_class=null_class)
    split = load_split(folder)
    if checkpoint:
        if model.is_latent:
            raise MiaError("target.checkpoint holds a pixel model's weights; it cannot replace a latent pipeline's")
        model = load_checkpoint_target(checkpoint, split)
        model.checkpoint = str(checkpoint)
    model.kind, model.source, model.split = "pipeline", str(folder.resolve()), split
    return model
