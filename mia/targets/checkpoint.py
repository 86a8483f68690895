"""A ``mia-train`` training checkpoint as a target: leakage at points of training (``target.checkpoint=``).

The checkpoint's format belongs to training; it is read through ``train_targets.checkpoint``. The weights
come from the checkpoint and the labels from ``target.path/split.json``, so the split the checkpoint
carries must be that one: a checkpoint of another run would silently get wrong labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mia.data.split import Split
from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.targets.identity import file_digest
from mia.targets.pipeline import unet_sample_shape
from train_targets.checkpoint import read_training_checkpoint


def load_checkpoint_target(path: str | Path, split: Split | None = None) -> DiffusionTarget:
    """The weights of a ``mia-train`` checkpoint (the EMA weights when EMA was on) as a target.

    With ``split`` (the target folder's split.json), the checkpoint must have been trained on it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MiaError(f"checkpoint {path} does not exist; pass target.checkpoint=<run>/checkpoints/<step>.ckpt")
    trained = read_training_checkpoint(path)
    if split is not None:
        check_same_split(path, trained.split, split)
    name = f"{path.parent.parent.name}/{path.stem}"
    return DiffusionTarget(trained.unet, trained.scheduler.alphas_cumprod, unet_sample_shape(trained.unet.config),
                           name=name, identity=file_digest(path))


def check_same_split(path: Path, saved: dict[str, Any], split: Split) -> None:
    """Refuse a checkpoint whose split (members, non-members, fingerprint) is not ``split``."""
    fix = "pass the target.path of the run that wrote the checkpoint"
    if not saved:
        raise MiaError(f"checkpoint {path} records no member split, so the labels of target.path's split.json "
                       f"cannot be checked against it; {fix}")
    members, nonmembers = set(saved.get("members") or []), set(saved.get("nonmembers") or [])
    if members != set(split.members) or nonmembers != set(split.nonmembers):
        missing = len(set(split.members) - members)
        raise MiaError(
            f"checkpoint {path} was trained on another member split than target.path's split.json ({missing} of "
            f"its {len(split.members)} members are not among the checkpoint's), so the labels would be wrong; {fix}"
        )
    if saved.get("fingerprint") != split.dataset.get("fingerprint"):
        raise MiaError(f"checkpoint {path} was trained on other images than target.path's split.json records "
                       f"(the dataset fingerprints differ), so its labels would be wrong; {fix}")
