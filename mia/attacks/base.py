"""The attack interface: hyperparameters as dataclass fields, and four steps from model queries to scores.

Every attack goes through the same four steps (docs/architecture.md, "an attack"); the defaults make a simple
attack a short ``collect``:

- ``collect(target, x0, noise, cond)``: what costs model queries, per sample ([B, ...]); the prediction cache
  stores it, keyed by ``prediction_settings()``;
- ``aggregate(predictions)``: per-sample features, batch by batch (default: the predictions themselves);
- ``fit(features, labels)``: fitted on the calibration rows only (default: nothing to fit);
- ``score(features)``: one float64 score per sample, higher = member (default: the features, one per sample).

``inputs(target, batch, noise)`` gives ``collect`` its x0 and conditions (by default the target's encoding of
the batch's images and its conditions; a model-free control takes the images themselves). An attack calls
only ``target.predict_noise`` (and the moves in ``mia.attacks.moves``), or, if it is black-box, only the
generation calls of ``mia.targets.generation``; it never touches files, loggers or metrics: what it fitted and
anything worth a warning go back in ``fit``'s record.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from mia.attacks.sample_noise import SampleNoise
from mia.checks import require_bool, require_integer, require_number
from mia.data.images import to_model_range
from mia.errors import MiaError
from mia.targets.base import DiffusionTarget

CALIBRATIONS = ("none", "reference", "shadows")


@dataclasses.dataclass
class Attack(ABC):
    """Hyperparameters as dataclass fields; ``collect`` → ``aggregate`` → ``fit`` → ``score`` (higher = member)."""

    name: ClassVar[str] = "attack"
    # True when ``fit`` learns from labelled samples (a classifier, a threshold, a mixing weight): the protocol
    # then sets a calibration part aside by default and refuses to run the attack without one.
    learns_from_labels: ClassVar[bool] = False
    # Classifier-free guidance of conditional targets, applied inside the target's noise prediction (1 = the
    # conditional prediction alone; > 1 costs two queries a step). Every attack has it (attack.guidance_scale).
    guidance_scale: float = dataclasses.field(default=1.0, kw_only=True)
    # Which score is reported: the attack's own (none), or the target's minus a reference model's on the same
    # sample (reference: needs reference.path; docs/method.md, "controls"), or LiRA on shadow models (shadows:
    # needs protocol=shadow; docs/method.md, "Shadow models"). Every attack has it.
    calibration: str = dataclasses.field(default="none", kw_only=True)

    def __post_init__(self) -> None:
        """Each setting holds the type it is declared with: ``t=80.5`` is refused, never truncated to 80.

        Subclasses call this first from their own ``__post_init__``; a ``seed`` must be a non-negative integer.
        """
        check_field_types(self)
        require(self.calibration in CALIBRATIONS,
                f"attack.calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")

    def check(self, target: DiffusionTarget) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Raise MiaError when the settings do not fit this target (before any query is made)."""

    def inputs(self, target: DiffusionTarget, batch: dict[str, Any], noise: SampleNoise) -> tuple[torch.Tensor, Any]:
        """(x0, conditions) of a batch of the evaluation set (its images, ids' keys and conditions; no labels)."""
        x0 = target.encode(to_model_range(batch["image"]), noise)  # a latent draw takes the sample's noise
        return x0, target.conditions(batch, self.guidance_scale)

    @abstractmethod
    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        """The model's answers for a batch, [B, ...]: every query of the attack happens here (and is cached)."""

    def prediction_settings(self) -> dict[str, Any]:
        """The settings ``collect`` depends on (the cache key): all but how scores are calibrated, unless an
        attack says otherwise."""
        return {key: value for key, value in self.settings().items() if key != "calibration"}

    def aggregate(self, predictions: torch.Tensor) -> torch.Tensor:
        """Per-sample features from a batch of predictions (row by row, no labels): the predictions by default."""
        return predictions

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """Fit on the calibration rows' features and labels; returns what was chosen, for metrics.json."""
        return {}

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """float64 [N] membership scores, higher = member: the features themselves by default (one per sample)."""
        return features.to(torch.float64)

    def scores_of(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise,
                  cond: Any = None) -> torch.Tensor:
        """One batch through ``collect``, ``aggregate`` and ``score`` (an attack that learns must be fitted first)."""
        return self.score(self.aggregate(self.collect(target, x0, noise, cond)))

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def _check_timestep(target: DiffusionTarget, t: int, what: str) -> None:
        if not 0 <= t < target.num_timesteps:
            raise MiaError(f"{what} = {t} is outside the target's timesteps 0..{target.num_timesteps - 1}")


def _type_name(annotation: Any) -> str:
    # With ``from __future__ import annotations`` a field's type is its source text ("int"), else the class.
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")


def check_setting(name: str, value: Any, annotation: Any, group: str = "attack") -> None:
    """Refuse a setting of the wrong type, naming its key (``<group>.<name>``); other annotations are left alone."""
    key, kind = f"{group}.{name}", _type_name(annotation)
    if kind.endswith(" | None"):  # an optional setting: None, or a value of the type
        if value is None:
            return
        kind = kind.removesuffix(" | None")
    if kind == "int":
        require_integer(key, value, minimum=0 if name == "seed" else None)
    elif kind == "float":
        require_number(key, value)
    elif kind == "bool":
        require_bool(key, value)
    elif kind == "str" and not isinstance(value, str):
        raise MiaError(f"{key} must be a string, got {value!r}")


def check_field_types(attack: Any) -> None:
    """Every field of an attack (a dataclass) against its declared type."""
    for field in dataclasses.fields(attack):
        check_setting(field.name, getattr(attack, field.name), field.type)


def require(condition: bool, message: str) -> None:
    """Validate a hyperparameter with a message naming the config key."""
    if not condition:
        raise MiaError(message)
