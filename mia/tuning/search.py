"""A tune config (``tune=<grid>``) to its search: every setting (``grid``) or successive halving (``halving``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mia.attacks.base import Attack
from mia.data.evaluation_set import EvaluationSet
from mia.errors import MiaError
from mia.scoring.engine import ScoringSettings
from mia.targets.base import DiffusionTarget
from mia.tuning.grid import Tuning, tune
from mia.tuning.halving import KEEP, MIN_SAMPLES, check_options, halve

SEARCHES = ("grid", "halving")
HALVING_KEYS = ("keep", "min_samples", "seed")


def tune_on_calibration(attack: Attack, spec: Mapping[str, Any], target: DiffusionTarget, calibration: EvaluationSet,
                        settings: ScoringSettings) -> Tuning:
    """The search ``tune.search`` asks for over ``tune.grid`` by ``tune.criterion``, refusing keys it does not have.

    ``keep``, ``min_samples`` and ``seed`` shape successive halving; they are checked under either search (the
    tune configs carry them), and the grid, which scores every setting on every sample, has no use for them.
    """
    search = spec.get("search", "grid")
    if search not in SEARCHES:
        raise MiaError(f"tune.search must be one of {', '.join(SEARCHES)}, got {search!r}")
    known = {"grid", "criterion", "search", *HALVING_KEYS}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise MiaError(f"tune.{unknown[0]} is not a setting of tuning; its settings are {', '.join(sorted(known))}")
    grid = spec.get("grid") or {}
    if not isinstance(grid, Mapping):
        raise MiaError(f"tune.grid must be a mapping of knobs to their values, got {grid!r}")
    grid, criterion = dict(grid), spec.get("criterion", "auc")
    options = {"keep": spec.get("keep", KEEP), "min_samples": spec.get("min_samples", MIN_SAMPLES),
               "seed": spec.get("seed", 0)}
    check_options(**options)
    if search == "grid":
        return tune(attack, grid, criterion, target, calibration, settings)
    return halve(attack, grid, criterion, target, calibration, settings, **options)
