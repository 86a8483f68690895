"""The noise schedule of a pipeline folder: ᾱ from the betas its scheduler config defines, DDPM family only.

Every attack here is written for the DDPM forward process ``x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε`` with an
ε-predicting model. The samplers of that family (DDPM, DDIM, PNDM, Euler, DPM-Solver, ...) share it: each
computes ᾱ from ``beta_start`` / ``beta_end`` / ``beta_schedule`` (or ``trained_betas``), so ᾱ is read by
instantiating the class the config names. Variance-exploding / score-SDE, EDM and flow-matching schedulers
define another process; their folders are refused rather than read as DDPM (issue 10, item 3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mia.errors import MiaError

# Schedulers whose config defines a discrete β schedule over num_train_timesteps (the DDPM forward process).
DDPM_FAMILY = frozenset({
    "DDPMScheduler", "DDPMParallelScheduler", "DDIMScheduler", "DDIMParallelScheduler", "DDIMInverseScheduler",
    "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverMultistepInverseScheduler", "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler", "SASolverScheduler",
    "LCMScheduler", "TCDScheduler", "RePaintScheduler",
})


class Schedule:
    """ᾱ (as the scheduler computes it) and the config facts attacks choose defaults by."""

    def __init__(self, class_name: str, alphas_cumprod: torch.Tensor, config: dict[str, Any]) -> None:
        self.class_name = class_name
        self.alphas_cumprod = alphas_cumprod
        self.beta_schedule = str(config.get("beta_schedule", "linear"))
        self.prediction_type = str(config.get("prediction_type", "epsilon"))


def read_schedule(path: Path, index: dict[str, Any] | None = None) -> Schedule:
    """The schedule in ``path/scheduler/``; refuses schedulers outside the DDPM family with one line.

    The class is the config's ``_class_name``, else the one ``model_index.json`` names.
    """
    import diffusers

    config_file = path / "scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        raise MiaError(f"{path} has no scheduler/scheduler_config.json; copy the whole pipeline folder")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise MiaError(f"{config_file} is not valid JSON: {err}") from err
    named = (index or {}).get("scheduler")
    class_name = config.get("_class_name") or (named[1] if isinstance(named, list) and len(named) == 2 else None)
    if not class_name:
        raise MiaError(f"{config_file} does not name its scheduler class (_class_name); mia cannot tell its "
                       "noise process. Add \"_class_name\": \"DDPMScheduler\" (or the class it was trained with)")
    if class_name not in DDPM_FAMILY or config.get("use_flow_sigmas"):
        raise MiaError(
            f"{path} uses {class_name}{' with flow sigmas' if config.get('use_flow_sigmas') else ''}, which is not a "
            "DDPM-family (β-schedule) noise process; mia's attacks need one (DDPM, DDIM, PNDM, Euler, DPM-Solver, ...)"
        )
    try:
        scheduler = getattr(diffusers, class_name).from_config(config)
    except (AttributeError, ValueError, TypeError, NotImplementedError) as err:
        raise MiaError(f"cannot build the {class_name} of {config_file}: {err}") from err
    schedule = Schedule(class_name, scheduler.alphas_cumprod.detach().clone(), config)
    if schedule.prediction_type != "epsilon":
        raise MiaError(f"{path} predicts '{schedule.prediction_type}', but the attacks need an ε-prediction model")
    return schedule
