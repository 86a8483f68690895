"""Figures from results; nothing here computes a metric or touches files. Each returns a Figure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from mia.evaluation.metrics import ROC


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
    for axis in (linear, loglog):
        axis.legend(loc="lower right", fontsize=8)
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


def plot_heatmap(values: np.ndarray, rows: Sequence, columns: Sequence, title: str, row_label: str,
                 column_label: str) -> Figure:
    """A metric over two swept knobs, each cell annotated; NaN cells (missing jobs) stay blank."""
    figure = Figure(figsize=(1.2 + 0.9 * len(columns), 1.2 + 0.6 * len(rows)), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(values, cmap="viridis", aspect="auto", origin="lower")
    axis.set_xticks(range(len(columns)), [str(c) for c in columns])
    axis.set_yticks(range(len(rows)), [str(r) for r in rows])
    axis.set(xlabel=column_label, ylabel=row_label, title=title)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if len(finite) else 0
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            axis.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                      color="black" if value > middle else "white")
    figure.colorbar(image, ax=axis)
    return figure


def plot_sweep_lines(
    x: Sequence, series: dict[str, Sequence[float]], x_label: str, title: str, y_label: str = "metric"
) -> Figure:
    """Metrics against one swept knob."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axis = figure.subplots()
    for label, ys in series.items():
        axis.plot(x, ys, marker="o", label=label)
    axis.axhline(0.5, color="grey", ls="--", lw=1)
    axis.set(xlabel=x_label, ylabel=y_label, title=title)
    axis.grid(alpha=0.3)
    axis.legend()
    return figure


def plot_timestep_profile(profile) -> Figure:
    """NA's statistic (median and interquartile band) for members and non-members, and AUC, against t."""
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    spread, separation = figure.subplots(1, 2)
    t = profile.timesteps
    for label, values in (("members", profile.members), ("non-members", profile.nonmembers)):
        line = spread.plot(t, values[:, 1], marker="o", label=f"{label} (median)")[0]
        spread.fill_between(t, values[:, 0], values[:, 2], alpha=0.25, color=line.get_color())
    tighter = "higher = tighter" if profile.statistic == "density" else "lower = tighter"
    spread.set(xlabel="start timestep t", ylabel=f"{profile.statistic} ({tighter})",
               title="aggregation of the k predictions")
    if profile.statistic != "density":
        spread.set_yscale("log")
    spread.legend()
    separation.plot(t, profile.auc, marker="o", color="black")
    separation.axhline(0.5, color="grey", ls="--", lw=1)
    separation.set(xlabel="start timestep t", ylabel="AUC", title="membership signal against t")
    for axis in (spread, separation):
        axis.grid(alpha=0.3)
    return figure


def plot_noise_scale_profiles(profiles) -> Figure:
    """NA's timestep profile at several noise scales, one row per statistic: the members' (solid) and
    non-members' (dashed) median statistic against t, one colour per noise scale, and AUC against t.

    ``profiles``: {statistic: {noise scale: TimestepProfile}}. Where the dashed line of a colour lies below
    its solid line, non-members aggregate tighter than members at that (t, noise scale): NA is inverted there.
    """
    from matplotlib import colormaps

    figure = Figure(figsize=(11, 4.2 * len(profiles)), layout="constrained")
    axes = figure.subplots(len(profiles), 2, squeeze=False)
    for (spread, separation), (statistic, by_scale) in zip(axes, profiles.items(), strict=True):
        scales = sorted(by_scale)
        for i, scale in enumerate(scales):
            profile = by_scale[scale]
            color = colormaps["viridis"](i / max(1, len(scales) - 1) * 0.9)
            t = profile.timesteps
            spread.plot(t, profile.members[:, 1], color=color, marker="o", label=f"s = {scale:g}, members")
            spread.plot(t, profile.nonmembers[:, 1], color=color, marker="x", ls="--",
                        label=f"s = {scale:g}, non-members")
            separation.plot(t, profile.auc, color=color, marker="o", label=f"s = {scale:g}")
        tighter = {"density": " (higher = tighter)"}.get(statistic, "" if "/" in statistic else " (lower = tighter)")
        spread.set(xlabel="start timestep t", ylabel=f"{statistic}, median{tighter}",
                   title=f"{statistic}: members (solid) and non-members (dashed)")
        if statistic != "density":
            spread.set_yscale("log")
        separation.axhline(0.5, color="grey", ls="--", lw=1)
        separation.set(xlabel="start timestep t", ylabel="AUC", ylim=(0, 1), title=f"{statistic}: AUC against t")
        spread.legend(fontsize=7, ncol=2)
        separation.legend(fontsize=8)
        for axis in (spread, separation):
            axis.grid(alpha=0.3)
    return figure


def plot_pvalue_vs_size(sizes: Sequence[dict], control: Sequence[dict], alpha: float) -> Figure:
    """Dataset inference: the p-value (twice the permutation test's median over the resamplings, its interquartile
    band shaded; CDI's Welch median dotted) against the suspect set size, for the suspect set and for the
    false-alarm control (suspects drawn from the reference set), on log axes."""
    figure = Figure(figsize=(9.0, 4.6), layout="constrained")
    axis = figure.subplots()
    for rows, label, color in ((sizes, "suspect vs reference", "tab:red"),
                               (control, "control: reference vs reference", "tab:blue")):
        if not rows:
            continue
        n = [row["n"] for row in rows]
        floor = 1e-300  # a p-value of 0 (underflow) still shows, at the bottom of the log axis
        axis.plot(n, [max(row["p_value"], floor) for row in rows], marker="o", color=color, label=f"{label}: p")
        axis.plot(n, [max(row["median_p_welch"], floor) for row in rows], ls=":", color=color,
                  label=f"{label}: Welch (CDI's), median")
        axis.fill_between(n, [max(row["p_q25"], floor) for row in rows], [max(row["p_q75"], floor) for row in rows],
                          color=color, alpha=0.2)
    axis.axhline(alpha, color="black", ls="--", lw=1, label=f"level {alpha:g}")
    axis.axhline(0.05, color="grey", ls=":", lw=1, label="0.05")
    axis.set(xscale="log", yscale="log", xlabel="suspect set size n",
             ylabel="p-value", title="was this set used in training?")
    ticks = sorted({row["n"] for row in (*sizes, *control)})
    axis.set_xticks(ticks, [str(n) for n in ticks])  # the sizes tried, as plain numbers
    axis.xaxis.set_minor_locator(NullLocator())
    axis.grid(alpha=0.3, which="both")
    figure.legend(fontsize=8, loc="outside right upper")  # beside the axes: the curves fill the lower right
    return figure
