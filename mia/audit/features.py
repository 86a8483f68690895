"""The per-sample features of dataset inference: what mia's attacks make of each sample, side by side.

Each feature attack runs through the scoring engine like any attack (the same counted queries, the same
prediction cache: a run after ``mia-attack`` with the same settings on the same samples re-queries nothing),
and its per-sample output (``aggregate``: NA's statistic, the loss at t, a learned attack's feature vector,
CLiD's five losses) becomes one or more columns. An attack that does not apply to the target (CLiD on a pixel
model) is left out and named.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mia.attacks.base import Attack
from mia.data.evaluation_set import EvaluationSet
from mia.errors import MiaError, NotApplicable
from mia.scoring.engine import ScoringSettings, predict
from mia.targets.base import DiffusionTarget

log = logging.getLogger(__name__)


@dataclass
class Features:
    """[N, F] features of an evaluation set, their column names, and what they cost."""

    values: np.ndarray
    columns: list[str]
    queries_per_sample: float = 0.0
    queries_this_run: int = 0
    device: str = "cpu"
    skipped: dict[str, str] = field(default_factory=dict)  # feature -> why it does not apply
    passes_per_sample: dict[str, float] = field(default_factory=dict)  # other passes (mia.scoring.engine.Predictions)


def collect_features(attacks: Mapping[str, Attack], target: DiffusionTarget, evalset: EvaluationSet,
                     scoring: ScoringSettings) -> Features:
    """Every feature attack over ``evalset``; constant columns are dropped (they carry nothing)."""
    blocks, columns, queries, this_run, skipped, device = [], [], 0.0, 0, {}, "cpu"
    passes: Counter[str] = Counter()
    for name, attack in attacks.items():
        try:
            attack.check(target)
        except NotApplicable as reason:
            skipped[name] = str(reason)
            log.info("audit: feature %s does not apply to this target: %s", name, reason)
            continue
        predicted = predict(attack, target, evalset, scoring)
        block = predicted.features.reshape(len(evalset), -1)
        blocks.append(block)
        columns += [name] if block.shape[1] == 1 else [f"{name}_{i}" for i in range(block.shape[1])]
        queries += predicted.queries / len(evalset)
        this_run += predicted.queries_this_run
        passes.update({kind: count / len(evalset) for kind, count in predicted.passes.items()})
        device = predicted.device
    if not blocks:
        raise MiaError("no feature of audit.features applies to this target; name attacks that do")
    values = np.concatenate(blocks, axis=1)
    varying = np.ptp(values, axis=0) > 0
    if not varying.any():
        raise MiaError("every feature is constant over the suspect and reference samples, so nothing can tell them "
                       "apart; check that the target's predictions depend on its input (a broken or untrained model?)")
    if not varying.all():
        log.info("audit: %d constant features left out: %s", int((~varying).sum()),
                 ", ".join(c for c, v in zip(columns, varying, strict=True) if not v))
    return Features(values[:, varying], [c for c, v in zip(columns, varying, strict=True) if v], queries, this_run,
                    device, skipped, dict(passes))
