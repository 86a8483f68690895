"""The calibration split: one protocol for every attack that fits anything (docs/method.md, "the protocol").

A seeded, stratified fraction of the members and of the non-members is set aside. A knob, an orientation,
a threshold or a classifier is fitted on those samples only; the metrics are measured on the rest. Roles
follow the sample ids (a seeded hash of each id ranks the samples within their class), so a sample keeps
its role whatever the order or batching of the evaluation set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from mia.errors import MiaError


def calibration_fraction(requested: float | None, fitted: bool) -> float:
    """The fraction in use: ``protocol.calibration``, or when null 0.2 when something is fitted, else 0.

    ``fitted``: whether anything is fitted (a fitted attack's score, or knobs tuned on calibration).
    """
    if requested is None:
        return 0.2 if fitted else 0.0
    if isinstance(requested, bool) or not isinstance(requested, int | float) or not 0 <= requested < 1:
        raise MiaError(f"protocol.calibration must be a fraction in [0, 1) or null, got {requested!r}")
    if fitted and requested == 0:
        raise MiaError("something is fitted on labelled samples here (a fitted attack or tune=); set "
                       "protocol.calibration to a fraction above 0 (e.g. 0.2), or leave it null")
    return float(requested)


def calibration_mask(ids: Sequence[str], labels: np.ndarray, fraction: float, seed: int) -> np.ndarray | None:
    """True for the samples set aside for calibration; None when ``fraction`` is 0."""
    if fraction == 0:
        return None
    labels = np.asarray(labels)
    mask = np.zeros(len(ids), dtype=bool)
    for value in (0, 1):
        rows = np.flatnonzero(labels == value)
        count = round(fraction * len(rows))
        if count < 1 or count >= len(rows):
            kind = "members" if value == 1 else "non-members"
            raise MiaError(f"protocol.calibration={fraction} sets aside {count} of {len(rows)} {kind}; each role needs "
                           "at least one of each: change the fraction or attack more samples")
        rank = sorted(rows, key=lambda row: hashlib.sha256(f"{seed}\0{ids[row]}".encode()).digest())
        mask[rank[:count]] = True
    return mask
