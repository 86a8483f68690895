"""Dataset inference: one statistical test of "was this set used in training?" from per-sample features.

After CDI (Dubiński, Kowalczuk et al., CVPR 2025; docs/method.md, "dataset inference"):

1. a scorer, cross-fitted: standardised features and a logistic regression fitted on k − 1 folds of
   suspect ∪ reference, applied to the held-out fold, so every sample is scored by a model that never saw it;
2. a one-sided test that the suspect scores exceed the reference scores: Welch's t-test (CDI's), and a
   permutation test of the difference of means beside it;
3. both repeated over seeded resamplings (n suspects and n reference samples drawn without replacement), the
   median p-value and its spread reported, for every set size n;
4. a false-alarm control with the same procedure on two disjoint halves of the reference set (both non-members):
   its p-values should spread over [0, 1], and the fraction below 0.05 should stay near 0.05.

Everything here is numbers in, numbers out: no model, no files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mia.errors import MiaError

DEFAULT_SIZES = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


@dataclass
class InferenceSettings:
    """The test's knobs (audit.* in conf/audit/audit.yaml)."""

    folds: int = 5  # cross-fitting folds of the scorer
    resamples: int = 100  # seeded draws of n suspects and n reference samples per set size
    permutations: int = 1000  # of the permutation test, per draw
    alpha: float = 0.01  # the level the verdict is stated at
    sizes: Sequence[int] | None = None  # set sizes n tried (None: 10, 20, 50, 100, ... up to all)
    false_alarm_level: float = 0.05  # the control counts p-values below this ...
    max_false_alarms: float = 0.10  # ... and above this fraction of them the test is not trusted on this data
    seed: int = 0


@dataclass
class SizeResult:
    """The p-values of every resampling at one set size n."""

    n: int
    welch: np.ndarray
    permutation: np.ndarray

    def record(self, level: float) -> dict[str, Any]:
        q25, median, q75 = np.percentile(self.welch, [25, 50, 75])
        return {"n": self.n, "median_p": float(median), "p_q25": float(q25), "p_q75": float(q75),
                "median_p_permutation": float(np.median(self.permutation)),
                "fraction_below_level": float(np.mean(self.welch < level)), "resamples": len(self.welch)}


@dataclass
class Inference:
    """The test at every size, and its false-alarm control."""

    sizes: list[SizeResult] = field(default_factory=list)
    control: list[SizeResult] = field(default_factory=list)


def cross_fitted_scores(suspect: np.ndarray, reference: np.ndarray, folds: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold P(suspect) of every row: standardised logistic regression, stratified folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.concatenate([suspect, reference])
    labels = np.r_[np.ones(len(suspect), int), np.zeros(len(reference), int)]
    scores = np.empty(len(labels))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=int(rng.integers(2**31)))
    for fit_rows, held_out in splitter.split(features, labels):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(features[fit_rows], labels[fit_rows])
        scores[held_out] = model.predict_proba(features[held_out])[:, 1]
    return scores[: len(suspect)], scores[len(suspect):]


def welch_greater(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided Welch's t-test: p of mean(a) > mean(b) (scipy's, alternative="greater")."""
    from scipy.stats import ttest_ind

    if np.ptp(np.concatenate([a, b])) == 0:
        return 1.0  # every score equal: no evidence either way
    return float(ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


def permutation_greater(a: np.ndarray, b: np.ndarray, permutations: int, rng: np.random.Generator) -> float:
    """One-sided permutation test of mean(a) − mean(b), (1 + #{permuted ≥ observed}) / (1 + permutations)."""
    pooled = np.concatenate([a, b])
    observed = a.mean() - b.mean()
    shuffled = np.stack([rng.permutation(pooled) for _ in range(permutations)])
    differences = shuffled[:, : len(a)].mean(1) - shuffled[:, len(a):].mean(1)
    return float((1 + np.sum(differences >= observed - 1e-15)) / (1 + permutations))


def one_test(suspect: np.ndarray, reference: np.ndarray, settings: InferenceSettings,
             rng: np.random.Generator) -> tuple[float, float]:
    """(Welch p, permutation p) of one draw: cross-fitted scores, then both tests."""
    a, b = cross_fitted_scores(suspect, reference, settings.folds, rng)
    return welch_greater(a, b), permutation_greater(a, b, settings.permutations, rng)


def set_sizes(requested: Sequence[int] | None, largest: int) -> list[int]:
    """The sizes tried: those requested (or the defaults) up to ``largest``, and ``largest`` itself."""
    sizes = sorted({int(n) for n in (requested or DEFAULT_SIZES) if int(n) <= largest} | {largest})
    return [n for n in sizes if n > 0]


def check_enough(suspects: int, references: int, folds: int) -> None:
    """Each draw needs at least ``folds`` samples of each set; the control splits the reference set in two."""
    if suspects < folds:
        raise MiaError(f"the suspect set holds {suspects} samples, fewer than the {folds} folds the scorer needs; "
                       "give more suspect images or lower audit.folds")
    if references < 2 * folds:
        raise MiaError(f"the reference set holds {references} samples; the scorer needs {folds} per fold and the "
                       f"false-alarm control splits it in two halves of at least {folds}: give at least "
                       f"{2 * folds} reference images or lower audit.folds")


def infer(suspect: np.ndarray, reference: np.ndarray, settings: InferenceSettings) -> Inference:
    """The test at every set size (n suspects against n reference samples, resampled) and its control."""
    check_enough(len(suspect), len(reference), settings.folds)
    rng = np.random.default_rng(settings.seed)
    result = Inference()
    for n in set_sizes(settings.sizes, min(len(suspect), len(reference))):
        pairs = [one_test(suspect[rng.choice(len(suspect), n, replace=False)],
                          reference[rng.choice(len(reference), n, replace=False)], settings, rng)
                 for _ in range(settings.resamples)]
        result.sizes.append(SizeResult(n, *map(np.array, zip(*pairs, strict=True))))
    for n in set_sizes(settings.sizes, len(reference) // 2):
        if n < settings.folds:
            continue
        pairs = []
        for _ in range(settings.resamples):  # two disjoint draws from the reference set: neither was trained on
            rows = rng.choice(len(reference), 2 * n, replace=False)
            pairs.append(one_test(reference[rows[:n]], reference[rows[n:]], settings, rng))
        result.control.append(SizeResult(n, *map(np.array, zip(*pairs, strict=True))))
    return result
