"""A ``mia-train`` training checkpoint as a target: leakage at points of training (``target.checkpoint=``).

The checkpoint's format belongs to training; it is read through ``train_targets.checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.targets.identity import file_digest
from mia.targets.pipeline import unet_sample_shape
from train_targets.checkpoint import read_training_checkpoint


def load_checkpoint_target(path: str | Path) -> DiffusionTarget:
    """The weights of a ``mia-train`` checkpoint (the EMA weights when EMA was on) as a target."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MiaError(f"checkpoint {path} does not exist; pass target.checkpoint=<run>/checkpoints/<step>.ckpt")
    trained = read_training_checkpoint(path)
    name = f"{path.parent.parent.name}/{path.stem}"
    return DiffusionTarget(trained.unet, trained.scheduler.alphas_cumprod, unet_sample_shape(trained.unet.config),
                           name=name, identity=file_digest(path))
