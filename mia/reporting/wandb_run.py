"""An attack run on W&B: the scalars, the ROC as a chart, the pictures, the most and least member-like samples."""

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


def log_to_wandb(logger: Any, result: AttackResult, roc: ROC, evalset: EvaluationSet, figures: dict[str, Path],
                 top_k: int = 8) -> None:
    """Log one attack's result to the W&B run behind a Lightning ``WandbLogger``."""
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
