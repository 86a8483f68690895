"""Hydra and OmegaConf helpers the library and both commands share: the config trees, resolvers, building objects.

The configs live in ``conf/``: ``conf/train/`` (mia-train's tree), ``conf/attack/`` (mia-attack's tree) and
``conf/audit/`` (mia-audit's), ``conf/common/`` (logger, paths, hydra: on every tree's search path, through the
``mia_conf`` resolver) and ``conf/query/`` (target, reference, the predict trainer: on the attack's and the
audit's). Separate trees, so that an attack cannot compose a training option by accident (``mia-attack
trainer=cpu`` is the attack's CPU trainer, never training's).

Everything built from a config goes through ``build`` (``hydra.utils.instantiate``), and a node's keys are
checked against the signature of what it builds first (``check_keys``): attacks and targets alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from mia.errors import MiaError

# Absolute, so the configs are found however the package was imported (console script, -m, tests).
CONF_ROOT = Path(__file__).resolve().parents[1] / "conf"
TRAIN_CONFIG_DIR = str(CONF_ROOT / "train")
ATTACK_CONFIG_DIR = str(CONF_ROOT / "attack")
AUDIT_CONFIG_DIR = str(CONF_ROOT / "audit")
# Keys Hydra itself reads from a node it instantiates.
HYDRA_KEYS = frozenset({"_target_", "_convert_", "_recursive_", "_partial_", "_args_"})


def _auto_precision() -> str:
    # bf16 autocast where the GPU has it; full precision on the CPU, where bf16 is slow.
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def config_dir(tree: str) -> str:
    """The folder of one config tree: ``train``, ``attack`` or ``common``."""
    return str(CONF_ROOT / tree)


def options(group: str) -> list[str]:
    """The option names of a config group of mia-attack's search path, e.g. ``options("attack")``: na, loss, ..."""
    return sorted(p.stem for tree in ("attack", "query") for p in (CONF_ROOT / tree / group).glob("*.yaml"))


for _name, _resolver in (("auto_precision", _auto_precision), ("mia_conf", config_dir)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, letting a MiaError raised by the built object through unwrapped."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, MiaError):
            raise err.__cause__ from None
        raise


def built_by(node: Mapping[str, Any], group: str, what: str, hint: str = "") -> Callable[..., Any]:
    """What ``<group>._target_`` names (a class or a function), refused in one line when it cannot be imported."""
    name = node.get("_target_")
    try:
        return get_object(str(name))
    except Exception as err:  # Hydra wraps every import failure in its own exception types
        raise MiaError(f"{group}._target_={name} is not {what} mia can import{hint}") from err


def settings_of(factory: Callable[..., Any]) -> tuple[list[str], bool]:
    """The keyword settings a class or function takes, and whether it takes any (``**kwargs``)."""
    parameters = inspect.signature(factory).parameters.values()
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind == p.VAR_KEYWORD for p in parameters)


def check_keys(node: Mapping[str, Any], factory: Callable[..., Any], group: str, what: str,
               hints: Mapping[str, str] | None = None) -> None:
    """Refuse a key the factory does not take, naming the keys it does (``hints``: a better word for some keys)."""
    names, open_ended = settings_of(factory)
    if open_ended:  # a factory taking **kwargs names no keys
        return
    unknown = sorted(key for key in node if key not in names and key not in HYDRA_KEYS)
    if unknown:
        key = unknown[0]
        hint = (hints or {}).get(key, "")
        raise MiaError(f"{group}.{key} is not a setting of {what}; its settings are {', '.join(names)}"
                       f"{'; ' + hint if hint else ''}")


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a group such as ``logger`` or ``callbacks`` (a dict of named configs)."""
    if not cfg:
        return []
    return [build(node) for node in cfg.values() if node is not None and "_target_" in node]


def is_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (a sweep)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_name() -> str | None:
    """The multirun's folder name, used as the W&B group so a sweep's runs sit together."""
    return Path(HydraConfig.get().sweep.dir).name if is_multirun() else None


def build_loggers(cfg: DictConfig | None) -> list[Any]:
    """The configured Lightning loggers; W&B runs of one multirun share the sweep's name as their group."""
    if not cfg:
        return []
    cfg = cfg.copy()
    group = sweep_name()
    for node in cfg.values():
        if node is not None and "WandbLogger" in str(node.get("_target_", "")) and group and not node.get("group"):
            node.group = group
    loggers = instantiate_group(cfg)
    for logger in loggers:
        # Lightning's WandbLogger always passes `anonymous` (None when unset), which W&B now warns about
        # on every run; leaving it out means the same to W&B.
        init = getattr(logger, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous") is None:
            init.pop("anonymous", None)
    return loggers
