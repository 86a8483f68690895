"""State-dict files for ``target.weights``: read safely (no arbitrary unpickling), pick the entry, check the keys.

``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``,
which accepts tensors and plain containers and numbers (what a ``pytorch-ddpm`` ``ckpt.pt`` holds) and
refuses any other Python object. Loading such an object would run code the file names, so mia refuses the
file rather than fall back to ``weights_only=False``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from mia.errors import MiaError

SAFETENSORS = (".safetensors",)


# torch's weights-only unpickler names the global it refuses in two wordings: "Unsupported global: GLOBAL x.y was
# not an allowed global by default" (older torch, and a module it does not block), and for the modules newer torch
# blocks outright (os, posix, nt, sys; torch 2.14 here) "Trying to load unsupported GLOBAL posix.system whose module
# posix is blocked". Matched case-insensitively, so either wording gives the global's name.
_REFUSED_GLOBAL = re.compile(r"unsupported (?:global: )?GLOBAL (\S+)", re.IGNORECASE)
# torch's advice around the reason: kept out of the one line mia shows.
_TORCH_ADVICE = ("In PyTorch", "This file can still be loaded", "Please file an issue", "Check the documentation",
                 "(1)", "(2)")


class Refusal(NamedTuple):
    """Why ``torch.load(weights_only=True)`` refused a file."""

    global_name: str | None  # the Python global the file names (e.g. posix.system): loading it would run code
    reason: str  # torch's own reason in one line, without its advice


def weights_only_refusal(err: pickle.UnpicklingError) -> Refusal:
    """The global a file names that torch's weights-only unpickler refused (None for another failure), and why."""
    text = str(err)
    found = _REFUSED_GLOBAL.search(text)
    detail = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip().removeprefix("Weights only load failed.").strip() for line in detail.splitlines()]
    reason = next((line for line in lines if line and not line.startswith(_TORCH_ADVICE)), type(err).__name__)
    return Refusal(found.group(1).rstrip(".") if found else None, reason)


def _read(path: Path) -> Any:
    if path.suffix in SAFETENSORS:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as err:
            raise MiaError(f"cannot read {path} as safetensors: {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refusal = weights_only_refusal(err)
        if refusal.global_name:
            raise MiaError(
                f"{path} holds a Python object ({refusal.global_name}) that would run code when loaded; mia refuses "
                "it. Save the state dict alone: torch.save(model.state_dict(), path) or safetensors"
            ) from err
        raise MiaError(f"{path} is not a PyTorch weights file (torch.load failed: {refusal.reason})") from err
    except (RuntimeError, OSError, EOFError) as err:
        raise MiaError(f"{path} is not a PyTorch weights file (torch.load failed: {_first_line(err)})") from err


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def read_state_dict(path: str | Path, key: str | None = None, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (its entry ``key`` when given), with ``prefix`` stripped from the names."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MiaError(f"weights file {path} does not exist; pass target.weights=<state-dict file>")
    content = _read(path)
    if key is not None:
        if path.suffix in SAFETENSORS:
            raise MiaError(f"target.weights_key={key} does not apply to {path.name}, a flat safetensors file; "
                           "set target.weights_key=null (and target.weights_prefix to strip a name prefix)")
        if not isinstance(content, Mapping) or key not in content:
            entries = ", ".join(map(str, content)) if isinstance(content, Mapping) else type(content).__name__
            raise MiaError(f"{path} has no entry {key!r} (it holds: {entries}); set target.weights_key to the one "
                           "holding the state dict")
        content = content[key]
    if not isinstance(content, Mapping):
        raise MiaError(f"{path} does not hold a state dict (found a {type(content).__name__}); "
                       "save one with torch.save(model.state_dict(), ...)")
    others = [name for name, value in content.items() if not isinstance(value, torch.Tensor)]
    if others:
        what = f"entry {key!r} of {path}" if key is not None else str(path)
        raise MiaError(
            f"{what} is not a state dict: {others[0]!r} is a {type(content[others[0]]).__name__}, not a tensor "
            f"(entries: {', '.join(map(str, list(content)[:8]))}); set target.weights_key to the entry holding "
            "the state dict, e.g. ema_model"
        )
    if prefix:
        return {name[len(prefix):] if name.startswith(prefix) else name: value for name, value in content.items()}
    return dict(content)


def load_weights(module: nn.Module, path: str | Path, key: str | None = None, prefix: str | None = None) -> None:
    """Load a state-dict file into ``module``; keys and shapes must match exactly."""
    state = read_state_dict(path, key, prefix)
    expected = module.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the module's keys are missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} keys are unexpected (first: {unexpected[0]})")
        raise MiaError(f"the weights in {path} do not fit the module: {'; '.join(parts)}. Check target.weights_key, "
                       "target.weights_prefix and the module's architecture settings")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise MiaError(
                f"the weights in {path} do not fit the module: {name} is {list(state[name].shape)} in the file but "
                f"{list(tensor.shape)} in the module; the architecture settings differ from the checkpoint's"
            )
    module.load_state_dict(state, strict=True)
