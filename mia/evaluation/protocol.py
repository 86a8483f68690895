"""The protocol applied to one attack's output: roles, fitting on the calibration part, metrics on the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mia.attacks.base import Attack
from mia.errors import MiaError
from mia.evaluation.calibration import calibration_mask
from mia.evaluation.metrics import evaluate


@dataclass
class Protocol:
    """What the protocol needs: the calibration fraction (0 = none), its seed, and the metrics' settings."""

    calibration: float = 0.0
    seed: int = 0
    bootstrap: int = 1000
    confidence: float = 0.95
    metrics_seed: int = 0


@dataclass
class Outcome:
    scores: np.ndarray  # float64 [N], higher = member, for every sample (calibration rows included)
    calibration: np.ndarray | None  # bool [N]: True = calibration role; None = no calibration split
    metrics: dict[str, Any] = field(default_factory=dict)  # measured on the evaluation rows only
    chosen: dict[str, Any] = field(default_factory=dict)  # what was fitted on the calibration rows


def roles(ids: list[str], labels: np.ndarray, protocol: Protocol) -> np.ndarray | None:
    """True for calibration samples (None: no calibration part)."""
    return calibration_mask(ids, labels, protocol.calibration, protocol.seed)


def apply(attack: Attack, values: np.ndarray, labels: np.ndarray, mask: np.ndarray | None,
          protocol: Protocol) -> Outcome:
    """Fit what the attack fits on the calibration rows (``mask``), score every row, measure the evaluation rows."""
    chosen: dict[str, Any] = {}
    if attack.fitted:
        if mask is None:
            raise MiaError(f"{attack.name} fits its score on labelled samples; set protocol.calibration above 0")
        features = torch.from_numpy(values)
        chosen = attack.fit(features[torch.from_numpy(mask)], torch.from_numpy(labels[mask]))
        scores = attack.aggregate(features).detach().to(torch.float64).numpy()
    else:
        scores = values
    if not np.isfinite(scores).all():
        raise MiaError(f"{attack.name} produced non-finite scores; the target's predictions are broken")
    keep = np.ones(len(labels), dtype=bool) if mask is None else ~mask
    metrics = evaluate(scores[keep], labels[keep], protocol.bootstrap, protocol.confidence, protocol.metrics_seed)
    metrics["n_calibration"] = 0 if mask is None else int(mask.sum())
    return Outcome(scores, mask, metrics, chosen)
