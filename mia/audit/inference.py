"""Dataset inference: one statistical test of "was this set used in training?" from per-sample features.

After CDI (Dubiński, Kowalczuk et al., CVPR 2025; docs/method.md, "dataset inference"), with one change that
keeps the test honest:

1. a scorer (standardised features, a logistic regression) fitted on one part of suspect ∪ reference and
   applied to the other part, so every score comes from a model that never saw the sample;
2. a one-sided test that the held-out suspect scores exceed the held-out reference scores: a permutation
   test of the difference of means (exact: given the fitted model, the held-out scores of the two sets are
   exchangeable when neither was trained on), and CDI's Welch t-test beside it;
3. both repeated over seeded resamplings (a draw of n suspects, a new split into the two parts), for every
   set size n; the median p-values and their spread are reported, and the p-value the verdict uses is
   min(1, 2 × the permutation test's median), which stays valid however the resamplings depend on each other
   (Meinshausen, Meier and Bühlmann, JASA 2009);
4. a false-alarm control: the same procedure with n samples of the reference set as the "suspects" (never
   trained on), against the rest of it. Its p-values should spread over [0, 1], the fraction below 0.05 near
   0.05.

``scorer=split`` (default) fits on one half and tests the other. ``scorer=crossfit`` is CDI's k-fold
cross-fitting with one t-test over every out-of-fold score; those scores share the models' noise (fold i's
model is fitted on fold j's samples and the other way round), and the test comes out anti-conservative
with a dozen features: about 10 % of p-values below 0.05 on pure noise, measured (docs/method.md). The
control shows it on the user's own data.

Everything here is numbers in, numbers out: no model, no files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mia.errors import MiaError

DEFAULT_SIZES = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
SCORERS = ("split", "crossfit")


@dataclass
class InferenceSettings:
    """The test's knobs (audit.* in conf/audit/audit.yaml)."""

    scorer: str = "split"  # split: fit on one half, test the other | crossfit: CDI's k-fold (anti-conservative)
    folds: int = 5  # crossfit's folds
    resamples: int = 100  # seeded draws (suspects and split) per set size
    permutations: int = 1000  # of the permutation test, per draw
    alpha: float = 0.01  # the level the verdict is stated at
    sizes: Sequence[int] | None = None  # suspect set sizes n tried (None: 10, 20, 50, 100, ... up to all)
    false_alarm_level: float = 0.05  # the control counts p-values below this ...
    max_false_alarms: float = 0.10  # ... and above this fraction of them the test is not trusted on this data
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scorer not in SCORERS:
            raise MiaError(f"audit.scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")


@dataclass
class SizeResult:
    """The p-values of every resampling at one suspect set size n."""

    n: int
    welch: np.ndarray
    permutation: np.ndarray
    reference: int  # reference samples in each draw

    def record(self, level: float) -> dict[str, Any]:
        q25, median, q75 = np.percentile(self.permutation, [25, 50, 75])
        return {"n": self.n, "reference": self.reference, "p_value": float(min(1.0, 2 * median)),
                "median_p": float(median), "p_q25": float(q25), "p_q75": float(q75),
                "median_p_welch": float(np.median(self.welch)),
                "fraction_below_level": float(np.mean(self.permutation < level)),
                "fraction_below_level_welch": float(np.mean(self.welch < level)), "resamples": len(self.welch)}


@dataclass
class Inference:
    """The test at every size, and its false-alarm control."""

    sizes: list[SizeResult] = field(default_factory=list)
    control: list[SizeResult] = field(default_factory=list)


