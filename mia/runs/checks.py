"""Checks of an attack run's settings before anything is built or read: each bad knob is one line naming its key.

Knobs that Hydra accepts but that would mean something else (``data.batch_size=0``, ``metrics.confidence=95``,
``report.profile=no``), an attack setting that does not exist, a device without float64, a cache folder that
cannot be written: all stop the run here, before the target is loaded, so nothing is half-written.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mia.attacks.base import Attack, check_setting
from mia.checks import require_bool, require_integer, require_number
from mia.config import built_by, check_keys, options
from mia.errors import MiaError

_ABSENT = object()


def _integer(minimum: int, optional: bool = False) -> Callable[[str, Any], None]:
    return lambda key, value: require_integer(key, value, minimum=minimum, optional=optional)


def _text(optional: bool) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if not (isinstance(value, str) and value) and not (optional and value is None):
            raise MiaError(f"{key} must be a path{' or null' if optional else ''}, got {value!r}")

    return check


def _timesteps(key: str, value: Any) -> None:
    if not isinstance(value, (list, tuple, ListConfig)) or len(value) == 0:
        raise MiaError(f"{key} must be a non-empty list of integer timesteps, e.g. [40,80,120]; got {value!r}")
    for i, t in enumerate(value):
        require_integer(f"{key}[{i}]", t, minimum=0)


KNOBS: dict[str, Callable[[str, Any], None]] = {
    "data.root": _text(optional=True),
    "data.members": _text(optional=True),
    "data.nonmembers": _text(optional=True),
    "data.image_size": _integer(4, optional=True),
    "data.max_members": _integer(1, optional=True),
    "data.max_nonmembers": _integer(1, optional=True),
    "data.allow_unverified": require_bool,
    "data.batch_size": _integer(1),
    "data.num_workers": _integer(0),
    "metrics.bootstrap": _integer(0),
    "metrics.confidence": lambda key, value: require_number(key, value, 0.0, 1.0, open_interval=True),
    "metrics.seed": _integer(0),
    "report.top_k": _integer(0),
    "report.profile": require_bool,
    "report.profile_timesteps": _timesteps,
    "report.profile_max_samples": _integer(1, optional=True),
    "cache.enabled": require_bool,
    "cache.dir": _text(optional=True),
    "protocol.seed": _integer(0),
    "protocol.blind_control": require_bool,
    "compile": require_bool,
    "compile_mode": _text(optional=False),
    "compile_freeze": require_bool,
    "compile_channels_last": require_bool,
    "protocol.kind": lambda key, value: _choice(key, value, ("calibration", "shadow")),
}


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MiaError(f"{key} must be one of {', '.join(choices)} (choose protocol=<name>), got {value!r}")


def check_knobs(cfg: DictConfig) -> None:
    """Every knob of the data, metrics, report and cache sections that is present (see ``KNOBS``)."""
    for key, check in KNOBS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            check(key, value)


def attack_class(node: DictConfig, group: str = "attack") -> type[Attack]:
    """The attack class ``<group>._target_`` names, refused when it is none."""
    cls = built_by(node, group, "an attack", f"; choose attack=<{'|'.join(options('attack'))}>")
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise MiaError(f"{group}._target_={node.get('_target_')} is not an attack (a subclass of "
                       "mia.attacks.base.Attack)")
    return cls


def check_attack_settings(node: DictConfig, group: str = "attack") -> type[Attack]:
    """Unknown keys are named with the keys that exist; each known key is checked against its declared type."""
    cls = attack_class(node, group)
    check_keys(node, cls, group, f"the {cls.name} attack")
    types = {f.name: f.type for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    for name, annotation in types.items():
        if name in node:
            check_setting(name, node[name], annotation, group)
    return cls


# Keys users carry over from another target option, and where they belong.
_TARGET_HINTS = {
    "kind": "the kind of target is the option itself: target=pipeline | memorizer | module | pytorch_ddpm",
    **{key: "it is a setting of target=module (or target=pytorch_ddpm)" for key in (
        "module", "schedule", "betas_file", "timestep_input", "input_range", "sample_shape", "weights", "weights_key",
        "weights_prefix", "split")},
    **{key: "it is a setting of target=pipeline" for key in ("checkpoint", "latent", "null_class")},
}
# What to pass for a mandatory key (``???``) left unset.
_MANDATORY = {"path": "<folder exported by mia-train>", "weights": "<checkpoint>, e.g. ckpt.pt"}


def check_target_settings(node: DictConfig, group: str = "target") -> None:
    """The loader exists, takes every key given, and every mandatory key (``???``) is set (target or reference)."""
    loader = built_by(node, group, "a target loader", f"; choose {group}=<{'|'.join(options(group))}>")
    check_keys(node, loader, group, f"the {loader.__module__}.{loader.__name__} loader", _TARGET_HINTS)
    for key in node:
        if OmegaConf.is_missing(node, key):
            raise MiaError(f"{group}.{key} is not set; pass {group}.{key}={_MANDATORY.get(key, '<value>')}")


def runs_on_mps(accelerator: Any) -> bool:
    """Whether Lightning would put the run on an Apple-silicon GPU (MPS), as its ``auto`` and ``gpu`` choose."""
    from lightning.fabric.accelerators.mps import MPSAccelerator

    if isinstance(accelerator, (dict, DictConfig)):
        name = str(accelerator.get("_target_", ""))
    else:
        name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__
    name = name.lower()
    if "mps" in name:
        return True
    return name in ("auto", "gpu") and MPSAccelerator.is_available()


def check_device(trainer: DictConfig) -> None:
    """The attacks compute their moves and statistics in float64, which MPS devices lack: refused, not downcast."""
    accelerator = trainer.get("accelerator", "auto")
    if runs_on_mps(accelerator):
        raise MiaError(
            f"trainer.accelerator={accelerator} runs on an Apple-silicon GPU (MPS), which has no float64, and the "
            "attacks compute in float64; run on the CPU with trainer=cpu"
        )


def check_cache_dir(cfg: DictConfig) -> None:
    """With the cache on, the attack needs a folder it can write, known before any query is made."""
    if not cfg.cache.get("enabled"):
        return
    if cfg.cache.get("dir") is None:
        raise MiaError("cache.dir is not set; set cache.dir=<a writable folder> or cache.enabled=false")
    folder = Path(cfg.cache.dir).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise MiaError(f"cache.dir {folder} is not writable ({err.strerror or err}); set cache.dir=<a writable "
                       "folder> or cache.enabled=false") from err


def check_run(cfg: DictConfig) -> None:
    """All of the above, in the order a user would fix them."""
    check_knobs(cfg)
    check_attack_settings(cfg.attack)
    check_target_settings(cfg.target)
    if cfg.get("reference") and cfg.reference.get("path"):
        check_target_settings(cfg.reference, "reference")
    if cfg.get("trainer") is not None:
        check_device(cfg.trainer)
    check_cache_dir(cfg)

