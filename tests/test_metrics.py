"""The protocol's metrics against scikit-learn, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from mia.evaluation.metrics import (
    auc,
    best_accuracy,
    bootstrap_intervals,
    calibrated_asr,
    evaluate,
    roc_curve,
    tpr_at_fpr,
)


def _sk_tpr_at(labels, scores, target):
    fpr, tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    return tpr[fpr <= target].max()


def _sk_best_balanced_accuracy(labels, scores):
    thresholds = np.r_[np.unique(scores), np.inf]
    return max(balanced_accuracy_score(labels, scores >= t) for t in thresholds)


@pytest.mark.parametrize("seed", [0, *(pytest.param(seed, marks=pytest.mark.slow) for seed in (1, 2, 3))])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("n_members", "n_nonmembers"), [(1000, 1000), (300, 2000)])
def test_metrics_equal_sklearn(seed, ties, n_members, n_nonmembers):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_members, int), np.zeros(n_nonmembers, int)]
    scores = rng.normal(size=len(labels)) + 0.8 * labels
    scores = np.round(scores, 1) if ties else scores * 1e6  # large values: no sigmoid squashing allowed
    roc = roc_curve(scores, labels)
    assert auc(roc) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    for target in (0.01, 0.001):
        assert tpr_at_fpr(roc, target) == _sk_tpr_at(labels, scores, target)
    assert best_accuracy(roc)[0] == pytest.approx(_sk_best_balanced_accuracy(labels, scores), abs=1e-12)


def test_best_accuracy_is_plain_accuracy_on_balanced_sets():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(500, int), np.zeros(500, int)]
    scores = np.round(rng.normal(size=1000) + labels, 2)
    best = max(((scores >= t) == labels).mean() for t in np.r_[np.unique(scores), np.inf])
    assert best_accuracy(roc_curve(scores, labels))[0] == pytest.approx(best, abs=1e-12)


def test_tpr_at_fpr_never_reads_a_point_above_the_target():
    # 1000 non-members: FPR steps of 0.001. The member tied with the 2nd non-member must not count at 0.1%.
    labels = np.r_[np.ones(3, int), np.zeros(1000, int)]
    scores = np.r_[[10.0, 8.0, 0.5], 9.0, 8.0, np.linspace(0, 0.4, 998)]
    roc = roc_curve(scores, labels)
    assert tpr_at_fpr(roc, 0.001) == pytest.approx(1 / 3)
    assert tpr_at_fpr(roc, 0.002) == 1.0  # the tie, then the last member above every other non-member
    assert tpr_at_fpr(roc, 0.001) == _sk_tpr_at(labels, scores, 0.001)


def test_all_tied_scores_are_chance():
    labels = np.r_[np.ones(10, int), np.zeros(10, int)]
    roc = roc_curve(np.zeros(20), labels)
    assert auc(roc) == 0.5 and tpr_at_fpr(roc, 0.01) == 0.0 and best_accuracy(roc)[0] == 0.5


def test_calibrated_asr_is_measured_on_held_out_halves():
    labels = np.r_[np.ones(200, int), np.zeros(200, int)]
    assert calibrated_asr(labels * 1.0, labels) == 1.0  # separable: the transferred threshold separates
    rng = np.random.default_rng(0)
    noise = rng.normal(size=400)
    # Pure noise: the oracle ASR is above 0.5 by selection, the calibrated one is not.
    assert best_accuracy(roc_curve(noise, labels))[0] > 0.53
    assert abs(calibrated_asr(noise, labels) - 0.5) < 0.06


def test_orientation_is_never_flipped_but_the_calibrated_variant_may_be():
    labels = np.r_[np.ones(50, int), np.zeros(50, int)]
    metrics = evaluate(-labels * 1.0, labels, n_bootstrap=0)  # an inverted attack
    assert metrics["auc"] == 0.0 and metrics["tpr_at_1pct_fpr"] == 0.0
    assert metrics["auc_calibrated_orientation"] == 1.0  # sign chosen on one half, measured on the other
    noise = np.random.default_rng(0).normal(size=100)
    # On pure noise the variant cannot manufacture a signal: the sign it picks does not transfer.
    assert abs(evaluate(noise, labels, n_bootstrap=0)["auc_calibrated_orientation"] - 0.5) < 0.12


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(300, int), np.zeros(300, int)]
    scores = rng.normal(size=600) + labels
    intervals = bootstrap_intervals(scores, labels, n_resamples=300, seed=0)
    estimate = roc_auc_score(labels, scores)
    low, high = intervals["auc"]
    assert low < estimate < high and high - low < 0.15
    assert intervals == bootstrap_intervals(scores, labels, n_resamples=300, seed=0)


@pytest.mark.parametrize(
    ("scores", "labels"), [([1.0, np.nan], [1, 0]), ([1.0, 2.0], [1, 1]), ([1.0], [1, 0]), ([1.0, 2.0], [1, 2])]
)
def test_bad_scores_or_labels_are_refused(scores, labels):
    with pytest.raises(ValueError):
        roc_curve(np.array(scores), np.array(labels))
