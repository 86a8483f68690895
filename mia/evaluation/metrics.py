"""The evaluation protocol (docs/method.md, "the protocol"), the same for every attack.

Members are the positive class and scores are "higher = member". The ROC is exact (torchmetrics, no
threshold grid). Scores are first mapped to dense ranks in float64: torchmetrics applies a sigmoid to
inputs outside [0, 1], which would squash large scores into ties.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import binary_roc

FPR_TARGETS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}


@dataclass
class ROC:
    """ROC points from the strictest threshold (nothing flagged) to the loosest (everything flagged).

    ``thresholds[i]`` is on the score scale: point i flags samples with ``score ≥ thresholds[i]``.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def _as_arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError("scores and labels must be 1-D and of the same length")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if not set(np.unique(labels)) <= {0, 1} or labels.min() == labels.max():
        raise ValueError("labels must hold both members (1) and non-members (0)")
    return scores, labels


def roc_curve(scores, labels) -> ROC:
    """Exact ROC of membership scores (members = 1 are the positive class)."""
    scores, labels = _as_arrays(scores, labels)
    unique, ranks = np.unique(scores, return_inverse=True)
    # Dense ranks in [0, 1): ties stay ties, order is kept, and 1.0 stays free for the "flag nothing" point.
    preds = torch.from_numpy(ranks.astype(np.float64) / len(unique))
    fpr, tpr, thresholds = binary_roc(preds, torch.from_numpy(labels), thresholds=None)
    # torchmetrics returns float32 rates; the counts behind them are integers, so recover them exactly.
    n_pos, n_neg = int(labels.sum()), int(len(labels) - labels.sum())
    fpr = np.rint(fpr.double().numpy() * n_neg) / n_neg
    tpr = np.rint(tpr.double().numpy() * n_pos) / n_pos
    index = np.rint(thresholds.double().numpy() * len(unique)).astype(np.int64)
    score_thresholds = np.where(index < len(unique), unique[np.minimum(index, len(unique) - 1)], np.inf)
    return ROC(fpr=fpr, tpr=tpr, thresholds=score_thresholds)


def auc(roc: ROC) -> float:
    """Area under the exact ROC (ties count one half, as in the Mann–Whitney statistic)."""
    return float(np.trapezoid(roc.tpr, roc.fpr))


def tpr_at_fpr(roc: ROC, max_fpr: float) -> float:
    """The largest TPR among ROC points whose FPR is at most ``max_fpr`` (never the closest FPR above it)."""
    return float(roc.tpr[roc.fpr <= max_fpr].max())


def best_accuracy(roc: ROC) -> tuple[float, float]:
    """Best balanced accuracy over all thresholds and the threshold that reaches it.

    Balanced accuracy ``(TPR + TNR)/2`` equals plain accuracy on balanced sets, the literature's ASR.
    """
    accuracy = (roc.tpr + 1.0 - roc.fpr) / 2.0
    best = int(np.argmax(accuracy))
    return float(accuracy[best]), float(roc.thresholds[best])


def balanced_accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    flagged = scores >= threshold
    return float((flagged[labels == 1].mean() + (~flagged[labels == 0]).mean()) / 2.0)


def _stratified_halves(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    first, second = [], []
    for value in (0, 1):
        index = rng.permutation(np.flatnonzero(labels == value))
        first.append(index[: len(index) // 2])
        second.append(index[len(index) // 2 :])
    return np.concatenate(first), np.concatenate(second)


def _held_out(scores, labels, seed: int, measure: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]):
    """``measure(calibration scores, labels, held-out scores, labels)`` on stratified halves, both ways, averaged.

    Whatever ``measure`` chooses on the calibration half is judged only on samples it never saw.
    """
    scores, labels = _as_arrays(scores, labels)
    if min(labels.sum(), len(labels) - labels.sum()) < 2:
        return math.nan
    half_a, half_b = _stratified_halves(labels, np.random.default_rng(seed))
    results = [measure(scores[c], labels[c], scores[h], labels[h]) for c, h in ((half_a, half_b), (half_b, half_a))]
    return float(np.mean(results))


def calibrated_asr(scores, labels, seed: int = 0) -> float:
    """Threshold-transfer ASR: the threshold is picked on one stratified half, the accuracy measured on the other."""

    def transfer(calib_scores, calib_labels, test_scores, test_labels) -> float:
        _, threshold = best_accuracy(roc_curve(calib_scores, calib_labels))
        return balanced_accuracy(test_scores, test_labels, threshold)

    return _held_out(scores, labels, seed, transfer)


def auc_with_calibrated_orientation(scores, labels, seed: int = 0) -> float:
    """A variant, reported as such: the score's sign is chosen on one stratified half (flipped when its AUC
    there is below 0.5) and AUC is measured on the other half; both directions averaged.

    For attacks that come out inverted on a target; the plain ``auc`` never flips.
    """

    def oriented(calib_scores, calib_labels, test_scores, test_labels) -> float:
        sign = 1.0 if auc(roc_curve(calib_scores, calib_labels)) >= 0.5 else -1.0
        return auc(roc_curve(sign * test_scores, test_labels))

    return _held_out(scores, labels, seed, oriented)


def bootstrap_intervals(
    scores, labels, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals for AUC, ASR and the TPRs (members and non-members resampled apart)."""
    scores, labels = _as_arrays(scores, labels)
    rng = np.random.default_rng(seed)
    members, nonmembers = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    values: dict[str, list[float]] = {"auc": [], "asr": [], **{key: [] for key in FPR_TARGETS}}
    for _ in range(n_resamples):
        index = np.concatenate([rng.choice(members, len(members)), rng.choice(nonmembers, len(nonmembers))])
        roc = roc_curve(scores[index], labels[index])
        values["auc"].append(auc(roc))
        values["asr"].append(best_accuracy(roc)[0])
        for key, target in FPR_TARGETS.items():
            values[key].append(tpr_at_fpr(roc, target))
    tail = (1.0 - confidence) / 2.0 * 100.0
    return {key: [float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail))] for key, v in values.items()}


def evaluate(
    scores, labels, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float | list[float] | int]:
    """Every metric of the protocol for one attack's scores."""
    scores, labels = _as_arrays(scores, labels)
    roc = roc_curve(scores, labels)
    asr, _ = best_accuracy(roc)
    metrics: dict[str, float | list[float] | int] = {
        "auc": auc(roc),
        "asr": asr,
        "asr_calibrated": calibrated_asr(scores, labels, seed),
        "auc_calibrated_orientation": auc_with_calibrated_orientation(scores, labels, seed),
        **{key: tpr_at_fpr(roc, target) for key, target in FPR_TARGETS.items()},
        "n_members": int(labels.sum()),
        "n_nonmembers": int(len(labels) - labels.sum()),
    }
    if n_bootstrap > 0:
        for key, interval in bootstrap_intervals(scores, labels, n_bootstrap, confidence, seed).items():
            metrics[f"{key}_ci"] = interval
        metrics["ci_level"] = confidence
    return metrics
