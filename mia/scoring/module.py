"""The attack LightningModule: ``predict_step`` scores one batch of the evaluation set."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from mia.attacks.base import Attack
from mia.attacks.sample_noise import SampleNoise
from mia.data.images import to_model_range
from mia.scoring.cache import PredictionCache
from mia.targets.base import DiffusionTarget


class AttackModule(L.LightningModule):
    """Runs an attack against a target under Lightning's predict loop (devices, progress bar).

    With a cache, an attack that separates its model predictions from their aggregation (NA) reads
    the predictions from disk when they were made before, and writes them there when not. A fitted
    attack's batch output is its features [B, ...], not scores.
    """

    def __init__(self, target: DiffusionTarget, attack: Attack, cache: PredictionCache | None = None,
                 n_samples: int | None = None) -> None:
        super().__init__()
        self.target = target
        self.attack = attack
        self.cache = cache if attack.cacheable else None
        self.n_samples = n_samples
        attack.check(target)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        # Encoded and conditioned once per batch; every step of the attack reuses them.
        noise = SampleNoise(batch["key"], getattr(self.attack, "seed", 0))
        x0 = self.target.encode(to_model_range(batch["image"]), noise)  # a latent draw takes the sample's noise
        cond = self.target.conditions(batch, self.attack.guidance_scale)
        before = self.target.queries
        if self.cache is None:
            scores = self.attack.score(self.target, x0, noise, cond)
        else:
            start, stop = int(batch["index"][0]), int(batch["index"][-1]) + 1
            if stop - start != len(x0):
                raise ValueError("cached attacks need the evaluation set in order (shuffle=False)")
            if self.cache.complete:
                predictions = self.cache.read(start, stop).to(x0.device)
            else:
                predictions = self.attack.collect(self.target, x0, noise, cond)
                self.cache.write(start, predictions, self.n_samples)
            # A fitted attack's features go back as they are: it is fitted on the calibration part first.
            scores = predictions if self.attack.fitted else self.attack.aggregate(predictions)
        return {
            "index": batch["index"].cpu(),
            "score": scores.detach().to(torch.float64).cpu(),
            # Sample-forwards this batch made, counted by the hook on the denoiser.
            "queries": torch.tensor(self.target.queries - before),
        }
