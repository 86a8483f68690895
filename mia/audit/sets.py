"""The two sets of an audit: the suspect set (whose use is in question) and a reference set known not to be used.

From two folders (the owner's suspect images and held-out images of the same kind), or from a mia-trained
target's split: the suspects a seeded draw of its members (the audit's question with a known answer) or of its
non-members (the same question where the answer is no), the reference its other non-members.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from mia.checks import require_integer
from mia.data.evaluation_set import EvaluationSet
from mia.errors import MiaError

SUSPECT_FROM = ("members", "nonmembers")


@dataclass
class AuditSets:
    """One evaluation set holding both sets, and which rows are suspects and which reference."""

    evalset: EvaluationSet
    suspect: np.ndarray  # rows of the suspect set
    reference: np.ndarray  # rows of the reference set
    record: dict[str, Any]  # where each set came from (audit.json)


def check_sets(suspect: object, reference: object) -> None:
    """Both folders, or neither (the target's split)."""
    if bool(suspect) != bool(reference):
        raise MiaError("give both data.suspect and data.reference (folders of images), or neither (the target's "
                       "split: its members or non-members as suspects, its other non-members as reference)")


def _seeded_order(ids: list[str], rows: np.ndarray, seed: int) -> np.ndarray:
    """``rows`` ranked by a seeded hash of their ids: a draw that does not depend on the set's order."""
    return np.array(sorted(rows, key=lambda r: hashlib.sha256(f"{seed}\0{ids[r]}".encode()).digest()), dtype=int)


def sets_from_split(evalset: EvaluationSet, suspect_from: str, count: int | None, seed: int) -> AuditSets:
    """Suspects: ``count`` of the split's members (or non-members), drawn by id; reference: the other non-members."""
    if suspect_from not in SUSPECT_FROM:
        raise MiaError(f"data.suspect_from must be members or nonmembers, got {suspect_from!r}")
    require_integer("data.suspect_count", count, minimum=1, optional=True)
    labels = evalset.labels.numpy()
    pool = np.flatnonzero(labels == (1 if suspect_from == "members" else 0))
    if count is not None and count > len(pool):
        raise MiaError(f"data.suspect_count={count} asks for more suspects than the split's {len(pool)} "
                       f"{suspect_from}; lower it (or leave it null: all of them)")
    ranked = _seeded_order(evalset.ids, pool, seed)
    suspect = np.sort(ranked[: count or len(ranked)])
    reference = np.setdiff1d(np.flatnonzero(labels == 0), suspect)
    record = {"suspect": {"from": f"the target's split: {suspect_from}", "count": len(suspect),
                          "members_among_them": int(labels[suspect].sum())},
              "reference": {"from": "the target's split: non-members not among the suspects", "count": len(reference)}}
    return AuditSets(evalset, suspect, reference, record)


def sets_from_folders(evalset: EvaluationSet, suspect_dir: str, reference_dir: str) -> AuditSets:
    """The first folder's images are the suspects, the second's the reference (an evaluation set of two folders)."""
    copies = evalset.record.get("duplicates", {}).get("nonmembers_equal_to_members") or []
    if copies:
        reference_id, suspect_id = copies[0]
        raise MiaError(f"{len(copies)} reference images are pixel copies of suspect images (first: {reference_id} = "
                       f"{suspect_id}); the reference set must hold images known not to be in training, so none of "
                       "them can be a suspect: remove the copies from one of the folders")
    labels = evalset.labels.numpy()
    record = {"suspect": {"from": str(suspect_dir), "count": int(labels.sum())},
              "reference": {"from": str(reference_dir), "count": int(len(labels) - labels.sum())}}
    return AuditSets(evalset, np.flatnonzero(labels == 1), np.flatnonzero(labels == 0), record)
