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
from typing import Any

import torch
from torch import nn

from mia.errors import MiaError

SAFETENSORS = (".safetensors",)


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
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise MiaError(
                f"{path} holds a Python object ({found.group(1)}), not only tensors and plain values, so it loads "
                "only with torch.load(weights_only=False), which runs whatever code the file names; mia refuses "
                "it. Save the state dict alone, e.g. torch.save(model.state_dict(), 'weights.pt') or safetensors"
            ) from err
        raise MiaError(f"{path} is not a PyTorch weights file (torch.load failed: {_first_line(err)})") from err
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
