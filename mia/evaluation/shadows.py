"""The shadow protocol (``protocol=shadow``): whatever an attack fits is fitted on shadow models, never on the target.

Shadow models are trained with the target's recipe on seeded draws of the target's evaluation samples
(``mia-train split.pool=<target>/split.json``), so for every evaluation sample some shadows trained on it and
others held it out: each shadow's split.json is its labels. The attack's features are computed on every
shadow over the evaluation samples; the rows in a shadow's split, with that shadow's labels, are what the
attack fits on (a classifier, a threshold, the score's orientation, LiRA's Gaussians). The target's features
are then scored with what was fitted; the target's labels only measure the result (docs/method.md,
"Shadow models").
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mia.controls.reference import check_comparable
from mia.data.registry import RECORD_KEYS
from mia.data.split import Split
from mia.errors import MiaError
from mia.evaluation.lira import IN, OUT, UNKNOWN, leave_one_out, lira
from mia.evaluation.metrics import auc, best_accuracy, roc_curve
from mia.evaluation.protocol import Fittable
from mia.targets.base import DiffusionTarget

log = logging.getLogger(__name__)
MIN_SHADOWS = 2


@dataclass
class ShadowFit:
    """The target's scores from what was fitted on the shadows, and what that was."""

    scores: np.ndarray  # float64 [N], higher = member: the target's, oriented (or LiRA's)
    chosen: dict[str, Any] = field(default_factory=dict)  # what the attack's own fit chose (its calibration record)
    record: dict[str, Any] = field(default_factory=dict)  # orientation, threshold, LiRA: metrics.json's shadows


def membership(split: Split, ids: Sequence[str]) -> np.ndarray:
    """IN / OUT / UNKNOWN of each evaluation sample for one shadow, from its split.json."""
    members, nonmembers = set(split.members), set(split.nonmembers)
    return np.array([IN if i in members else OUT if i in nonmembers else UNKNOWN for i in ids], dtype=np.int8)


def split_digest(split: Split) -> str:
    """sha256 of a split's member and non-member ids (which samples a shadow trained on, and held out)."""
    return "sha256:" + hashlib.sha256(json.dumps([split.members, split.nonmembers]).encode()).hexdigest()


def _dataset_settings(split: Split) -> dict[str, Any]:
    return {k: v for k, v in split.dataset.items() if k not in (*RECORD_KEYS, "root")}


def check_shadows(target: DiffusionTarget, shadows: Sequence[DiffusionTarget]) -> None:
    """Refuse, before any sample is read: too few shadows, another recipe, no split, the target itself."""
    if len(shadows) < MIN_SHADOWS:
        raise MiaError(f"protocol=shadow needs at least {MIN_SHADOWS} shadow models, got {len(shadows)}; train more "
                       "with mia-train split.pool=<target>/split.json split.seed=1,2,... (docs/method.md)")
    for shadow in shadows:
        where = f"the shadow model {shadow.source or shadow.name}"
        check_comparable(target, shadow, where)  # schedule, input shape, conditioning: the target's recipe
        if shadow.split is None:
            raise MiaError(f"{where} has no split.json, so which samples it trained on is unknown; give shadows "
                           "exported by mia-train")
        if target.identity is not None and shadow.identity == target.identity:
            raise MiaError(f"{where} is the target itself (the same weights); give models trained apart from it")
        if target.split is not None and _dataset_settings(shadow.split) != _dataset_settings(target.split):
            raise MiaError(f"{where} was trained on another dataset or preprocessing "
                           f"({_dataset_settings(shadow.split)}) than the target "
                           f"({_dataset_settings(target.split)}); its sample ids would name other images")


def memberships(shadows: Sequence[DiffusionTarget], ids: Sequence[str]) -> np.ndarray:
    """[K, N] memberships of the evaluation samples; each shadow must hold some of them in and some out."""
    rows = np.stack([membership(shadow.split, ids) for shadow in shadows])
    for shadow, row in zip(shadows, rows, strict=True):
        if not (row == IN).any() or not (row == OUT).any():
            raise MiaError(f"the shadow model {shadow.source or shadow.name} trained on {int((row == IN).sum())} and "
                           f"held out {int((row == OUT).sum())} of the evaluation samples; a shadow needs both. Draw "
                           "its split from the target's samples: mia-train split.pool=<target>/split.json")
    return rows


