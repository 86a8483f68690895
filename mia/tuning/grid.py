"""Tuning an attack's knobs on the calibration part: a grid, a criterion, one winner.

Every setting of the grid is scored on the calibration samples only; the criterion (AUC or TPR@1%FPR) is
measured there; the best setting (the first in grid order among ties) is then run once on the evaluation
samples. The evaluation samples are never scored while choosing, so they cannot influence the choice.
Predictions are cached as usual, so settings that share predictions (NA's statistic) cost them once.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mia.attacks.base import Attack
from mia.data.evaluation_set import EvaluationSet
from mia.errors import MiaError
from mia.evaluation.metrics import FPR_TARGETS, auc, roc_curve, tpr_at_fpr
from mia.scoring.engine import ScoringSettings, predict
from mia.targets.base import DiffusionTarget

log = logging.getLogger(__name__)

CRITERIA = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")


@dataclass
class Tuning:
    """The winner and how it was found."""

    attack: Attack  # the chosen setting
    criterion: str
    chosen: dict[str, Any]  # the winning knob values
    value: float  # the criterion on the calibration part
    queries: int  # sample-forwards the grid costs on the calibration part (shared predictions counted once)
    calibration_scores: np.ndarray  # the winner's scores of the calibration samples
    table: list[dict[str, Any]] = field(default_factory=list)  # every setting: knobs, criterion value or skip

    def record(self) -> dict[str, Any]:
        """What metrics.json keeps of the tuning."""
        return {"criterion": self.criterion, "chosen": self.chosen, "calibration_value": self.value,
                "calibration_queries": self.queries, "grid": self.table}


def grid_settings(attack: Attack, grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order; knobs must be the attack's own.

    A knob's values are a list, or a mapping from each value to the knobs that apply with it (a sub-grid, e.g.
    NA's ``injection: {schedule: {noise_scale: [...]}, absolute: {sigma: [...]}}``): each value is combined with
    its own sub-grid only, and a knob that belongs to another value's sub-grid is set to the attack's default
    there, so every setting names the same knobs and none carries a value that does not apply to it.
    """
    if not grid:
        raise MiaError("tune.grid is empty; give at least one knob with its values, e.g. tune.grid.t=[40,80]")
    fields = {f.name: f for f in dataclasses.fields(attack)}

    def values_of(knob: str, values: Any, where: str) -> list[list[dict[str, Any]]]:
        if knob not in fields:
            raise MiaError(f"{where}{knob} is not a knob of {attack.name}; its knobs are {', '.join(sorted(fields))}")
        if isinstance(values, Mapping) and values:  # value -> sub-grid
            subgrids = {value: dict(sub or {}) for value, sub in values.items()}
            others = {k for sub in subgrids.values() for k in sub}
            expanded = []
            for value, sub in subgrids.items():
                defaults = {k: _default(fields[k], where, k) for k in sorted(others - set(sub)) if k in fields}
                inner = product(sub, f"{where}{knob}.{value}.") if sub else [{}]
                expanded += [{knob: value, **setting, **defaults} for setting in inner]
            return [[setting] for setting in expanded]
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise MiaError(f"{where}{knob} must be a non-empty list of values (or a mapping from each value to the "
                           f"knobs that apply with it), got {values!r}")
        return [[{knob: value}] for value in values]

    def product(node: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
        axes = [values_of(knob, values, where) for knob, values in node.items()]
        settings = []
        for combo in itertools.product(*axes):
            merged: dict[str, Any] = {}
            for part in combo:
                for piece in part:
                    clash = set(piece) & set(merged)
                    if clash:
                        raise MiaError(f"{where.rstrip('.')} sets {sorted(clash)[0]} twice (at the top and inside "
                                       "a value's sub-grid); give each knob once")
                    merged.update(piece)
            settings.append(merged)
        return settings

    return product(grid, "tune.grid.")


def _default(field: dataclasses.Field, where: str, knob: str) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise MiaError(f"{where}{knob} has no default to fall back on where it does not apply; list it in every sub-grid")


def criterion_value(scores: np.ndarray, labels: np.ndarray, criterion: str) -> float:
    roc = roc_curve(scores, labels)
    return auc(roc) if criterion == "auc" else tpr_at_fpr(roc, FPR_TARGETS[criterion])


def check_tunable(attack: Attack, criterion: str) -> None:
    """Refuse a criterion tuning does not know, and an attack that fits its own score (nothing left to tune)."""
    if criterion not in CRITERIA:
        raise MiaError(f"tune.criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if attack.learns_from_labels:
        raise MiaError(f"{attack.name} fits its own score on the calibration part; tune= applies to attacks "
                       "that fit nothing")


def fitting_candidates(attack: Attack, grid: Mapping[str, Any], criterion: str, target: DiffusionTarget,
                       table: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Attack]]:
    """Each grid setting, in grid order, as an attack that fits the target; a setting the target refuses gets
    its "skipped" row in ``table`` instead (a search appends the rows of the others as it scores them)."""
    for setting in grid_settings(attack, grid):
        candidate = dataclasses.replace(attack, **setting)  # __post_init__ validates each value
        try:
            candidate.check(target)
        except MiaError as refusal:
            log.info("tuning: skipping %s, which does not fit the target: %s", setting, refusal)
            table.append({**setting, criterion: None, "skipped": str(refusal)})
            continue
        yield setting, candidate


def tune(attack: Attack, grid: Mapping[str, Any], criterion: str, target: DiffusionTarget,
         calibration: EvaluationSet, settings: ScoringSettings) -> Tuning:
    """Score every grid setting on ``calibration`` and return the best by ``criterion``."""
    check_tunable(attack, criterion)
    labels = calibration.labels.numpy()
    best: tuple[float, Attack, dict[str, Any], np.ndarray] | None = None
    table, queries, made = [], 0, set()
    for setting, candidate in fitting_candidates(attack, grid, criterion, target, table):
        predicted = predict(candidate, target, calibration, settings)
        # The grid's cost whether or not the cache was warm: settings that share predictions pay for them once.
        shared = json.dumps(candidate.prediction_settings(), sort_keys=True, default=str)
        if shared not in made:
            queries += predicted.queries
            made.add(shared)
        scores = candidate.score(torch.from_numpy(predicted.features)).to(torch.float64).numpy()
        value = criterion_value(scores, labels, criterion)
        table.append({**setting, criterion: value})
        if best is None or value > best[0]:
            best = (value, candidate, setting, scores)
    if best is None:
        raise MiaError("no setting of tune.grid fits the target; widen the grid")
    value, winner, chosen, calibration_scores = best
    log.info("tuning %s on %d calibration samples: %s = %.4f at %s (%d settings)", attack.name, len(calibration),
             criterion, value, chosen, len(table))
    return Tuning(winner, criterion, chosen, value, queries, calibration_scores, table)
