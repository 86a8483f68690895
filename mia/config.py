"""Hydra and OmegaConf helpers both entry points share: the config folder, resolvers, building objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mia.errors import MiaError

# Absolute, so the configs are found however the package was imported (console script, -m, tests).
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def _auto_precision() -> str:
    # bf16 autocast where the GPU has it; full precision on the CPU, where bf16 is slow.
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


if not OmegaConf.has_resolver("auto_precision"):
    OmegaConf.register_new_resolver("auto_precision", _auto_precision)


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, letting a MiaError raised by the built object through unwrapped."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, MiaError):
            raise err.__cause__ from None
        raise


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a group such as ``logger`` or ``callbacks`` (a dict of named configs)."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if node is not None and "_target_" in node]


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_name() -> str | None:
    """The multirun's folder name, used as the W&B group so a sweep's runs sit together."""
    return Path(HydraConfig.get().sweep.dir).name if is_multirun() else None


def absolute_root(data_config: dict[str, Any]) -> dict[str, Any]:
    """The data config with ``root`` made absolute, so the split record works from any directory."""
    if data_config.get("root"):
        data_config = dict(data_config, root=str(Path(data_config["root"]).expanduser().resolve()))
    return data_config


def build_loggers(cfg: DictConfig | None) -> list[Any]:
    """The configured Lightning loggers; W&B runs of one multirun share the sweep's name as their group."""
    if not cfg:
        return []
    cfg = cfg.copy()
    group = sweep_name()
    for node in cfg.values():
        if node is not None and "WandbLogger" in str(node.get("_target_", "")) and group and not node.get("group"):
            node.group = group
    return instantiate_group(cfg)
