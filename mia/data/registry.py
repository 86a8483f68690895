"""Datasets by name: the loaders a data config (and a ``split.json``) may ask for.

A split record names its dataset by one of these names and the loader's keyword arguments, never by an
importable path: loading a downloaded target folder must not run code it names. Records written before
the registry (``_target_: mia.data.pools.DigitsPool`` and the like) still load when the path is one that
mia itself wrote; any other ``_target_`` is refused.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mia.data.captions import CaptionedFolderPool, flickr8k_pool
from mia.data.pools import DigitsPool, FolderPool, ImagePool, celeba_pool, cifar_pool
from mia.errors import MiaError

DATASETS: dict[str, Callable[..., ImagePool]] = {
    "digits": DigitsPool,
    "cifar10": cifar_pool,
    "cifar100": cifar_pool,
    "celeba": celeba_pool,
    "folder": FolderPool,
    "captioned_folder": CaptionedFolderPool,  # images + metadata.jsonl/csv captions (imagefolder convention)
    "flickr8k": flickr8k_pool,
}

# What split records of mia 0.1 named by `_target_`; mapped to a registry name (None: the record's `name`).
_LEGACY_TARGETS = {
    "mia.data.pools.DigitsPool": "digits",
    "mia.data.pools.FolderPool": "folder",
    "mia.data.pools.celeba_pool": "celeba",
    "mia.data.pools.cifar_pool": None,
}
# Keys of a split record's dataset entry that describe the data rather than configure the loader.
RECORD_KEYS = ("fingerprint", "pool_size")


def dataset_name(config: Mapping[str, Any]) -> str:
    """The registry name a data config or split record asks for (old records' ``_target_`` included)."""
    legacy = config.get("_target_")
    if legacy is not None:
        if legacy not in _LEGACY_TARGETS:
            raise MiaError(
                f"the dataset is named by code ({legacy}), which mia does not run; name one of "
                f"{', '.join(DATASETS)} in the record's `name` instead"
            )
        name = _LEGACY_TARGETS[legacy] or config.get("name")
    else:
        name = config.get("name")
    if name not in DATASETS:
        raise MiaError(f"unknown dataset {name!r}; the datasets are {', '.join(DATASETS)}")
    return name


def loader_arguments(config: Mapping[str, Any]) -> dict[str, Any]:
    """The loader's keyword arguments from a data config (registry name, record-only keys and `_target_` out)."""
    arguments = {k: v for k, v in config.items() if k not in ("_target_", *RECORD_KEYS)}
    name = dataset_name(config)
    arguments["name"] = name
    return arguments


def build_pool(config: Mapping[str, Any]) -> ImagePool:
    """The image pool a data config describes; an unknown key is named with the keys that exist."""
    name = dataset_name(config)
    arguments = loader_arguments(config)
    factory = DATASETS[name]
    accepted = set(inspect.signature(factory).parameters)
    unknown = sorted(set(arguments) - accepted)
    if unknown:
        raise MiaError(f"data.{unknown[0]} is not a setting of the {name} dataset; its settings are "
                       f"{', '.join(sorted(accepted))}")
    return factory(**arguments)


def with_absolute_root(config: Mapping[str, Any]) -> dict[str, Any]:
    """The data config with ``root`` made absolute, so the split record works from any directory."""
    config = dict(config)
    if config.get("root"):
        config["root"] = str(Path(config["root"]).expanduser().resolve())
    return config
