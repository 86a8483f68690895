"""How often the dataset-inference test cries wolf: the share of p-values below 0.05 on pure noise.

Suspects and reference drawn from one Gaussian (nothing to find), for each scorer of mia.audit.inference
(split: fitted on one half, tested on the other; crossfit: CDI's k-fold cross-fitting with one t-test over
every out-of-fold score), several feature counts and set sizes. A calibrated test gives about 0.05.

    python -m bench.audit_calibration            # about a minute on 2 CPU cores
"""

from __future__ import annotations

import numpy as np

from mia.audit.inference import InferenceSettings, one_test


def false_alarms(scorer: str, n: int, reference: int, features: int, draws: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    settings = InferenceSettings(scorer=scorer, permutations=20)
    p = [one_test(rng.normal(size=(n, features)), rng.normal(size=(reference, features)), settings, rng)[0]
         for _ in range(draws)]
    return float(np.mean(np.array(p) < 0.05))


def main() -> None:
    draws = 400
    print(f"share of p-values below 0.05 on pure noise ({draws} draws each; binomial sd about 0.011)")
    print(f"{'features':>8} {'suspects':>8} {'reference':>9} {'split':>7} {'crossfit':>8}")
    for features in (4, 11):
        for n, reference in ((30, 30), (30, 300), (100, 100)):
            shares = [false_alarms(s, n, reference, features, draws, seed=features * 1000 + n + reference)
                      for s in ("split", "crossfit")]
            print(f"{features:>8} {n:>8} {reference:>9} {shares[0]:>7.3f} {shares[1]:>8.3f}")


if __name__ == "__main__":
    main()
