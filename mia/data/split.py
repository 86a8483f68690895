"""Seeded member/non-member splits and their record, ``split.json``.

The record names every member and non-member by id (relative file path for folder data, index otherwise),
the seed, the dataset's configuration and a fingerprint of the sampled images' bytes (and, for captioned
data, of the captions, which the record also lists). Attacks rebuild the evaluation set from it and refuse
to run when the fingerprint no longer matches: a wrong membership label is data loss.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mia.checks import require_integer
from mia.errors import MiaError

log = logging.getLogger(__name__)

SPLIT_FORMAT = "mia-split/1"


def split_sizes(pool_size: int, members: int | None, nonmembers: int | None,
                what: str = "images") -> tuple[int, int]:
    """The member and non-member counts a split asks for (``None`` = half the pool), checked against the pool."""
    half = pool_size // 2
    members = half if members is None else members
    nonmembers = half if nonmembers is None else nonmembers
    for key, value in (("split.members", members), ("split.nonmembers", nonmembers)):
        require_integer(key, value, minimum=1)  # (null asks for half the pool)
    if members + nonmembers > pool_size:
        raise MiaError(
            f"the split asks for {members} members + {nonmembers} non-members but the pool has only "
            f"{pool_size} {what}; lower split.members / split.nonmembers"
        )
    return members, nonmembers


def draw_order(pool_size: int, seed: int) -> np.ndarray:
    """The seeded order in which a split takes the pool's samples: members first, then non-members."""
    require_integer("split.seed", seed, minimum=0)
    return np.random.default_rng(seed).permutation(pool_size)


def make_split(
    pool_size: int, members: int | None, nonmembers: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw disjoint member and non-member indices from a pool; ``None`` sizes mean half the pool each."""
    members, nonmembers = split_sizes(pool_size, members, nonmembers)
    order = draw_order(pool_size, seed)
    return order[:members], order[members : members + nonmembers]


def fingerprint(ids: Sequence[str], contents: Sequence[bytes], captions: Sequence[str] | None = None) -> str:
    """sha256 over each sample's id and the sha256 of its bytes (and of its caption, when given), in order.

    Without captions the digest is the one uncaptioned splits have always recorded.
    """
    digest = hashlib.sha256()
    for row, (sample_id, raw) in enumerate(zip(ids, contents, strict=True)):
        digest.update(sample_id.encode() + b"\0" + hashlib.sha256(raw).digest())
        if captions is not None:
            digest.update(b"\0" + hashlib.sha256(captions[row].encode()).digest())
    return "sha256:" + digest.hexdigest()


@dataclass
class Split:
    """Which samples are members and which are not, and where they came from."""

    members: list[str]
    nonmembers: list[str]
    seed: int
    dataset: dict[str, Any] = field(default_factory=dict)  # data config, fingerprint, pool_size
    format: str = SPLIT_FORMAT
    # The exact-duplicate check made when the split was drawn ({} = none was made: a split of mia 0.1).
    duplicates: dict[str, Any] = field(default_factory=dict)
    captions: dict[str, str] | None = None  # id -> caption of every sample, for captioned data (None: none)
    excluded: dict[str, Any] = field(default_factory=dict)  # split.exclude: the splits it was drawn without
    drawn_from: dict[str, Any] = field(default_factory=dict)  # split.pool: the split whose samples it drew from
    # Samples outside the split that another part of the model trained on, by part (a text-to-image target's
    # autoencoder: {"autoencoder": [ids]}); split.exclude keeps them out of another split too.
    also_trained_on: dict[str, list[str]] = field(default_factory=dict)

    def check(self) -> None:
        """Members and non-members must be distinct, non-empty and disjoint."""
        if not self.members or not self.nonmembers:
            raise MiaError("the split has no members or no non-members; both are needed")
        if len(set(self.members)) != len(self.members) or len(set(self.nonmembers)) != len(self.nonmembers):
            raise MiaError("the split lists a sample twice; the split record is corrupt")
        overlap = set(self.members) & set(self.nonmembers)
        if overlap:
            raise MiaError(
                f"{len(overlap)} samples are both members and non-members (e.g. {sorted(overlap)[0]}); "
                "the split record is corrupt"
            )
        if self.captions is not None:
            if not isinstance(self.captions, dict) or not all(isinstance(c, str) for c in self.captions.values()):
                raise MiaError("the split's captions are not a map from sample id to text; the split record is corrupt")
            ids = self.members + self.nonmembers
            missing = [i for i in ids if i not in self.captions]
            if missing or len(self.captions) != len(ids):
                raise MiaError(
                    f"the split's captions do not match its samples ({len(missing)} without a caption, "
                    f"{len(self.captions) - len(ids) + len(missing)} for no sample); the split record is corrupt"
                )

    def verify(self, digest: str, where: str, allow_unverified: bool = False) -> bool:
        """Whether the images (``digest``, their fingerprint now) are those the target was trained on.

        A mismatch is refused. A record without a fingerprint (written by hand or by another tool) cannot
        show that its labels fit the images on disk: refused unless ``allow_unverified``, and then said.
        """
        recorded = self.dataset.get("fingerprint")
        if not recorded:
            if not allow_unverified:
                raise MiaError(
                    f"split.json has no fingerprint, so nothing can check that the images at {where} are the ones "
                    "the target was trained on; re-export the target with mia-train, or pass "
                    "data.allow_unverified=true (metrics.json then records labels_verified: false)"
                )
            log.warning("split.json has no fingerprint: the membership labels are UNVERIFIED (metrics.json says so)")
            return False
        if digest != recorded:
            raise MiaError(
                f"the images at {where} differ from those the target was trained on "
                "(fingerprint mismatch); membership labels would be wrong. Pass data.root=<the original dataset>"
            )
        return True

    def save(self, path: str | Path) -> None:
        self.check()
        record = asdict(self)
        # Provenance first, then the (long) id lists, one line each.
        head = {key: record[key] for key in ("format", "dataset", "seed", "duplicates")}
        if self.excluded:
            head["excluded"] = self.excluded
        if self.drawn_from:
            head["drawn_from"] = self.drawn_from
        lines = json.dumps(head, indent=1)[:-2]
        for key in ("members", "nonmembers"):
            lines += f',\n "{key}": {json.dumps(record[key])}'
        if self.captions is not None:
            lines += f',\n "captions": {json.dumps(self.captions)}'
        if self.also_trained_on:
            lines += f',\n "also_trained_on": {json.dumps(self.also_trained_on)}'
        Path(path).write_text(lines + "\n}\n")

    @classmethod
    def load(cls, path: str | Path) -> Split:
        path = Path(path)
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MiaError(f"cannot read split record {path}: {err}") from err
        missing = {"members", "nonmembers", "seed"} - set(record)
        if missing:
            raise MiaError(f"split record {path} lacks {sorted(missing)}; it was not written by mia-train")
        split = cls(
            members=[str(i) for i in record["members"]],
            nonmembers=[str(i) for i in record["nonmembers"]],
            seed=record["seed"],
            dataset=record.get("dataset", {}),
            format=record.get("format", SPLIT_FORMAT),
            duplicates=record.get("duplicates", {}),
            captions=record.get("captions"),  # records without captions: unconditional
            excluded=record.get("excluded", {}),
            drawn_from=record.get("drawn_from", {}),
            also_trained_on=record.get("also_trained_on", {}),
        )
        split.check()
        return split
