"""An attack's result as plain data (ids, labels, scores, metrics), saved as ``scores.csv`` + ``metrics.json``."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mia.errors import MiaError


@dataclass
class AttackResult:
    attack: str
    ids: list[str]
    labels: np.ndarray  # 1 = member, 0 = non-member
    scores: np.ndarray  # float64, higher = member
    metrics: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | Path) -> None:
        """Write ``scores.csv`` (id, label, score; scores round-trip exactly) and ``metrics.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "scores.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "label", "score"])
            for sample_id, label, score in zip(self.ids, self.labels, self.scores, strict=True):
                writer.writerow([sample_id, int(label), repr(float(score))])
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
        return cls(
            attack=metrics.get("attack", "?"),
            ids=[row["id"] for row in rows],
            labels=np.array([int(row["label"]) for row in rows], dtype=np.int64),
            scores=np.array([float(row["score"]) for row in rows], dtype=np.float64),
            metrics=metrics,
        )
