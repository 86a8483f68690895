"""How often the dataset-inference test cries wolf: the share of p-values below 0.05 on pure noise.

Suspects and reference drawn from one Gaussian (nothing to find), for each scorer of mia.audit.inference
(split: fitted on one half, tested on the other, by Welch's t-test and by the permutation test the verdict uses;
crossfit: CDI's k-fold cross-fitting with one t-test over every out-of-fold score), several feature counts and
set sizes. A calibrated test gives about 0.05.

    python -m bench.audit_calibration            # about 15 minutes on 2 CPU cores
"""

from __future__ import annotations

import numpy as np

from mia.audit.inference import InferenceSettings, one_test


def false_alarms(scorer: str, n: int, reference: int, features: int, draws: int, seed: int) -> tuple[float, float]:
    """Shares of (Welch, permutation) p-values below 0.05 over ``draws`` pure-noise draws."""
    rng = np.random.default_rng(seed)
    settings = InferenceSettings(scorer=scorer, permutations=199)  # p in steps of 1/200: "below 0.05" is resolved
    p = np.array([one_test(rng.normal(size=(n, features)), rng.normal(size=(reference, features)), settings, rng)
                  for _ in range(draws)])
    return float(np.mean(p[:, 0] < 0.05)), float(np.mean(p[:, 1] < 0.05))


def main() -> None:
    draws = 400
    print(f"share of p-values below 0.05 on pure noise ({draws} draws each; binomial sd about 0.011)")
    print(f"{'features':>8} {'suspects':>8} {'reference':>9} {'split, Welch':>12} {'split, permutation':>18} "
          f"{'crossfit, Welch (CDI)':>21}")
    for features in (4, 11):
        for n, reference in ((30, 30), (30, 300), (100, 100)):
            seed = features * 1000 + n + reference
            split_welch, split_permutation = false_alarms("split", n, reference, features, draws, seed)
            crossfit_welch, _ = false_alarms("crossfit", n, reference, features, draws, seed)
            print(f"{features:>8} {n:>8} {reference:>9} {split_welch:>12.3f} {split_permutation:>18.3f} "
                  f"{crossfit_welch:>21.3f}", flush=True)


if __name__ == "__main__":
    main()
