"""The key of a cache entry: everything the stored predictions depend on, and nothing else.

* the code that makes them: a sha256 over the source files of the prediction path (``prediction_path``):
  - always: ``mia.attacks.base``, ``moves``, ``sample_noise``; ``mia.data.images`` (uint8 -> [-1, 1]);
    ``mia.data.samples`` (each sample's noise key) and ``mia.data.evaluation_set`` (the items a batch holds);
    ``mia.scoring.module`` (predict_step) and ``mia.scoring.cache`` (the stored layout);
  - every module of the ``mia.targets`` package (ε_θ, encode, conditions, and the loaders that read the
    schedule and weights);
  - the attack's class and its bases, and every module the attack's module imports from (mia's or a
    plugin's), and any module outside the libraries below that defines the target's or its denoiser's class;
* the libraries under that code: torch, diffusers, numpy, transformers and lightning versions;
* what is attacked: the target's identity (a digest of its weights and schedule), the rows per denoiser pass
  (``target.micro_batch``: the round-off of the predictions depends on it) and the samples' digest;
* the settings the predictions depend on (the attack's ``prediction_settings``: NA's all but the statistic
  and δ, a learned attack's those of its features, other attacks' all), the device type and the precision.

Editing the metrics, the reports or the CLI keeps the entries; editing any file above misses them. A
target without an identity (built in code) gets no cache at all: two such targets could not be told apart.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
import pkgutil
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

import mia.targets
from mia.attacks.base import Attack
from mia.data.evaluation_set import EvaluationSet
from mia.scoring.cache import PredictionCache
from mia.targets.base import DiffusionTarget

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)

# The entries' layout: 3 stores the other networks' passes in each chunk (2 did not: its hits reported none);
# 2 was the first in chunks, 1 one flat file keyed on mia's version.
CACHE_FORMAT = 3
FIXED_MODULES = (
    "mia.attacks.base", "mia.attacks.moves", "mia.attacks.sample_noise", "mia.data.images", "mia.data.samples",
    "mia.data.evaluation_set", "mia.scoring.module", "mia.scoring.cache",
)
LIBRARIES = ("torch", "diffusers", "numpy", "transformers", "lightning")
_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.info(message)


def _outside_libraries(module: str | None) -> bool:
    top = (module or "builtins").split(".")[0]
    return top not in sys.stdlib_module_names and top not in LIBRARIES and top not in ("builtins", "typing_extensions")


def prediction_path(attack: Attack, target: DiffusionTarget) -> list[str]:
    """The modules whose source makes this attack's predictions on this target (see the module docstring)."""
    names = set(FIXED_MODULES)
    names |= {info.name for info in pkgutil.iter_modules(mia.targets.__path__, "mia.targets.")}
    for cls in (*type(attack).__mro__, *type(target).__mro__, *type(target.denoiser).__mro__):
        if _outside_libraries(cls.__module__):
            names.add(cls.__module__)
    for value in vars(sys.modules[type(attack).__module__]).values():
        owner = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        if isinstance(owner, str) and _outside_libraries(owner):
            names.add(owner)
    return sorted(names)


def code_digest(modules: list[str]) -> str | None:
    """sha256 over these modules' names and source files (read each time: a few small files); None when
    one has no readable source."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        try:
            path = importlib.import_module(name).__file__
            if path is None:
                return None
            with open(path, "rb") as handle:
                source = handle.read()
        except (ImportError, OSError):
            return None
        digest.update(f"{name}\n{len(source)}\n".encode() + source)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def cache_key(attack: Attack, target: DiffusionTarget, evalset: EvaluationSet, trainer: L.Trainer,
              code: str) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "code": code,
        "libraries": library_versions(),
        "attack": attack.name,
        "settings": attack.prediction_settings(),
        "target": target.identity,
        "micro_batch": target.micro_batch,
        "samples": evalset.digest,
        "device": trainer.strategy.root_device.type,
        "precision": str(trainer.precision),
    }


def prediction_cache(attack: Attack, target: DiffusionTarget, evalset: EvaluationSet, trainer: L.Trainer,
                     cache_dir: str | None, chunk_size: int) -> PredictionCache | None:
    """The cache entry of this run's predictions, or None (caching off, no target identity, no source)."""
    if cache_dir is None:
        return None
    if not target.identity:
        _say_once(f"the target {target.name} has no identity (built in code): its predictions are not cached, "
                  "and a killed run cannot resume")
        return None
    modules = prediction_path(attack, target)
    code = code_digest(modules)
    if code is None:
        _say_once("the prediction code's source files cannot be read: predictions are not cached")
        return None
    cache = PredictionCache(cache_dir, cache_key(attack, target, evalset, trainer, code), len(evalset), chunk_size)
    if cache.complete:
        log.info("reusing cached predictions from %s: no model queries", cache.folder)
    elif cache.stored_rows:
        log.info("resuming from %s: %d of %d samples are stored", cache.folder, cache.stored_rows, len(evalset))
    return cache