def _standardised_fit(features: np.ndarray, labels: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """scikit-learn's logistic regression (L2, C = 1, unpenalised intercept, classes weighted to balance) on
    standardised features, solved by Newton's method with a Cholesky step (the lbfgs optimum, faster here)."""
    from sklearn.linear_model import LogisticRegression

    centre, scale = features.mean(0), features.std(0)
    scale[scale == 0] = 1.0  # a column constant on the fitted rows carries nothing there
    model = LogisticRegression(solver="newton-cholesky", max_iter=100, class_weight="balanced")
    return model.fit((features - centre) / scale, labels), centre, scale


def _log_odds(fitted: tuple[Any, np.ndarray, np.ndarray], features: np.ndarray) -> np.ndarray:
    model, centre, scale = fitted
    return model.decision_function((features - centre) / scale)


def split_scores(suspect: np.ndarray, reference: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Held-out scores: the scorer fitted on a random half of each set, applied to the other halves."""
    a, b = rng.permutation(len(suspect)), rng.permutation(len(reference))
    fit_a, test_a, fit_b, test_b = a[: len(a) // 2], a[len(a) // 2:], b[: len(b) // 2], b[len(b) // 2:]
    fitted = _standardised_fit(np.concatenate([suspect[fit_a], reference[fit_b]]),
                               np.r_[np.ones(len(fit_a), int), np.zeros(len(fit_b), int)])
    return _log_odds(fitted, suspect[test_a]), _log_odds(fitted, reference[test_b])


def crossfit_scores(suspect: np.ndarray, reference: np.ndarray, folds: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CDI's out-of-fold scores of every row: stratified k folds, each scored by the model of the others."""
    from sklearn.model_selection import StratifiedKFold

    features = np.concatenate([suspect, reference])
    labels = np.r_[np.ones(len(suspect), int), np.zeros(len(reference), int)]
    scores = np.empty(len(labels))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=int(rng.integers(2**31)))
    for fit_rows, held_out in splitter.split(features, labels):
        scores[held_out] = _log_odds(_standardised_fit(features[fit_rows], labels[fit_rows]), features[held_out])
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
    shuffled = rng.permuted(np.broadcast_to(pooled, (permutations, len(pooled))), axis=1)
    differences = shuffled[:, : len(a)].mean(1) - shuffled[:, len(a):].mean(1)
    return float((1 + np.sum(differences >= observed - 1e-15)) / (1 + permutations))


def one_test(suspect: np.ndarray, reference: np.ndarray, settings: InferenceSettings,
             rng: np.random.Generator) -> tuple[float, float]:
    """(Welch p, permutation p) of one draw: held-out scores, then both tests."""
    if settings.scorer == "split":
        a, b = split_scores(suspect, reference, rng)
    else:
        a, b = crossfit_scores(suspect, reference, settings.folds, rng)
    return welch_greater(a, b), permutation_greater(a, b, settings.permutations, rng)


def set_sizes(requested: Sequence[int] | None, largest: int) -> list[int]:
    """The sizes tried: those requested (or the defaults) up to ``largest``, and ``largest`` itself."""
    sizes = sorted({int(n) for n in (requested or DEFAULT_SIZES) if int(n) <= largest} | {largest})
    return [n for n in sizes if n > 0]


def smallest(settings: InferenceSettings) -> int:
    """The fewest samples of each set one draw can take: two per half (split), one per fold (crossfit)."""
    return 4 if settings.scorer == "split" else settings.folds


def check_enough(suspects: int, references: int, settings: InferenceSettings) -> None:
    """Each draw needs ``smallest`` samples of each set; the control draws its suspects from the reference set."""
    need = smallest(settings)
    how = "two per half of the split" if settings.scorer == "split" else f"one per fold of {settings.folds}"
    if suspects < need:
        raise MiaError(f"the suspect set holds {suspects} samples, fewer than the {need} the scorer needs ({how}); "
                       "give more suspect images")
    if references < 2 * need:
        raise MiaError(f"the reference set holds {references} samples; the test needs {need} ({how}) and the "
                       f"false-alarm control takes its own {need} suspects out of it: give at least {2 * need} "
                       "reference images")


def infer(suspect: np.ndarray, reference: np.ndarray, settings: InferenceSettings) -> Inference:
    """The test at every set size (n suspects against the whole reference set, resampled) and its control."""
    check_enough(len(suspect), len(reference), settings)
    rng = np.random.default_rng(settings.seed)
    result = Inference()
    for n in set_sizes(settings.sizes, len(suspect)):
        if n < smallest(settings):
            continue
        pairs = [one_test(suspect[rng.choice(len(suspect), n, replace=False)], reference, settings, rng)
                 for _ in range(settings.resamples)]
        result.sizes.append(SizeResult(n, *map(np.array, zip(*pairs, strict=True)), reference=len(reference)))
    for n in set_sizes(settings.sizes, min(len(suspect), len(reference) // 2)):
        if n < smallest(settings):
            continue
        pairs = []
        for _ in range(settings.resamples):  # n reference samples as the suspects, against the rest of the set
            rows = rng.permutation(len(reference))
            pairs.append(one_test(reference[rows[:n]], reference[rows[n:]], settings, rng))
        result.control.append(SizeResult(n, *map(np.array, zip(*pairs, strict=True)),
                                         reference=len(reference) - n))
    return result
