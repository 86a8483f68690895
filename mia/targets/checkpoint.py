"""A ``mia-train`` training checkpoint: reading it (the one place that knows its layout), and as a target.

Lightning writes the checkpoint: ``hyper_parameters`` hold the UNet and scheduler configs, ``state_dict``
the weights under ``unet.`` (with EMA on, Lightning's weight averaging saves the average there, the
weights that get exported), and the data module's state the split it trained on. Everything in it is
tensors and plain types, so it loads with ``torch.load(weights_only=True)``: reading a checkpoint from
elsewhere never runs code it carries. mia-train resumes from it with the same reader.

As a target (``target.checkpoint=``: leakage at points of training), the weights come from the checkpoint
and the labels from ``target.path/split.json``, so the split the checkpoint carries must be that one: a
checkpoint of another run would silently get wrong labels.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from mia.data.split import Split
from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.targets.identity import file_digest
from mia.targets.pipeline import unet_sample_shape
from mia.targets.weights import weights_only_refusal


@dataclass
class TrainingCheckpoint:
    unet: UNet2DModel
    scheduler: DDPMScheduler
    split: dict[str, Any]  # members, nonmembers, fingerprint as the data module saved them ({} if absent)
    step: int


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint's dictionary, loaded with ``weights_only=True``; one line when it holds anything else."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refusal = weights_only_refusal(err)
        if refusal.global_name is None:  # an opcode it does not take: a foreign or broken file
            raise MiaError(f"{path} is not a mia-train checkpoint (it does not load with torch.load("
                           f"weights_only=True): {refusal.reason})") from err
        raise MiaError(
            f"{path} holds a Python object ({refusal.global_name}) that would run code when loaded; mia refuses it "
            "(mia-train's checkpoints load with torch.load(weights_only=True))"
        ) from err
    except (OSError, EOFError, KeyError, RuntimeError) as err:
        raise MiaError(f"{path} is not a mia-train checkpoint ({type(err).__name__}: {err})") from err


def read_training_checkpoint(path: str | Path) -> TrainingCheckpoint:
    """The UNet (EMA weights when EMA was on), scheduler and split of a mia-train checkpoint."""
    path = Path(path)
    checkpoint = load_checkpoint_file(path)
    try:
        hparams = checkpoint["hyper_parameters"]
        if "text_encoder" in hparams:
            raise MiaError(f"{path} is a text-to-image training checkpoint; attack the folder its run exported")
        unet = UNet2DModel(**hparams["unet"])
        state = {k[len("unet."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("unet.")}
        unet.load_state_dict(state)
        scheduler = DDPMScheduler(**hparams["scheduler"])
    except (KeyError, RuntimeError, TypeError) as err:
        raise MiaError(f"{path} is not a mia-train checkpoint: {err}") from err
    return TrainingCheckpoint(unet=unet, scheduler=scheduler, split=saved_split(checkpoint),
                              step=int(checkpoint.get("global_step", 0)))


def saved_split(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The member split the data module saved (members, non-members, fingerprint), wherever Lightning put it.

    Lightning keys a data module's state by the module's class name; the split is recognised by its content,
    so the reader does not depend on what the training app calls its data module. {} when there is none.
    """
    for value in checkpoint.values():
        if isinstance(value, dict) and {"members", "nonmembers"} <= value.keys():
            return value
    return {}



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
