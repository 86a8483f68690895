"""The samples of an evaluation set: their noise keys, labels, de-duplication and the record of where they came from.

Shared by both kinds of evaluation set (in memory and streamed), so both give the same ids, order, keys and
records for the same samples.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from mia.checks import require_integer
from mia.data.duplicates import distinct_rows
from mia.errors import MiaError


def sample_key(sample_id: str) -> int:
    """A stable 63-bit integer per id; with the attack's seed it seeds the sample's noise."""
    return int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") >> 1


def first_n(ids: list, limit: int | None, key: str = "data.max_members / data.max_nonmembers") -> list:
    """The first ``limit`` of ``ids`` (all when None); ``key`` names the setting in the error."""
    require_integer(key, limit, minimum=1, optional=True)
    return ids if limit is None else ids[:limit]


def distinct_samples(digests: list[bytes], members: list[str], nonmembers: list[str],
                     limits: tuple[int | None, int | None] = (None, None)) -> tuple[list[int], int, dict[str, Any]]:
    """Rows of ``members + nonmembers`` without exact duplicates (mia.data.duplicates), then the first N.

    ``digests`` are the samples' pixel digests, in that order. Returns the rows kept (members first), how
    many of them are members, and the record of those left out.
    """
    ids = members + nonmembers
    labels = [1] * len(members) + [0] * len(nonmembers)
    keep, duplicates = distinct_rows(digests, labels, ids)
    kept_members = first_n([r for r in keep if labels[r] == 1], limits[0], "data.max_members")
    kept_nonmembers = first_n([r for r in keep if labels[r] == 0], limits[1], "data.max_nonmembers")
    if not kept_members or not kept_nonmembers:
        raise MiaError("no members or no non-members are left once exact duplicates are left out; "
                       "give images that differ")
    return kept_members + kept_nonmembers, len(kept_members), duplicates


def membership_labels(n_members: int, total: int) -> torch.Tensor:
    """1 for the first ``n_members`` samples (members come first), 0 for the rest."""
    return torch.cat([torch.ones(n_members), torch.zeros(total - n_members)])


def split_record(fingerprint: str, verified: bool, duplicates: dict[str, Any]) -> dict[str, Any]:
    """Where a split's evaluation set's labels come from (metrics.json's ``evaluation_set``)."""
    return {
        "labels": "split.json",
        "labels_verified": verified,
        "verification": f"fingerprint {fingerprint} matches split.json" if verified
        else "split.json has no fingerprint (data.allow_unverified=true): labels UNVERIFIED",
        "duplicates": duplicates,
    }


def folder_record(duplicates: dict[str, Any]) -> dict[str, Any]:
    """Where a folder evaluation set's labels come from (metrics.json's ``evaluation_set``)."""
    return {
        "labels": "folders (data.members, data.nonmembers)",
        "labels_verified": False,
        "verification": "the labels are the folders given; nothing records what the target was trained on",
        "duplicates": duplicates,
    }
