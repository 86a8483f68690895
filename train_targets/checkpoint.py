"""Reading a ``mia-train`` training checkpoint: the one place that knows its layout.

Lightning writes the checkpoint: ``hyper_parameters`` hold the UNet and scheduler configs, ``state_dict``
the weights under ``unet.`` (with EMA on, Lightning's weight averaging saves the average there, the
weights that get exported), and the data module's state (under its class name) the split it trained on.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from mia.errors import MiaError


@dataclass
class TrainingCheckpoint:
    unet: UNet2DModel
    scheduler: DDPMScheduler
    split: dict[str, Any]  # members, nonmembers, fingerprint as the data module saved them ({} if absent)
    step: int


def read_training_checkpoint(path: str | Path) -> TrainingCheckpoint:
    """The UNet (EMA weights when EMA was on), scheduler and split of a mia-train checkpoint."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        hparams = checkpoint["hyper_parameters"]
        if "text_encoder" in hparams:
            raise MiaError(f"{path} is a text-to-image training checkpoint; attack the folder its run exported")
        unet = UNet2DModel(**hparams["unet"])
        state = {k[len("unet."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("unet.")}
        unet.load_state_dict(state)
        scheduler = DDPMScheduler(**hparams["scheduler"])
    except (OSError, KeyError, RuntimeError, TypeError, EOFError, pickle.UnpicklingError) as err:
        raise MiaError(f"{path} is not a mia-train checkpoint: {err}") from err
    split = checkpoint.get("MemberDataModule", {})
    return TrainingCheckpoint(unet=unet, scheduler=scheduler, split=split, step=int(checkpoint.get("global_step", 0)))
