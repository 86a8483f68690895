"""The attack LightningModule: ``predict_step`` scores one batch of the evaluation set."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from mia.attacks.base import Attack
from mia.attacks.sample_noise import SampleNoise
from mia.scoring.cache import PredictionCache
from mia.targets.base import DiffusionTarget


def _rows(batch: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The rows ``keep`` (bool [B]) of a collated batch: tensors and lists alike."""
    picked = torch.nonzero(keep).flatten().tolist()
    return {k: v[keep.to(v.device)] if isinstance(v, torch.Tensor) else
            [v[i] for i in picked] if isinstance(v, (list, tuple)) else v for k, v in batch.items()}


def made(target: DiffusionTarget, before: dict[str, int]) -> dict[str, int]:
    """The target's passes apart from its queries (VAE, text encoder, backward, generation) since ``before``."""
    return {name: count - before.get(name, 0) for name, count in target.passes().items()
            if count - before.get(name, 0)}


class AttackModule(L.LightningModule):
    """Runs an attack against a target under Lightning's predict loop (devices, progress bar).

    What the attack collects (its model queries) is read from the cache for the rows it holds and computed,
    then cached, for the others; each batch's output is the attack's per-sample features (``aggregate``), of
    any shape past the batch dimension. Fitting and scoring happen after the loop, on every row at once
    (mia.evaluation.protocol).
    """

    def __init__(self, target: DiffusionTarget, attack: Attack, cache: PredictionCache | None = None) -> None:
        super().__init__()
        self.target = target
        self.attack = attack
        self.cache = cache
        self.started: float | None = None
        attack.check(target)

    def on_predict_start(self) -> None:
        # The clock starts here, once every device is up: process start-up is not the attack's time.
        self.started = time.perf_counter()

    def _compute(self, batch: dict[str, Any]) -> torch.Tensor:
        # Encoded and conditioned once per batch; every step of the attack reuses them. The attack never sees
        # the labels.
        noise = SampleNoise(batch["key"], getattr(self.attack, "seed", 0))
        x0, cond = self.attack.inputs(self.target, {k: v for k, v in batch.items() if k != "label"}, noise)
        return self.attack.collect(self.target, x0, noise, cond)

    def _stored_or_computed(self, batch: dict[str, Any], index: torch.Tensor) -> torch.Tensor:
        assert self.cache is not None
        stored = self.cache.available(index)
        if stored.all():
            return self.cache.read(index).to(self.device)
        before, passes_before = self.target.queries, self.target.passes()
        fresh = self._compute(batch if not stored.any() else _rows(batch, ~stored))
        self.cache.add(index[~stored], fresh, self.target.queries - before, made(self.target, passes_before))
        if not stored.any():
            return fresh
        values = torch.empty((len(index), *fresh.shape[1:]), dtype=fresh.dtype, device=fresh.device)
        values[(~stored).to(fresh.device)] = fresh
        values[stored.to(fresh.device)] = self.cache.read(index[stored]).to(fresh.device)
        return values

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        index = batch["index"].cpu()
        before, passes_before = self.target.queries, self.target.passes()
        values = self._compute(batch) if self.cache is None else self._stored_or_computed(batch, index)
        return {
            "index": index,
            "features": self.attack.aggregate(values).detach().to(torch.float64).cpu(),
            # Sample-forwards this batch made, counted by the hook on the denoiser; the other networks' passes
            # (mia.targets.base.DiffusionTarget.passes) counted per batch too, so every device reports its own.
            "queries": torch.tensor(self.target.queries - before),
            "passes": made(self.target, passes_before),
        }
