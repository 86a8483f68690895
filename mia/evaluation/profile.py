"""NA's timestep profile: the aggregation statistic of members and non-members, and AUC, against t.

The picture behind the claim that members' predictions aggregate most distinctly around some timestep.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mia.evaluation.metrics import auc, roc_curve


@dataclass
class TimestepProfile:
    statistic: str
    timesteps: list[int]
    members: np.ndarray  # [T, 3]: 25th percentile, median, 75th percentile of the statistic
    nonmembers: np.ndarray  # [T, 3]
    auc: np.ndarray  # [T]
    queries_per_sample: float

    def save_csv(self, path: str | Path) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["t", "auc", "member_q25", "member_median", "member_q75",
                             "nonmember_q25", "nonmember_median", "nonmember_q75"])
            for i, t in enumerate(self.timesteps):
                writer.writerow([t, self.auc[i], *self.members[i], *self.nonmembers[i]])


def statistic_from_score(scores: np.ndarray, statistic: str, delta: float) -> np.ndarray:
    """Undo the score's orientation: C from ``−log(C + δ)``; the density is its own score."""
    return scores if statistic == "density" else np.exp(-scores) - delta


def build_profile(scores_by_t: dict[int, np.ndarray], labels: np.ndarray, statistic: str, delta: float,
                  queries_per_sample: float) -> TimestepProfile:
    timesteps = sorted(scores_by_t)
    members, nonmembers, aucs = [], [], []
    for t in timesteps:
        values = statistic_from_score(scores_by_t[t], statistic, delta)
        members.append(np.percentile(values[labels == 1], [25, 50, 75]))
        nonmembers.append(np.percentile(values[labels == 0], [25, 50, 75]))
        aucs.append(auc(roc_curve(scores_by_t[t], labels)))
    return TimestepProfile(statistic, timesteps, np.array(members), np.array(nonmembers), np.array(aucs),
                           queries_per_sample)
