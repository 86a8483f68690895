"""NA's timestep profile, scored: NA at several start timesteps on a subset of the evaluation set."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import torch

from mia.attacks.base import Attack
from mia.attacks.noise_aggregation import NoiseAggregation
from mia.data.evaluation_set import EvaluationSet
from mia.errors import MiaError
from mia.evaluation.profile import TimestepProfile, build_profile
from mia.scoring.engine import ScoringSettings, predict
from mia.targets.base import DiffusionTarget

log = logging.getLogger(__name__)


def check_profiled(attack: Attack) -> None:
    """The profile plots NA's aggregation statistic: other attacks have none."""
    if not isinstance(attack, NoiseAggregation):
        raise MiaError(f"report.profile is for the NA attack; {attack.name} has no aggregation statistic")


def timestep_profile(attack: NoiseAggregation, target: DiffusionTarget, evalset: EvaluationSet,
                     timesteps: Sequence[int], max_samples: int | None, settings: ScoringSettings) -> TimestepProfile:
    """NA at every start timestep in ``timesteps`` on up to ``max_samples`` members and non-members each."""
    check_profiled(attack)
    subset = evalset.first(max_samples)
    scores_by_t, queries = {}, 0
    for t in timesteps:
        at_t = dataclasses.replace(attack, t=int(t))
        try:
            at_t.check(target)
        except MiaError:
            log.warning("timestep profile: skipping t=%s, whose path %s leaves the schedule", t, at_t.timesteps())
            continue
        predicted = predict(at_t, target, subset, settings)
        scores_by_t[int(t)] = at_t.score(torch.from_numpy(predicted.features)).numpy()
        queries += predicted.queries
    if not scores_by_t:
        raise MiaError("report.profile_timesteps holds no timestep whose NA path fits the schedule")
    return build_profile(scores_by_t, subset.labels.numpy(), attack.statistic, attack.delta, queries / len(subset))
