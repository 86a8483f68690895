"""Reading a ``mia-train`` training checkpoint: the one place that knows its layout.

Lightning writes the checkpoint: ``hyper_parameters`` hold the UNet and scheduler configs, ``state_dict``
the weights under ``unet.`` (with EMA on, Lightning's weight averaging saves the average there, the
weights that get exported), and the data module's state (under its class name) the split it trained on.
Everything in it is tensors and plain types, so it loads with ``torch.load(weights_only=True)``: reading a
checkpoint from elsewhere never runs code it carries.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from mia.errors import MiaError
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
    split = checkpoint.get("MemberDataModule", {})
    return TrainingCheckpoint(unet=unet, scheduler=scheduler, split=split, step=int(checkpoint.get("global_step", 0)))
