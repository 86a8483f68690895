"""Reporting an attack run: the output files of ARCHITECTURE.md's contract and the W&B run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mia.metrics import ROC
from mia.plots import plot_roc, plot_score_histogram
from mia.result import AttackResult

SCALARS = (
    "auc", "asr", "asr_calibrated", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "queries_per_sample",
    "seconds", "seconds_per_1000",
)


def write_outputs(result: AttackResult, roc: ROC, directory: str | Path) -> dict[str, Path]:
    """``metrics.json``, ``scores.csv``, ``roc.png`` (linear + log-log) and ``scores_histogram.png``."""
    directory = Path(directory)
    result.save(directory)
    paths = {"roc": directory / "roc.png", "histogram": directory / "scores_histogram.png"}
    auc = result.metrics.get("auc", float("nan"))
    plot_roc([(f"{result.attack} (AUC {auc:.3f})", roc)], title=result.attack).savefig(paths["roc"], dpi=120)
    plot_score_histogram(result.scores, result.labels, title=f"{result.attack} scores").savefig(
        paths["histogram"], dpi=120
    )
    return paths


def format_metrics(metrics: dict[str, Any]) -> str:
    """A small aligned table of the headline numbers, for the terminal."""
    rows = []
    for key in ("attack", "n_members", "n_nonmembers", *SCALARS):
        if key in metrics:
            value = metrics[key]
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            if f"{key}_ci" in metrics:
                low, high = metrics[f"{key}_ci"]
                text += f"  [{low:.4f}, {high:.4f}]"
            rows.append(f"  {key:<20} {text}")
    return "\n".join(rows)


def _thumbnail(image: torch.Tensor, size: int = 64) -> np.ndarray:
    array = image.permute(1, 2, 0).cpu().numpy()
    array = array[..., 0] if array.shape[2] == 1 else array
    picture = Image.fromarray(array)
    scale = max(1, size // max(picture.size))
    return np.asarray(picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST))


def log_to_wandb(
    logger: Any, result: AttackResult, roc: ROC, images: torch.Tensor, figures: dict[str, Path], top_k: int = 8
) -> None:
    """Scalars, the ROC as a W&B line plot, the pictures, and the most/least member-like samples."""
    import wandb

    run = logger.experiment
    scalars = {key: result.metrics[key] for key in SCALARS if key in result.metrics}
    run.summary.update({**scalars, "attack": result.attack})
    points = wandb.Table(
        columns=["fpr", "tpr"], data=[[float(f), float(t)] for f, t in zip(roc.fpr, roc.tpr, strict=True)]
    )
    order = np.argsort(-result.scores, kind="stable")
    picks = [("most member-like", i) for i in order[:top_k]] + [("least member-like", i) for i in order[::-1][:top_k]]
    samples = wandb.Table(columns=["rank", "kind", "id", "truth", "score", "image"])
    for rank, (kind, index) in enumerate(picks):
        truth = "member" if result.labels[index] == 1 else "non-member"
        image = wandb.Image(_thumbnail(images[index]))
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
