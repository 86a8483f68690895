"""Scoring: one attack over an evaluation set, through Lightning's predict loop, with the prediction cache.

``predict`` runs the attack's ``collect`` (every model query) and ``aggregate`` over the evaluation set and
returns the per-sample features in the evaluation set's order with what they cost (counted queries,
seconds, device), on one device or several (``mia.scoring.ranks``). With the cache, what ``collect``
returns is stored in chunks as it is made, so a killed run resumes (``mia.scoring.cache``). Fitting and
scoring the features is the protocol's (``mia.evaluation.protocol``); nothing here computes a metric or
writes a report.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from mia.attacks.base import Attack
from mia.data.evaluation_set import EvaluationSet
from mia.errors import MiaError
from mia.scoring.cache import evict
from mia.scoring.cache_key import prediction_cache
from mia.scoring.module import AttackModule
from mia.scoring.ranks import WholeBatches, assemble, check_devices, gather, wait_for_workers
from mia.scoring.stop import StopOnSigterm
from mia.targets.base import DiffusionTarget

log = logging.getLogger(__name__)


@dataclass
class ScoringSettings:
    """How to run the scoring loop (not what to compute)."""

    make_trainer: Callable[[], L.Trainer]  # a fresh predict Trainer per call (device, progress bar)
    batch_size: int = 64
    num_workers: int = 0
    cache_dir: str | None = None  # None: no prediction cache (and no resuming)
    chunk_size: int = 512  # samples per cache chunk: a killed run resumes from its last complete chunk
    max_gb: float | None = None  # bound on the cache folder, least recently used entries evicted (None: none)


@dataclass
class Predictions:
    """An attack's per-sample features over an evaluation set and what they cost."""

    features: np.ndarray  # float64 [N, ...]: what ``aggregate`` made of each sample's predictions
    queries: int  # sample-forwards the predictions took when they were made (counted now or by the cache)
    queries_this_run: int  # sample-forwards this call made, over every device (0 on a cache hit)
    seconds: float
    device: str
    main: bool = True  # False on the other ranks of a multi-device run: rank zero writes files and W&B
    # The other networks' passes the predictions took (VAE, text encoder, backward, generation: the target's
    # ``passes``), over every device, counted now or read with them from the cache.
    passes: dict[str, int] = field(default_factory=dict)


def check_precision(trainer: L.Trainer) -> None:
    if str(trainer.precision) not in ("32-true", "64-true"):
        raise MiaError(
            f"trainer.precision={trainer.precision} would round ᾱ and the noise predictions the scores compare; "
            "attacks run in 32-true or 64-true"
        )


def check_cache_settings(settings: ScoringSettings) -> None:
    size = settings.max_gb
    if size is not None and (isinstance(size, bool) or not isinstance(size, int | float) or not size > 0):
        raise MiaError(f"cache.max_gb must be a positive number of GB (or null: no bound), got {size!r}")


def predict(attack: Attack, target: DiffusionTarget, evalset: EvaluationSet, settings: ScoringSettings) -> Predictions:
    """Run ``attack``'s queries over ``evalset``; its features in the evaluation set's order, with their cost."""
    check_cache_settings(settings)
    trainer = settings.make_trainer()
    check_precision(trainer)
    check_devices(trainer, len(evalset), settings.batch_size)
    # TF32 matmuls and convolutions on NVIDIA GPUs carry ~1e-3 relative error, enough to blur how tightly
    # members' predictions cluster; attacks want true float32 on every device.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cache = prediction_cache(attack, target, evalset, trainer, settings.cache_dir, settings.chunk_size)
    module = AttackModule(target, attack, cache)
    loader = DataLoader(evalset, batch_size=settings.batch_size, sampler=WholeBatches(evalset, settings.batch_size),
                        num_workers=settings.num_workers)
    trainer.callbacks.append(StopOnSigterm())
    try:
        batches = trainer.predict(module, dataloaders=loader)
    finally:  # on a stop too: what was computed is kept (a rerun reads it and computes the rest)
        if cache is not None:
            cache.flush()  # before the exchange below, so rank zero finds every rank's chunks
    ranks = gather({"batches": batches, "read_cost": cache.read_cost if cache is not None else Fraction(0),
                    "read_passes": cache.read_passes if cache is not None else {}})
    seconds = time.perf_counter() - (module.started or time.perf_counter())
    features = assemble([b for rank in ranks for b in rank["batches"]], len(evalset)).numpy()
    bad = np.isnan(features.reshape(len(features), -1)).any(axis=1)
    if bad.any():
        raise MiaError(f"the attack produced NaN features for {int(bad.sum())} of {len(features)} samples; "
                       "the target's predictions are broken")
    queries = int(sum(int(b["queries"]) for rank in ranks for b in rank["batches"]))
    # The attack's cost is what the predictions took when they were made: counted now, or read with them.
    cost = queries + round(sum(rank["read_cost"] for rank in ranks))
    passes: Counter[str] = Counter()  # made now (per batch) and read from the cache, on every rank
    for counts in [b["passes"] for rank in ranks for b in rank["batches"]] + [rank["read_passes"] for rank in ranks]:
        passes.update(counts)
    main = trainer.is_global_zero
    if cache is not None and main:
        cache.finish()
        if settings.max_gb is not None:
            evict(cache.root, settings.max_gb, keep=cache.folder)
    wait_for_workers(trainer)
    device = trainer.strategy.root_device
    where = str(device) if trainer.world_size == 1 else f"{device.type} x {trainer.world_size}"
    return Predictions(features, cost, queries, seconds, where, main, {k: round(v) for k, v in passes.items()})
