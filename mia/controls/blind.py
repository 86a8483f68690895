"""The model-free control on an evaluation set: can the two sets be told apart without the model at all?

Every evaluation set given as two folders is checked (mia.api.run_attack, mia-audit): the blind features of
mia.attacks.blind, a classifier cross-fitted over k folds (every sample scored by a classifier that never
saw it), the AUC of those out-of-fold scores with its bootstrap interval. When the interval lies above 0.5,
the folders differ in what the images show, and every attack's numbers on them include that difference.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from mia.attacks.blind import blind_classifier, blind_features, decision
from mia.data.evaluation_set import EvaluationSet
from mia.evaluation.metrics import evaluate

log = logging.getLogger(__name__)
CHUNK = 256  # images decoded at a time


def evaluation_features(evalset: EvaluationSet) -> np.ndarray:
    """The blind features of every sample, [N, F], read chunk by chunk (a streamed set decodes as it goes)."""
    captions = evalset.extras.get("caption")
    parts = []
    for start in range(0, len(evalset), CHUNK):
        rows = range(start, min(start + CHUNK, len(evalset)))
        parts.append(blind_features(evalset.stack(rows), None if captions is None else [captions[i] for i in rows]))
    return np.concatenate([p.numpy() for p in parts])


def cross_fitted(features: np.ndarray, labels: np.ndarray, folds: int, seed: int,
                 classifier: str = "logistic") -> np.ndarray:
    """Out-of-fold scores: each sample scored by a classifier fitted on the other folds (stratified, seeded)."""
    from sklearn.model_selection import StratifiedKFold

    scores = np.empty(len(labels))
    for fit_rows, held_out in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
        model = blind_classifier(classifier, seed).fit(features[fit_rows], labels[fit_rows])
        scores[held_out] = decision(model, features[held_out])
    return scores


def blind_control(evalset: EvaluationSet, folds: int = 5, seed: int = 0, bootstrap: int = 1000,
                  confidence: float = 0.95) -> dict[str, Any]:
    """The control's record: AUC and interval of the model-free classifier, and whether the sets differ.

    The interval is its own (``bootstrap`` resamples, whatever metrics.bootstrap says): the verdict needs one.
    """
    if bootstrap < 1:
        raise ValueError("the blind control decides by its AUC's interval: it needs bootstrap resamples")
    labels = evalset.labels.numpy().astype(int)
    smallest = int(min(labels.sum(), len(labels) - labels.sum()))
    if smallest < folds:
        return {"ran": False, "reason": f"{smallest} samples in the smaller set, fewer than the {folds} folds"}
    features = evaluation_features(evalset)
    measured = evaluate(cross_fitted(features, labels, folds, seed), labels, bootstrap, confidence, seed)
    low = measured["auc_ci"][0]
    record = {"ran": True, "auc": measured["auc"], "auc_ci": measured["auc_ci"], "folds": folds,
              "features": int(features.shape[1]), "differs": bool(low > 0.5)}
    if record["differs"]:
        record["warning"] = (f"the two sets differ without the model: a classifier that never queries it separates "
                             f"them at AUC {measured['auc']:.3f} [{low:.3f}, {measured['auc_ci'][1]:.3f}] (blind "
                             "control); every attack's numbers on these sets include that difference")
        log.warning("%s", record["warning"])
    return record