def fit_on_shadows(attack: Fittable, target_features: np.ndarray, shadow_features: Sequence[np.ndarray],
                   rows: np.ndarray, lira_calibration: bool) -> ShadowFit:
    """Fit on the shadows' rows (their own labels), score the target. No target label is an argument here."""
    chosen: dict[str, Any] = {}
    known = rows != UNKNOWN
    in_sample = None
    if attack.learns_from_labels:
        # A classifier scores the rows it was fitted on better than any other (GSA's trees separate them
        # perfectly), so what is chosen from the shadows' scores (direction, threshold, LiRA's Gaussians) is
        # chosen on each shadow scored by the attack fitted on the other shadows, as the target is scored by an
        # attack that never saw it. The final fit, on every shadow, is the one that scores the target.
        shadow_scores = np.stack([_fitted_without(attack, shadow_features, rows, k)
                                  for k in range(len(shadow_features))])
        chosen = _fit(attack, shadow_features, rows)
        if chosen.get("warning"):
            log.warning("%s: %s", attack.name, chosen["warning"])
        in_sample = np.stack([_scores(attack, f) for f in shadow_features])
    else:
        shadow_scores = np.stack([_scores(attack, f) for f in shadow_features])
    target_scores = _scores(attack, target_features)
    pooled = shadow_scores[known], rows[known]
    shadow_auc = auc(roc_curve(*pooled))
    # The direction "member" lies in, as the shadows show it: an attack that comes out inverted is turned round.
    orientation = 1.0 if shadow_auc >= 0.5 else -1.0
    record: dict[str, Any] = {
        "orientation": orientation, "auc_on_shadows": shadow_auc, "fitted_rows": int(known.sum()),
        "auc_per_shadow": [auc(roc_curve(s[k], r[k])) for s, r, k in zip(shadow_scores, rows, known, strict=True)],
    }
    if in_sample is not None:
        record["cross_fitted"] = ("leave one shadow out: auc_on_shadows, the orientation and the threshold are "
                                  "measured on each shadow scored by the attack fitted on the other shadows")
        record["auc_on_shadows_in_sample"] = auc(roc_curve(in_sample[known], rows[known]))
    if lira_calibration:
        scores, record["lira"] = lira(target_scores, shadow_scores, rows, orientation)
        try:  # the threshold on LiRA's scale: each shadow scored by the others
            threshold_on = leave_one_out(shadow_scores, rows, orientation, record["lira"]["mode"])
        except MiaError as err:
            threshold_on = None
            record["threshold_skipped"] = f"leave-one-shadow-out LiRA is not defined here: {err}"
    else:
        scores, threshold_on = orientation * target_scores, (orientation * pooled[0], pooled[1])
    if threshold_on is not None:
        accuracy, threshold = best_accuracy(roc_curve(*threshold_on))
        record["threshold"], record["balanced_accuracy_on_shadows"] = threshold, accuracy
    return ShadowFit(scores, chosen, record)


def at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """The target's rates at the threshold fitted on the shadows (measured, after the fit, with its labels)."""
    flagged = scores >= threshold
    tpr, fpr = float(flagged[labels == 1].mean()), float(flagged[labels == 0].mean())
    return {"threshold": threshold, "tpr": tpr, "fpr": fpr, "balanced_accuracy": (tpr + 1 - fpr) / 2}


def shadow_models_record(shadows: Sequence[DiffusionTarget], rows: np.ndarray) -> list[dict[str, Any]]:
    """Each shadow's identity and split, as metrics.json keeps them."""
    return [{"source": s.source or s.name, "kind": s.kind, "identity": s.identity, "split_seed": s.split.seed,
             "split_digest": split_digest(s.split), "dataset_fingerprint": s.split.dataset.get("fingerprint"),
             "drawn_from": s.split.drawn_from or None, "in": int((r == IN).sum()), "out": int((r == OUT).sum())}
            for s, r in zip(shadows, rows, strict=True)]


def _fit(attack: Fittable, shadow_features: Sequence[np.ndarray], rows: np.ndarray) -> dict[str, Any]:
    """The attack fitted on these shadows' rows (those in each one's split), with each shadow's labels."""
    known = rows != UNKNOWN
    features = np.concatenate([f[k] for f, k in zip(shadow_features, known, strict=True)])
    labels = np.concatenate([r[k] for r, k in zip(rows, known, strict=True)])
    return attack.fit(torch.from_numpy(features), torch.from_numpy(labels.astype(np.int64)))


def _fitted_without(attack: Fittable, shadow_features: Sequence[np.ndarray], rows: np.ndarray, k: int) -> np.ndarray:
    """Shadow k's scores from the attack fitted on every other shadow."""
    others = [j for j in range(len(shadow_features)) if j != k]
    _fit(attack, [shadow_features[j] for j in others], rows[others])
    return _scores(attack, shadow_features[k])


def _scores(attack: Fittable, features: np.ndarray) -> np.ndarray:
    scores = attack.score(torch.from_numpy(features)).detach().to(torch.float64).numpy()
    if scores.shape != (len(features),) or not np.isfinite(scores).all():
        raise MiaError(f"{attack.name} gave {list(scores.shape)} scores, not one finite score per sample")
    return scores
