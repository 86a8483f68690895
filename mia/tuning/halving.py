"""Tuning by successive halving (``tune.search=halving``): the grid's choice at a fraction of its queries.

Every setting of the grid is scored on a small seeded, stratified part of the calibration samples (the same
number of halvings for members and non-members); the best fraction ``tune.keep`` of the settings is kept,
the samples are doubled, and so on until the last rung holds the whole calibration set, where the best
setting left wins (the first in grid order among ties, as in the grid). The parts are nested: a kept
setting keeps the features of the samples it was scored on, so each rung queries only the samples it adds.

Cost, per prediction group (settings that share predictions, e.g. NA's statistic, pay for them once) with
``q`` queries a sample, ``n0`` samples at the first rung and ``R`` doublings: the grid pays ``q·n0·2^R``; a
group alive until rung ``r`` pays ``q·n0·2^r`` (``q·n0`` at the first rung, then ``q·n0·2^(j-1)`` for the
samples rung ``j`` adds). With ``n`` settings in ``g`` groups and ``s_j = ⌈n·keep^j⌉`` settings alive at rung
``j``, the total is at most ``q·n0·(g + Σ_{j≥1} min(g, s_j)·2^(j-1))``: for unshared settings and
keep = 1/3 under ``2·q·n·n0``, i.e. ``2/2^R`` of the grid (keep = 1/2 would pay ``(1 + R/2)/2^R``).
Only the calibration samples are ever read; the evaluation samples play no part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mia.attacks.base import Attack
from mia.checks import require_integer, require_number
from mia.data.evaluation_set import EvaluationSet
from mia.errors import MiaError
from mia.scoring.engine import ScoringSettings, predict
from mia.targets.base import DiffusionTarget
from mia.tuning.grid import Tuning, check_tunable, criterion_value, fitting_candidates

log = logging.getLogger(__name__)

KEEP = 1 / 3  # the fraction of settings kept at each rung (tune.keep)
MIN_SAMPLES = 4  # members (and non-members) at the first rung, at least (tune.min_samples)


@dataclass
class HalvingTuning(Tuning):
    """The winner, with what each rung cost and what the full grid would have cost."""

    grid_queries: int = 0  # the full grid's calibration queries (shared predictions counted once)
    keep: float = KEEP
    rungs: list[dict[str, Any]] = field(default_factory=list)  # per rung: samples, settings, queries

    def record(self) -> dict[str, Any]:
        return {**super().record(), "search": "halving", "keep": self.keep, "grid_calibration_queries":
                self.grid_queries, "rungs": self.rungs}


def rung_sizes(members: int, nonmembers: int, min_samples: int) -> list[tuple[int, int]]:
    """(members, non-members) per rung: halved ``R`` times down to at least ``min_samples`` each, then doubled
    back up to every sample. Halving counts from the whole set down, so the last doubling lands on it exactly."""
    halvings = 0
    while math.ceil(min(members, nonmembers) / 2 ** (halvings + 1)) >= min_samples:
        halvings += 1
    return [(math.ceil(members / 2 ** k), math.ceil(nonmembers / 2 ** k)) for k in range(halvings, -1, -1)]


def sample_order(ids: Sequence[str], labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Members' and non-members' positions in a seeded order (a hash of each id: independent of order)."""
    def ranked(value: int) -> np.ndarray:
        rows = np.flatnonzero(labels == value)
        return np.array(sorted(rows, key=lambda row: hashlib.sha256(f"halving\0{seed}\0{ids[row]}".encode()).digest()),
                        dtype=np.int64)

    return ranked(1), ranked(0)


def kept_count(alive: int, keep: float) -> int:
    return max(1, math.ceil(alive * keep - 1e-9))  # 1e-9: 54 x (1/3) is 18, not 19, in floating point


