"""What the learned attacks share: a seeded, stratified inner split of the calibration rows.

A learned attack sees the calibration rows only (the protocol hands it nothing else). To report how well
its classifier generalises, or to pick a training epoch, it holds out a part of those rows; the metrics
of the evaluation part are never involved.
"""

from __future__ import annotations

import numpy as np

from mia.errors import MiaError


def inner_split(labels: np.ndarray, fraction: float, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): ``fraction`` of each class held out, at least one when fraction > 0.

    Rows are positions in ``labels``, drawn by a seeded permutation per class. ``key`` names the config key
    of the fraction, for the error message.
    """
    if not 0 <= fraction < 1:
        raise MiaError(f"{key} must be a fraction in [0, 1), got {fraction!r}")
    labels = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    fit, validation = [], []
    for value in (0, 1):
        rows = np.flatnonzero(labels == value)
        kind = "members" if value == 1 else "non-members"
        count = 0 if fraction == 0 else max(1, round(fraction * len(rows)))
        if len(rows) - count < 1:
            raise MiaError(f"the calibration part holds {len(rows)} {kind}: too few to fit on and to validate "
                           f"({key}={fraction}); raise protocol.calibration, attack more samples or set {key}=0")
        rows = rng.permutation(rows)
        validation.append(rows[:count])
        fit.append(rows[count:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(validation))
