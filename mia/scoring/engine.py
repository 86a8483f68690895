"""Scoring: one attack over an evaluation set, through Lightning's predict loop, with the prediction cache.

``score`` returns the scores aligned with the evaluation set and what they cost (counted queries, seconds,
device). Nothing here computes a metric or writes a report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from mia import __version__
from mia.attacks.base import Attack
from mia.data.evaluation_set import EvaluationSet
from mia.errors import MiaError
from mia.scoring.cache import PredictionCache
from mia.scoring.module import AttackModule
from mia.targets.base import DiffusionTarget

log = logging.getLogger(__name__)


@dataclass
class ScoringSettings:
    """How to run the scoring loop (not what to compute)."""

    make_trainer: Callable[[], L.Trainer]  # a fresh predict Trainer per call (device, progress bar)
    batch_size: int = 64
    num_workers: int = 0
    cache_dir: str | None = None  # None: no prediction cache


@dataclass
class Scores:
    """An attack's scores over an evaluation set and what they cost."""

    values: np.ndarray  # float64 [N] scores (higher = member), or a fitted attack's features [N, ...]
    queries: int  # sample-forwards the predictions took when they were made (counted now or by the cache)
    queries_this_run: int  # sample-forwards this call made (0 on a cache hit)
    seconds: float
    device: str


def check_precision(trainer: L.Trainer) -> None:
    if str(trainer.precision) not in ("32-true", "64-true"):
        raise MiaError(
            f"trainer.precision={trainer.precision} would round ᾱ and the noise predictions the scores compare; "
            "attacks run in 32-true or 64-true"
        )


def prediction_cache(attack: Attack, target: DiffusionTarget, evalset: EvaluationSet, trainer: L.Trainer,
                     cache_dir: str | None) -> PredictionCache | None:
    """The cache for this attack's predictions, or None when caching is off or the attack cannot be cached."""
    if cache_dir is None or not attack.cacheable:
        return None
    key = {
        "format": f"mia-{__version__}",  # a change to how predictions are made must miss old caches
        "attack": attack.name,
        **attack.prediction_settings(),
        "target": target.identity,
        "samples": evalset.digest,
        "device": trainer.strategy.root_device.type,
        "precision": str(trainer.precision),
    }
    cache = PredictionCache(cache_dir, key)
    if cache.complete:
        log.info("reusing cached predictions from %s: no model queries", cache.folder)
    return cache


def score(attack: Attack, target: DiffusionTarget, evalset: EvaluationSet, settings: ScoringSettings) -> Scores:
    """Run ``attack`` over ``evalset`` and return its scores in the evaluation set's order."""
    trainer = settings.make_trainer()
    check_precision(trainer)
    # TF32 matmuls and convolutions on NVIDIA GPUs carry ~1e-3 relative error, enough to blur how tightly
    # members' predictions cluster; attacks want true float32 on every device.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cache = prediction_cache(attack, target, evalset, trainer, settings.cache_dir)
    module = AttackModule(target, attack, cache, n_samples=len(evalset))
    loader = DataLoader(evalset, batch_size=settings.batch_size, shuffle=False, num_workers=settings.num_workers)
    started = time.perf_counter()
    batches = trainer.predict(module, dataloaders=loader)
    seconds = time.perf_counter() - started
    outputs = torch.cat([b["score"] for b in batches]).numpy()
    values = np.full((len(evalset), *outputs.shape[1:]), np.nan)
    values[torch.cat([b["index"] for b in batches]).numpy()] = outputs
    queries = int(sum(int(b["queries"]) for b in batches))
    if np.isnan(values).any():
        raise MiaError("the attack produced NaN scores; the target's predictions are broken")
    # The attack's cost is what the predictions took when they were made, counted then or now.
    cost = queries
    if cache is not None:
        cost = cache.queries if cache.complete else queries
        cache.finish(queries)
    return Scores(values, cost, queries, seconds, str(trainer.strategy.root_device))
