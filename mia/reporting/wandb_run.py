"""An attack run on W&B: every number of metrics.json in the summary, the ROC as a chart, the pictures, the most
and least member-like samples.

The run's summary holds each leaf of ``metrics.json`` under its path joined by "/" (``tuning/calibration_queries``,
``provenance/libraries/torch``; intervals as ``auc_ci/low`` and ``auc_ci/high``; other lists by position,
``tuning/grid/0/auc``), so that the runs table can sort and filter on any of them. "/" and not ".": W&B reads a "."
in a filter's key as a step into a nested value (``summary_metrics.a.b``), so a flattened key holding a "." could
not be filtered on (wandb/wandb#3087), while "/" is W&B's own separator of panel sections (``val/loss``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mia.data.evaluation_set import EvaluationSet
from mia.evaluation.metrics import ROC
from mia.evaluation.result import AttackResult
from mia.reporting.console import SCALARS


def _thumbnail(image: torch.Tensor, size: int = 64) -> np.ndarray:
    array = image.permute(1, 2, 0).cpu().numpy()
    array = array[..., 0] if array.shape[2] == 1 else array
    picture = Image.fromarray(array)
    scale = max(1, size // max(picture.size))
    return np.asarray(picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST))


def summary_items(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf of ``metrics`` (numbers, strings, booleans, nulls) under its "/"-joined path."""
    items: dict[str, Any] = {}
    for key, value in metrics.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            items.update(summary_items(value, f"{path}/"))
        elif isinstance(value, list | tuple):
            # An interval is a (low, high) pair; any other list is keyed by position.
            names = ("low", "high") if str(key).endswith("_ci") and len(value) == 2 else range(len(value))
            items.update(summary_items(dict(zip(names, value, strict=True)), f"{path}/"))
        else:
            items[path] = value
    return items


def log_to_wandb(logger: Any, result: AttackResult, roc: ROC, evalset: EvaluationSet, figures: dict[str, Path],
                 top_k: int = 8) -> None:
    """Log one attack's result to the W&B run behind a Lightning ``WandbLogger``."""
    import wandb

    run = logger.experiment
    scalars = {key: result.metrics[key] for key in SCALARS if key in result.metrics}
    run.summary.update(summary_items(result.metrics))
    points = wandb.Table(
        columns=["fpr", "tpr"], data=[[float(f), float(t)] for f, t in zip(roc.fpr, roc.tpr, strict=True)]
    )
    order = np.argsort(-result.scores, kind="stable")
    picks = [("most member-like", i) for i in order[:top_k]] + [("least member-like", i) for i in order[::-1][:top_k]]
    samples = wandb.Table(columns=["rank", "kind", "id", "truth", "score", "image"])
    for rank, (kind, index) in enumerate(picks):
        truth = "member" if result.labels[index] == 1 else "non-member"
        image = wandb.Image(_thumbnail(evalset.image(int(index))))
        samples.add_data(rank, kind, result.ids[index], truth, float(result.scores[index]), image)
    run.log(
        {
            **scalars,
            # W&B stores the chart's points beside it as the table "roc_table".
            "roc": wandb.plot.line(points, "fpr", "tpr", title=f"ROC {result.attack}"),
            "roc_loglog": wandb.Image(str(figures["roc"])),
            "scores_histogram": wandb.Image(str(figures["histogram"])),
            **{name: wandb.Image(str(path)) for name, path in figures.items() if name not in ("roc", "histogram")},
            "extreme_samples": samples,
        }
    )


def log_audit_to_wandb(logger: Any, audit: dict[str, Any], figure: Path) -> None:
    """An audit's W&B run: every number of audit.json in the summary, the p-value table and its figure."""
    import wandb

    run = logger.experiment
    run.summary.update(summary_items(audit))
    columns = ["n", "reference", "p_value", "median_p", "p_q25", "p_q75", "median_p_welch", "fraction_below_level",
               "fraction_below_level_welch", "resamples"]
    tables = {name: wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
              for name, rows in (("pvalue_vs_size", audit["pvalue_vs_size"]),
                                 ("false_alarm_control", audit["false_alarm_control"]))}
    run.log({**tables, "pvalue_vs_size_plot": wandb.Image(str(figure))})
