"""``target=module``: any PyTorch denoiser, built by a factory the user names (docs/target_interface.md).

``target.module`` is a Hydra node (``_target_`` + arguments) returning an ``nn.Module`` whose
``forward(x_t, t)`` returns ε (a tensor, or an object with ``.sample``). What mia cannot guess comes with it:
the noise schedule (``target.schedule`` or ``target.betas_file``), what ``t`` is (``target.timestep_input``),
the image range the model was trained on (``target.input_range``), the input shape (``target.sample_shape``)
and, optionally, a state-dict file (``target.weights``, ``weights_key``, ``weights_prefix``).

The user's module sits inside an adapter (``ModuleDenoiser``) that converts the timesteps and checks the
output; DiffusionTarget's counting hook is on the adapter, which calls the module exactly once per forward.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.models.unets.unet_2d import UNet2DOutput
from hydra.errors import InstantiationException
from omegaconf import OmegaConf
from torch import nn

from mia.checks import require_integer
from mia.config import build
from mia.data.split import Split
from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.targets.identity import file_digest
from mia.targets.weights import load_weights, weights_only_refusal

log = logging.getLogger(__name__)

TIMESTEP_INPUTS = ("index", "fraction")
INPUT_RANGES = ((-1.0, 1.0), (0.0, 1.0))
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class ModuleDenoiser(nn.Module):
    """Adapts ``module(x_t, t) -> ε`` to the ``denoiser(sample, timestep).sample`` call DiffusionTarget makes."""

    def __init__(self, module: nn.Module, num_timesteps: int, timestep_input: str, name: str) -> None:
        super().__init__()
        self.module = module
        self.num_timesteps = num_timesteps
        self.timestep_input = timestep_input
        self.name = name

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> UNet2DOutput:
        # index: the integer 0..T-1 (long), as diffusers and pytorch-ddpm; fraction: t / T (float32).
        t = timestep if self.timestep_input == "index" else timestep.to(torch.float32) / self.num_timesteps
        output = self.module(sample, t)
        eps = output if isinstance(output, torch.Tensor) else getattr(output, "sample", None)
        if not isinstance(eps, torch.Tensor):
            raise MiaError(f"{self.name}(x_t, t) returned a {type(output).__name__}; its forward must return ε as a "
                           "tensor or as an object with .sample (docs/target_interface.md)")
        if eps.shape != sample.shape:
            raise MiaError(f"{self.name}(x_t, t) returned ε of shape {list(eps.shape)} for an input of shape "
                           f"{list(sample.shape)}; an ε-prediction model's output has its input's shape")
        return UNet2DOutput(sample=eps)


class ModuleTarget(DiffusionTarget):
    """A DiffusionTarget whose x0 is in the range the model was trained on ([-1, 1] or [0, 1])."""

    def __init__(self, *args: Any, zero_one: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.zero_one = zero_one

    def encode(self, images: torch.Tensor, noise: Any = None) -> torch.Tensor:
        """Images in [-1, 1] -> x0 in the model's range; the attacks then noise and denoise in that space.

        ``noise`` (the latent draw of latent targets) is unused: a pixel model's x0 is the image itself.
        """
        return (images + 1) / 2 if self.zero_one else images

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 in the model's range -> images in [-1, 1] (the inverse of ``encode``)."""
        return x0 * 2 - 1 if self.zero_one else x0


