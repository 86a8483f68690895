"""LiRA-style calibration on shadow models (Carlini et al., "Membership Inference Attacks From First
Principles", S&P 2022; reference code tensorflow/privacy research/mi_lira_2021, docs/method.md).

For each evaluation sample i, the attack's score on every shadow model is split by whether that shadow
trained on i (in) or held it out (out). Each side is a Gaussian: its mean is the sample's median score
over those shadows (as the reference code), its standard deviation one global value pooled over samples
(the reference code's "fixed variance", which it finds best with few shadows). The target's score s is then

- online (every sample has at least one in- and one out-shadow): log N(s; μ_in, σ_in) − log N(s; μ_out, σ_out);
- offline (some sample lacks in-shadows): −log Pr[Z ≥ z], z = o·(s − μ_out)/σ_out, Z ~ N(0, 1): the one-sided
  test "more member-like than the shadows that never saw it", o = the orientation found on the shadows.

The choice is made once for all samples (one scale for every score). Nothing here reads a target label.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.stats import norm

from mia.errors import MiaError

log = logging.getLogger(__name__)

IN, OUT, UNKNOWN = 1, 0, -1  # a shadow's membership of a sample: trained on it, held it out, not in its split
TINY = 1e-12  # floor on σ: identical scores on every shadow would divide by zero


def pooled_sigma(scores: np.ndarray, mask: np.ndarray, centre: np.ndarray) -> float | None:
    """One standard deviation pooled over samples: residuals from each sample's centre, samples with ≥ 2 values.

    None when no sample has two values on that side.
    """
    counts = mask.sum(0)
    usable = counts >= 2
    if not usable.any():
        return None
    residuals = np.where(mask, scores - centre[None, :], 0.0)[:, usable]
    return float(np.sqrt((residuals**2).sum() / (counts[usable] - 1).sum()))


def _median(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.nanmedian(np.where(mask, scores, np.nan), axis=0)


def lira(target_scores: np.ndarray, shadow_scores: np.ndarray, membership: np.ndarray,
         orientation: float = 1.0, mode: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """LiRA scores (higher = member) of the target's scores [N], from the shadows' scores and memberships [K, N].

    ``membership[k, i]``: IN, OUT or UNKNOWN (sample i not in shadow k's split: not used). ``mode``: online or
    offline, None = online when every sample has an in-shadow. Returns the scores and what was fitted.
    """
    target_scores = np.asarray(target_scores, dtype=np.float64)
    shadow_scores = np.asarray(shadow_scores, dtype=np.float64)
    if shadow_scores.shape != membership.shape or shadow_scores.shape[1:] != target_scores.shape:
        raise ValueError("shadow scores, memberships and target scores disagree in shape")
    is_in, is_out = membership == IN, membership == OUT
    n_in, n_out = is_in.sum(0), is_out.sum(0)
    if (n_out == 0).any():
        raise MiaError(f"{int((n_out == 0).sum())} evaluation samples are held out by no shadow model (each is in "
                       "every shadow's training set or in none's split); LiRA needs each sample's score on a model "
                       "that did not train on it: train more shadows on the target's samples (split.pool)")
    mu_out = _median(shadow_scores, is_out)
    sigma_out = pooled_sigma(shadow_scores, is_out, mu_out)
    if sigma_out is None:  # one out-shadow per sample: the spread of all out-scores (the reference code's global σ)
        sigma_out = float(np.std(shadow_scores[is_out]))
    sigma_out = max(sigma_out, TINY)
    online = bool((n_in >= 1).all()) if mode is None else mode == "online"
    if online and not (n_in >= 1).all():
        raise MiaError(f"online LiRA: {int((n_in == 0).sum())} samples are in no shadow's training set")
    record: dict[str, Any] = {
        "method": "LiRA (Carlini et al. 2022), Gaussian per sample, global variance",
        "mode": "online" if online else "offline",
        "shadows": len(shadow_scores),
        "in_per_sample": _spread(n_in), "out_per_sample": _spread(n_out),
        "sigma_out": sigma_out,
    }
    if online:
        mu_in = _median(shadow_scores, is_in)
        sigma_in = pooled_sigma(shadow_scores, is_in, mu_in)
        sigma_in = sigma_out if sigma_in is None else max(sigma_in, TINY)  # too few in-scores: one shared σ
        record["sigma_in"] = sigma_in
        scores = norm.logpdf(target_scores, mu_in, sigma_in) - norm.logpdf(target_scores, mu_out, sigma_out)
    else:
        record["orientation"] = orientation
        record["why_offline"] = f"{int((n_in == 0).sum())} samples are in no shadow's training set"
        scores = -norm.logsf(orientation * (target_scores - mu_out) / sigma_out)
    if not np.isfinite(scores).all():
        raise MiaError("LiRA gave non-finite scores; the shadows' scores are broken (NaN or infinite)")
    return scores, record


def leave_one_out(shadow_scores: np.ndarray, membership: np.ndarray, orientation: float,
                  mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Each shadow scored by LiRA (in ``mode``) from the other shadows: its scores and memberships, pooled over
    the rows of its split. What a threshold on the LiRA score is fitted on: no shadow's score enters its own
    Gaussians. A row the other shadows cannot score in that mode (in all of their training sets; online: in
    none) is left out of the pool, not guessed; raises MiaError when no row is left.
    """
    scores, labels = [], []
    for k in range(len(shadow_scores)):
        others = np.arange(len(shadow_scores)) != k
        rest = membership[others]
        scorable = (membership[k] != UNKNOWN) & ((rest == OUT).sum(0) > 0)
        if mode == "online":
            scorable &= (rest == IN).sum(0) > 0
        if not scorable.any():
            continue
        own, _ = lira(shadow_scores[k][scorable], shadow_scores[others][:, scorable], rest[:, scorable],
                      orientation, mode)
        scores.append(own)
        labels.append(membership[k][scorable])
    if not scores:
        raise MiaError(f"no shadow's samples can be scored by {mode} LiRA from the other shadows")
    return np.concatenate(scores), np.concatenate(labels)


def _spread(counts: np.ndarray) -> dict[str, float]:
    return {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max())}
