"""The attack interface: hyperparameters as dataclass fields and ``score`` (clean x0 -> one score per sample).

See docs/architecture.md, "add an attack". An attack calls only ``target.predict_noise`` (and the moves in
``mia.attacks.moves``); it never touches files, loggers or metrics.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from mia.attacks.sample_noise import SampleNoise
from mia.errors import MiaError
from mia.targets.base import DiffusionTarget


@dataclasses.dataclass
class Attack(ABC):
    """Hyperparameters as dataclass fields; ``score`` maps clean x0 to one score per sample (higher = member)."""

    name: ClassVar[str] = "attack"
    # True for attacks with ``collect`` (model predictions) and ``aggregate`` (scores from them), whose
    # predictions can be cached; ``prediction_settings`` then names the settings the predictions depend on.
    cacheable: ClassVar[bool] = False
    # True for attacks whose score is fitted on labelled samples: ``collect`` gives per-sample features,
    # ``fit(features, labels)`` fits on the calibration part only (and returns what it chose), then
    # ``aggregate(features)`` scores every sample. Fitted attacks are cacheable too.
    fitted: ClassVar[bool] = False
    # Classifier-free guidance of conditional targets, applied inside the target's noise prediction (1 = the
    # conditional prediction alone; > 1 costs two queries a step). Every attack has it (attack.guidance_scale).
    guidance_scale: float = dataclasses.field(default=1.0, kw_only=True)

    @abstractmethod
    def score(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        """float64 [B] membership scores; ``cond`` is the batch's conditions (None for unconditional targets)."""

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """Fit on calibration features (fitted attacks only); returns what was chosen, for metrics.json."""
        raise NotImplementedError(f"{self.name} fits nothing")

    def check(self, target: DiffusionTarget) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Raise MiaError when the settings do not fit this target (before any query is made)."""

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def _check_timestep(target: DiffusionTarget, t: int, what: str) -> None:
        if not 0 <= t < target.num_timesteps:
            raise MiaError(f"{what} = {t} is outside the target's timesteps 0..{target.num_timesteps - 1}")


def require(condition: bool, message: str) -> None:
    """Validate a hyperparameter with a message naming the config key."""
    if not condition:
        raise MiaError(message)