def _show(value: Any) -> str:
    return repr(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def _choice(target: Mapping[str, Any]) -> tuple[str, bool, tuple[int, int, int]]:
    """The validated timestep_input, whether inputs are [0, 1], and sample_shape."""
    timestep_input = target.get("timestep_input")
    if timestep_input not in TIMESTEP_INPUTS:
        raise MiaError(f"target.timestep_input must be index (0..T-1) or fraction (t / T), got {timestep_input!r}")
    value = target.get("input_range")
    try:
        bounds = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        bounds = ()
    if isinstance(value, str) or bounds not in INPUT_RANGES:
        raise MiaError(f"target.input_range must be [-1, 1] or [0, 1] (the image range the model was trained on), "
                       f"got {_show(value)}")
    shape = target.get("sample_shape")
    valid = isinstance(shape, Sequence) and len(shape) == 3
    valid = valid and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    if not valid:
        raise MiaError(f"target.sample_shape must be the model's input [C, H, W], e.g. [3, 32, 32]; got {_show(shape)}")
    return timestep_input, bounds == (0.0, 1.0), (int(shape[0]), int(shape[1]), int(shape[2]))


def read_betas(path: str | Path) -> torch.Tensor:
    """β_1..β_T from a .npy (no pickles) or .pt (tensors only) file, as float64."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MiaError(f"betas file {path} does not exist; pass target.betas_file=<.npy or .pt of the T betas>")
    try:
        if path.suffix == ".npy":
            betas = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            betas = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refusal = weights_only_refusal(err)
        if refusal.global_name:
            raise MiaError(f"{path} holds a Python object ({refusal.global_name}) that would run code when loaded; "
                           "mia refuses it. Save the betas alone: numpy.save to .npy, or torch.save a tensor") from err
        raise MiaError(f"cannot read the betas in {path}: {refusal.reason}") from err
    except Exception as err:  # numpy and torch raise many kinds for a file that is not theirs
        raise MiaError(f"cannot read the betas in {path}: {err}".splitlines()[0]) from err
    if not isinstance(betas, torch.Tensor) or betas.ndim != 1 or len(betas) < 2:
        raise MiaError(f"{path} must hold a 1-D array of the T betas")
    betas = betas.to(torch.float64)
    if not (torch.isfinite(betas).all() and (betas > 0).all() and (betas < 1).all()):
        raise MiaError(f"the betas in {path} must all lie in (0, 1)")
    return betas


def schedule_alphas(target: Mapping[str, Any]) -> torch.Tensor:
    """ᾱ_t of the model: from ``target.betas_file`` when set, else diffusers' DDPMScheduler on ``target.schedule``."""
    if target.get("betas_file"):
        log.info("noise schedule from %s (target.schedule is not used)", target["betas_file"])
        return torch.cumprod(1 - read_betas(target["betas_file"]), dim=0)
    from diffusers import DDPMScheduler

    schedule = dict(target.get("schedule") or {})
    if schedule.get("beta_schedule") not in BETA_SCHEDULES:
        raise MiaError(f"target.schedule.beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, "
                       f"got {schedule.get('beta_schedule')!r}")
    steps = schedule.get("num_train_timesteps")
    require_integer("target.schedule.num_train_timesteps", steps, minimum=2)
    try:
        scheduler = DDPMScheduler(num_train_timesteps=steps, beta_schedule=schedule["beta_schedule"],
                                  beta_start=float(schedule.get("beta_start")),
                                  beta_end=float(schedule.get("beta_end")))
    except (TypeError, ValueError) as err:
        raise MiaError(f"target.schedule is not a valid schedule: {err}") from err
    return scheduler.alphas_cumprod


def _make_importable() -> None:
    # Console scripts put their own bin/ folder first on sys.path, not the working directory (as `python -m`
    # does); a user's `their_file.load` should import from where they run mia-attack. Appended, so a local
    # file never shadows an installed package.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def build_module(node: Any) -> nn.Module:
    """Call the factory in ``target.module``; it must return an nn.Module."""
    name = node.get("_target_") if node is not None else None
    if not name:
        raise MiaError("target.module._target_ is not set; name the function or class that builds your denoiser, "
                       "e.g. target.module._target_=my_file.load (docs/target_interface.md)")
    _make_importable()
    try:
        module = build(node, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if "Error locating target" in str(err):
            detail = " ".join(str(cause).split()) if cause else str(err)
            raise MiaError(f"cannot import target.module._target_={name} ({detail}); mia-attack imports it from the "
                           f"working directory ({os.getcwd()}) or PYTHONPATH") from err
        raise MiaError(f"target.module ({name}) failed: {' '.join(str(cause or err).split())}") from err
    if not isinstance(module, nn.Module):
        raise MiaError(f"target.module ({name}) returned a {type(module).__name__}, not a torch.nn.Module; "
                       "the factory must return the denoiser itself")
    return module


def _identity(target: Mapping[str, Any], module: nn.Module, alphas: torch.Tensor) -> str:
    """A digest of the settings, ᾱ and the weights (the file's bytes, else the module's state dict)."""
    node = target.get("module")
    factory = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    settings = {key: target.get(key) for key in ("timestep_input", "sample_shape", "weights_key", "weights_prefix")}
    settings.update(module=factory, input_range=[float(v) for v in target.get("input_range")])
    digest = hashlib.sha256(json.dumps(OmegaConf.to_container(OmegaConf.create(settings)), sort_keys=True,
                                       default=str).encode())
    digest.update(alphas.detach().cpu().to(torch.float64).numpy().tobytes())
    if target.get("weights"):
        digest.update(file_digest(Path(target["weights"]).expanduser()).encode())
    else:
        for name, tensor in module.state_dict().items():
            value = tensor.detach().cpu().contiguous().flatten()
            digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}".encode())
            digest.update(value.view(torch.uint8).numpy().tobytes())
    return "module:" + digest.hexdigest()


def load_module_target(target: Mapping[str, Any]) -> DiffusionTarget:
    """The denoiser ``target.module`` builds, with its schedule, conventions and optional weights file."""
    timestep_input, zero_one, sample_shape = _choice(target)
    alphas = schedule_alphas(target)
    module = build_module(target.get("module"))
    name = str(target["module"]["_target_"])
    if target.get("weights"):
        load_weights(module, target["weights"], target.get("weights_key"), target.get("weights_prefix"))
        name = Path(target["weights"]).name
    elif target.get("weights_key") or target.get("weights_prefix"):
        raise MiaError("target.weights_key / target.weights_prefix are set but target.weights is not; "
                       "pass target.weights=<state-dict file>")
    identity = _identity(target, module, alphas)
    adapter = ModuleDenoiser(module, len(alphas), timestep_input, str(target["module"]["_target_"]))
    model = ModuleTarget(adapter, alphas, sample_shape, name=name, identity=identity, zero_one=zero_one)
    _probe(model)
    return model


@torch.no_grad()
def _probe(model: DiffusionTarget) -> None:
    """One forward at the schedule's first and last timesteps, so a misfit stops the run before any attack."""
    x = torch.zeros(2, *model.sample_shape, dtype=torch.float32)
    weight = next(model.denoiser.parameters(), None)
    timesteps = torch.tensor([0, model.num_timesteps - 1])
    try:
        model.denoiser(x if weight is None else x.to(weight.dtype), timesteps)
    except MiaError:
        raise
    except Exception as err:  # whatever the user's forward raises on a misfit input
        raise MiaError(f"the module failed on an input of shape {list(x.shape)} at t = 0 and "
                       f"{model.num_timesteps - 1} ({type(err).__name__}: {' '.join(str(err).split())[:300]}); "
                       "check target.sample_shape, target.timestep_input and the schedule's length") from err
    finally:
        model.reset_queries()


def read_split_file(path: str | None) -> Split | None:
    """The split.json that labels a module target's samples (None: the evaluation set comes from folders)."""
    if not path:
        return None
    path = Path(path).expanduser()
    if path.suffix == ".npz":
        raise MiaError(f"target.split takes a split.json; convert {path.name} first: "
                       f"mia-split {path} --data cifar10 --root <dataset folder> --out split.json")
    if not path.is_file():
        raise MiaError(f"split file {path} does not exist; pass target.split=<split.json from mia-split or mia-train>")
    return Split.load(path)


def load_module(module: Any = None, schedule: Any = None, betas_file: str | None = None,
                timestep_input: str = "index", input_range: Sequence[float] = (-1.0, 1.0),
                sample_shape: Sequence[int] | None = None, weights: str | None = None, weights_key: str | None = None,
                weights_prefix: str | None = None, split: str | None = None) -> DiffusionTarget:
    """``target=module`` (and ``target=pytorch_ddpm``): the denoiser ``module`` builds, labelled by ``split``.

    ``module`` is a Hydra node (``_target_`` + arguments) whose call returns the nn.Module; the other settings
    say what mia cannot guess (docs/target_interface.md). Without ``split``, the evaluation set is two folders.
    """
    settings = {"module": module, "schedule": schedule, "betas_file": betas_file, "timestep_input": timestep_input,
                "input_range": input_range, "sample_shape": sample_shape, "weights": weights,
                "weights_key": weights_key, "weights_prefix": weights_prefix}
    model = load_module_target(settings)
    model.kind, model.split = "module", read_split_file(split)
    model.source = str(Path(weights).expanduser().resolve()) if weights else str((module or {}).get("_target_"))
    return model