def check_options(keep: Any, min_samples: Any, seed: Any) -> None:
    require_number("tune.keep", keep)
    if not 0 < keep < 1:
        raise MiaError(f"tune.keep must be a fraction in (0, 1) of the settings kept at each rung, got {keep!r}")
    require_integer("tune.min_samples", min_samples, minimum=1)
    require_integer("tune.seed", seed, minimum=0)


def halve(attack: Attack, grid: Mapping[str, Sequence[Any]], criterion: str, target: DiffusionTarget,
          calibration: EvaluationSet, settings: ScoringSettings, keep: float = KEEP, min_samples: int = MIN_SAMPLES,
          seed: int = 0) -> HalvingTuning:
    """Successive halving over ``grid`` on ``calibration``; the best setting left on the whole set wins."""
    check_tunable(attack, criterion)
    check_options(keep, min_samples, seed)
    labels = calibration.labels.numpy()
    candidates, table = [], []
    for setting, candidate in fitting_candidates(attack, grid, criterion, target, table):
        table.append({**setting, criterion: None, "samples": 0})
        candidates.append((len(table) - 1, setting, candidate))
    if not candidates:
        raise MiaError("no setting of tune.grid fits the target; widen the grid")

    members, nonmembers = sample_order(calibration.ids, labels, seed)
    sizes = rung_sizes(len(members), len(nonmembers), min_samples)
    features: dict[int, np.ndarray] = {}  # per table row: the features of the samples scored so far, in ``seen``
    seen = np.zeros(0, dtype=np.int64)
    alive, rungs, queries, per_sample = candidates, [], 0, {}
    for number, (n_members, n_nonmembers) in enumerate(sizes):
        previous = (0, 0) if number == 0 else sizes[number - 1]
        new = np.concatenate([members[previous[0]:n_members], nonmembers[previous[1]:n_nonmembers]])
        part = calibration.subset(new)
        seen = np.concatenate([seen, new])
        made, spent, values = set(), 0, []
        for row, setting, candidate in alive:
            predicted = predict(candidate, target, part, settings)
            # Settings that share predictions pay for them once, as in the grid (and the cache serves the rest).
            group = json.dumps(candidate.prediction_settings(), sort_keys=True, default=str)
            if group not in made:
                made.add(group)
                spent += predicted.queries
                per_sample.setdefault(group, predicted.queries / len(part))
            features[row] = predicted.features if number == 0 else np.concatenate([features[row], predicted.features])
            scores = candidate.score(torch.from_numpy(features[row])).to(torch.float64).numpy()
            value = criterion_value(scores, labels[seen], criterion)
            table[row].update({criterion: value, "samples": len(seen)})
            values.append((value, row, setting, candidate, scores))
        queries += spent
        rungs.append({"samples": len(seen), "settings": len(alive), "queries": spent})
        log.info("halving rung %d: %d settings on %d calibration samples, %d queries", number, len(alive), len(seen),
                 spent)
        values.sort(key=lambda entry: (-entry[0], entry[1]))  # best first; grid order among ties
        if number < len(sizes) - 1:
            survivors = {entry[1] for entry in values[:kept_count(len(alive), keep)]}
            alive = [entry for entry in alive if entry[0] in survivors]
            for row in {entry[1] for entry in values} - survivors:
                features.pop(row)  # eliminated: its features are not needed again
    value, _, chosen, winner, scores = values[0]
    calibration_scores = np.empty(len(calibration))
    calibration_scores[seen] = scores  # back to the calibration set's order
    grid_queries = round(sum(per_sample.values()) * len(calibration))
    log.info("tuning %s by successive halving on %d calibration samples: %s = %.4f at %s; %d calibration queries, "
             "the full grid %d (%.2f of it)", attack.name, len(calibration), criterion, value, chosen, queries,
             grid_queries, queries / max(grid_queries, 1))
    return HalvingTuning(winner, criterion, chosen, value, queries, calibration_scores, table, grid_queries, keep,
                         rungs)
