"""The attack LightningModule: ``predict_step`` scores one batch of the evaluation set."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from mia.attacks.base import Attack, SampleNoise
from mia.data.images import to_model_range
from mia.targets import DiffusionTarget


class AttackModule(L.LightningModule):
    """Runs an attack against a target under Lightning's predict loop (devices, progress bar)."""

    def __init__(self, target: DiffusionTarget, attack: Attack) -> None:
        super().__init__()
        self.target = target
        self.attack = attack
        attack.check(target)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        x0 = self.target.encode(to_model_range(batch["image"]))
        noise = SampleNoise(batch["key"], getattr(self.attack, "seed", 0))
        before = self.target.queries
        scores = self.attack.score(self.target, x0, noise)
        return {
            "index": batch["index"].cpu(),
            "score": scores.detach().to(torch.float64).cpu(),
            # Sample-forwards this batch made, counted by the hook on the denoiser.
            "queries": torch.tensor(self.target.queries - before),
        }
