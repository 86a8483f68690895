"""The protocol applied to one attack's features: roles, fitting on the calibration part, metrics on the rest.

The attack is any object with the fitting half of the attack interface (``name``, ``learns_from_labels``,
``fit``, ``score``; mia.attacks.base): nothing here depends on how its features were made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from typing import Protocol as Structural

import numpy as np
import torch

from mia.errors import MiaError
from mia.evaluation.calibration import calibration_mask
from mia.evaluation.metrics import evaluate

log = logging.getLogger(__name__)


class Fittable(Structural):
    """What the protocol calls of an attack: fit on calibration rows, then score every row."""

    name: str
    learns_from_labels: bool

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]: ...

    def score(self, features: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Protocol:
    """What the protocol needs: the calibration fraction (0 = none), its seed, and the metrics' settings."""

    calibration: float | None = None  # None: 0.2 when anything is fitted, else 0 (mia.api.run_attack decides)
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
    return calibration_mask(ids, labels, protocol.calibration or 0.0, protocol.seed)


def apply(attack: Fittable, features: np.ndarray, labels: np.ndarray, mask: np.ndarray | None,
          protocol: Protocol) -> Outcome:
    """Fit what the attack fits on the calibration rows (``mask``), score every row, measure the evaluation rows."""
    if attack.learns_from_labels and mask is None:
        raise MiaError(f"{attack.name} fits its score on labelled samples; set protocol.calibration above 0")
    values = torch.from_numpy(features)
    chosen: dict[str, Any] = {}
    if mask is not None:
        chosen = attack.fit(values[torch.from_numpy(mask)], torch.from_numpy(labels[mask]))
        if chosen.get("warning"):
            log.warning("%s: %s", attack.name, chosen["warning"])
    scores = attack.score(values).detach().to(torch.float64).numpy()
    if scores.shape != (len(labels),):
        raise MiaError(f"{attack.name} gave scores of shape {list(scores.shape)}, not one per sample")
    return Outcome(scores, mask, measure(attack.name, scores, labels, mask, protocol), chosen)


def measure(name: str, scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None,
            protocol: Protocol) -> dict[str, Any]:
    """The metrics of the evaluation rows (every row when ``mask`` is None), and how many rows calibrated."""
    if not np.isfinite(scores).all():
        raise MiaError(f"{name} produced non-finite scores; the target's predictions are broken")
    keep = np.ones(len(labels), dtype=bool) if mask is None else ~mask
    metrics = evaluate(scores[keep], labels[keep], protocol.bootstrap, protocol.confidence, protocol.metrics_seed)
    metrics["n_calibration"] = 0 if mask is None else int(mask.sum())
    return metrics
