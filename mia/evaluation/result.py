"""An attack's result as plain data (ids, labels, scores, roles, metrics), saved as ``scores.csv`` + ``metrics.json``.

With a calibration split, each sample has a role: ``calibration`` (anything fitted was fitted on these) or
``evaluation`` (the metrics are measured on these only). ``evaluation_part`` gives the rows the metrics,
the ROC and every figure are made of. As TF-Privacy's result objects: computing is apart from plotting
(``plot_roc`` draws with mia.reporting.figures).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mia.errors import MiaError
from mia.evaluation.metrics import ROC, roc_curve

CALIBRATION, EVALUATION = "calibration", "evaluation"


@dataclass
class AttackResult:
    attack: str
    ids: list[str]
    labels: np.ndarray  # 1 = member, 0 = non-member
    scores: np.ndarray  # float64, higher = member
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: np.ndarray | None = None  # bool per sample: True = calibration role; None = no calibration split

    def evaluation_part(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels) of the evaluation rows: all rows when there is no calibration split."""
        if self.calibration is None:
            return self.scores, self.labels
        keep = ~self.calibration
        return self.scores[keep], self.labels[keep]

    def roc(self) -> ROC:
        """The ROC of the evaluation rows (what ``auc`` and the TPRs were measured on)."""
        return roc_curve(*self.evaluation_part())

    def plot_roc(self, title: str | None = None) -> Any:
        """A matplotlib Figure of the ROC on linear and log-log axes."""
        from mia.reporting.figures import plot_roc

        auc = self.metrics.get("auc", float("nan"))
        return plot_roc([(f"{self.attack} (AUC {auc:.3f})", self.roc())], title=title or self.attack)

    def save(self, directory: str | Path) -> None:
        """Write ``scores.csv`` (id, label, score[, role]; scores round-trip exactly) and ``metrics.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "scores.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "label", "score", *(["role"] if self.calibration is not None else [])])
            for row, (sample_id, label, score) in enumerate(zip(self.ids, self.labels, self.scores, strict=True)):
                role = [] if self.calibration is None else [CALIBRATION if self.calibration[row] else EVALUATION]
                writer.writerow([sample_id, int(label), repr(float(score)), *role])
        (directory / "metrics.json").write_text(json.dumps(self.metrics, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> AttackResult:
        directory = Path(directory)
        try:
            metrics = json.loads((directory / "metrics.json").read_text())
            with open(directory / "scores.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, json.JSONDecodeError) as err:
            raise MiaError(f"{directory} holds no attack result (metrics.json + scores.csv): {err}") from err
        calibration = None
        if rows and "role" in rows[0]:
            calibration = np.array([row["role"] == CALIBRATION for row in rows], dtype=bool)
        return cls(
            attack=metrics.get("attack", "?"),
            ids=[row["id"] for row in rows],
            labels=np.array([int(row["label"]) for row in rows], dtype=np.int64),
            scores=np.array([float(row["score"]) for row in rows], dtype=np.float64),
            metrics=metrics,
            calibration=calibration,
        )
