"""Figures from results; nothing here computes a metric or touches files. Each returns a Figure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from mia.metrics import ROC


def plot_roc(curves: Sequence[tuple[str, ROC]], title: str = "ROC") -> Figure:
    """Linear and log-log ROC side by side; the log-log panel shows the low-FPR regime that TPR@FPR reads."""
    figure = Figure(figsize=(10, 4.6), layout="constrained")
    linear, loglog = figure.subplots(1, 2)
    lowest = 1.0
    for label, roc in curves:
        linear.plot(roc.fpr, roc.tpr, label=label, lw=1.6)
        loglog.plot(roc.fpr, roc.tpr, label=label, lw=1.6)
        positive = roc.fpr[roc.fpr > 0]
        if len(positive):
            lowest = min(lowest, positive.min())
    lowest = max(lowest / 2, 1e-5)
    for axis in (linear, loglog):
        axis.plot([lowest, 1], [lowest, 1], ls="--", color="grey", lw=1, label="chance")
        axis.set_xlabel("false positive rate (non-members flagged)")
        axis.set_ylabel("true positive rate (members found)")
        axis.grid(alpha=0.3, which="both")
    linear.set(xlim=(0, 1), ylim=(0, 1), title=f"{title} (linear)")
    loglog.set(xscale="log", yscale="log", xlim=(lowest, 1), ylim=(lowest, 1.05), title=f"{title} (log-log)")
    for fpr in (0.01, 0.001):
        if fpr >= lowest:
            loglog.axvline(fpr, color="black", lw=0.6, alpha=0.4)
    loglog.legend(loc="lower right", fontsize=8)
    return figure


def plot_score_histogram(scores: np.ndarray, labels: np.ndarray, title: str = "scores") -> Figure:
    """Member and non-member score distributions on shared bins."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axis = figure.subplots()
    finite = scores[np.isfinite(scores)]
    bins = np.histogram_bin_edges(finite, bins=min(60, max(10, len(finite) // 20)))
    axis.hist(scores[labels == 0], bins=bins, alpha=0.55, label=f"non-members ({(labels == 0).sum()})")
    axis.hist(scores[labels == 1], bins=bins, alpha=0.55, label=f"members ({(labels == 1).sum()})")
    axis.set(xlabel="membership score (higher = member)", ylabel="samples", title=title)
    axis.legend()
    return figure
