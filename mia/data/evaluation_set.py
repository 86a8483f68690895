"""The evaluation set of an attack: members and non-members with their ids and labels.

Built from a target's ``split.json`` (the dataset is re-read and its fingerprint checked), or from two
image folders for targets trained elsewhere.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from mia.checks import require_integer
from mia.data.conditions import check_caption_setting, conditions_for
from mia.data.duplicates import distinct_rows, pixel_digest, separate_folders
from mia.data.images import load_images
from mia.data.pools import FolderPool
from mia.data.registry import RECORD_KEYS, build_pool, loader_arguments
from mia.data.split import Split, fingerprint
from mia.errors import MiaError


def sample_key(sample_id: str) -> int:
    """A stable 63-bit integer per id; with the attack's seed it seeds the sample's noise."""
    return int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") >> 1


class EvaluationSet(Dataset):
    """uint8 images [N, C, H, W], labels (1 = member) and ids; items are dicts for the attack module.

    ``extras`` are per-sample conditions the items carry besides the image (``caption``, ``class_label``).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ids: list[str],
                 extras: dict[str, list] | None = None) -> None:
        if not (len(images) == len(labels) == len(ids)):
            raise ValueError("images, labels and ids differ in length")
        self.images = images
        self.labels = labels.long()
        self.ids = ids
        self.keys = torch.tensor([sample_key(i) for i in ids], dtype=torch.int64)
        self.record: dict[str, Any] = {}  # where the labels come from, whether checked, duplicates left out
        self.extras: dict[str, list] = {}
        self.attach(extras or {})

    def attach(self, extras: dict[str, list]) -> None:
        """Add per-sample conditions (one value per sample, in order); they become part of the digest."""
        if any(len(values) != len(self.ids) for values in extras.values()):
            raise ValueError("every extra needs one value per sample")
        self.extras.update(extras)
        self.__dict__.pop("digest", None)  # the conditions change what the model is asked

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def _extras_digest(self, digest) -> None:
        if self.extras:
            digest.update(json.dumps(self.extras, sort_keys=True).encode())

    @functools.cached_property
    def digest(self) -> str:
        """sha256 over the ids and the image bytes: which samples, and exactly what they look like."""
        digest = hashlib.sha256("\n".join(self.ids).encode())
        digest.update(self.images.numpy().tobytes())
        self._extras_digest(digest)
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": self.labels[index], "index": index, "key": self.keys[index],
                **{name: values[index] for name, values in self.extras.items()}}

    def image(self, index: int) -> torch.Tensor:
        """The uint8 image [C, H, W] of one sample (for thumbnails in reports)."""
        return self.images[index]

    @property
    def n_members(self) -> int:
        return int(self.labels.sum())

    def subset(self, rows) -> EvaluationSet:
        """The samples at ``rows`` (positions), in that order, with their conditions."""
        rows = [int(r) for r in rows]
        return EvaluationSet(self.images[rows], self.labels[rows], [self.ids[i] for i in rows],
                             {name: [values[i] for i in rows] for name, values in self.extras.items()})

    def first(self, n: int | None) -> EvaluationSet:
        """The first ``n`` members and first ``n`` non-members (all when ``n`` is None)."""
        if n is None:
            return self
        members, nonmembers = torch.nonzero(self.labels == 1).flatten(), torch.nonzero(self.labels == 0).flatten()
        return self.subset([*members[:n].tolist(), *nonmembers[:n].tolist()])


def _first(ids: list, limit: int | None, key: str = "data.max_members / data.max_nonmembers") -> list:
    require_integer(key, limit, minimum=1, optional=True)
    return ids if limit is None else ids[:limit]


def _distinct(digests: list[bytes], members: list[str], nonmembers: list[str],
              limits: tuple[int | None, int | None] = (None, None)) -> tuple[list[int], int, dict[str, Any]]:
    """Rows of ``members + nonmembers`` without exact duplicates (mia.data.duplicates), then the first N.

    Returns the rows kept (members first), how many of them are members, and the record of those left out.
    """
    ids = members + nonmembers
    labels = [1] * len(members) + [0] * len(nonmembers)
    keep, duplicates = distinct_rows(digests, labels, ids)
    kept_members = _first([r for r in keep if labels[r] == 1], limits[0], "data.max_members")
    kept_nonmembers = _first([r for r in keep if labels[r] == 0], limits[1], "data.max_nonmembers")
    if not kept_members or not kept_nonmembers:
        raise MiaError("no members or no non-members are left once exact duplicates are left out; "
                       "give images that differ")
    return kept_members + kept_nonmembers, len(kept_members), duplicates


def _labels(n_members: int, total: int) -> torch.Tensor:
    return torch.cat([torch.ones(n_members), torch.zeros(total - n_members)])


def from_split(
    split: Split, root: str | None = None, max_members: int | None = None, max_nonmembers: int | None = None,
    allow_unverified: bool = False, stream: bool = False,
) -> EvaluationSet:
    """Rebuild the split's members and non-members from their dataset, after checking its fingerprint.

    Exact duplicates are left out (mia.data.duplicates). When the split was checked for them as it was drawn
    and the fingerprint vouches for the bytes, only the attacked samples are decoded; otherwise all are.
    ``stream``: decode the images item by item when scoring, never all at once (latent targets); they are
    decoded once up front only to hash their pixels.
    """
    if not split.dataset.get("name") and "_target_" not in split.dataset:
        raise MiaError("split.json does not say how to load its dataset; give data.members and data.nonmembers")
    data = loader_arguments({k: v for k, v in split.dataset.items() if k not in RECORD_KEYS})
    if root is not None:
        if "root" not in data:
            raise MiaError(f"data.root does not apply to the {data.get('name')} dataset, which has no folder")
        data["root"] = root
    pool = build_pool(data)
    position = {sample_id: i for i, sample_id in enumerate(pool.ids)}
    missing = [i for i in split.members + split.nonmembers if i not in position]
    if missing:
        raise MiaError(
            f"{len(missing)} samples of split.json (e.g. {missing[0]}) are not in the dataset at "
            f"{data.get('root', data.get('name'))}; pass data.root=<the dataset the target was trained on>"
        )
    all_ids = split.members + split.nonmembers
    try:
        raw = {i: pool.read(position[i]) for i in all_ids}  # read once: for the fingerprint and the images
    except OSError as err:
        raise MiaError(f"cannot read the dataset at {data.get('root')}: {err}") from err
    captions = None if split.captions is None else [split.captions[i] for i in all_ids]  # fingerprinted with them
    digest = fingerprint(all_ids, [raw[i] for i in all_ids], captions)
    where = str(data.get("root", data.get("name")))
    verified = split.verify(digest, where, allow_unverified)
    checked_when_drawn = verified and bool(split.duplicates)
    members = _first(split.members, max_members, "data.max_members") if checked_when_drawn else split.members
    nonmembers = (_first(split.nonmembers, max_nonmembers, "data.max_nonmembers") if checked_when_drawn
                  else split.nonmembers)
    chosen = members + nonmembers
    if stream:
        from mia.data.streamed import StreamedEvaluationSet, scan  # it builds on EvaluationSet

        scanned = [scan(pool, position[i], raw[i]) for i in chosen]
        rows, n_members, duplicates = _distinct([pixels for _, pixels in scanned], members, nonmembers,
                                                (max_members, max_nonmembers))
        evalset = StreamedEvaluationSet([pool], [(0, position[chosen[r]]) for r in rows], _labels(n_members, len(rows)),
                                        [chosen[r] for r in rows], [scanned[r][0] for r in rows])
    else:
        images, _ = load_images(pool, [position[i] for i in chosen], [raw[i] for i in chosen])
        rows, n_members, duplicates = _distinct([pixel_digest(image) for image in images], members, nonmembers,
                                                (max_members, max_nonmembers))
        kept = images if len(rows) == len(chosen) else images[rows]  # no copy when nothing is left out
        evalset = EvaluationSet(kept, _labels(n_members, len(rows)), [chosen[r] for r in rows])
    evalset.record = {
        "labels": "split.json",
        "labels_verified": verified,
        "verification": f"fingerprint {digest} matches split.json" if verified
        else "split.json has no fingerprint (data.allow_unverified=true): labels UNVERIFIED",
        "duplicates": duplicates,
    }
    return evalset


def from_folders(members_dir: str, nonmembers_dir: str, image_size: int, channels: int) -> EvaluationSet:
    """Members and non-members from two image folders (resized and centre-cropped to ``image_size``).

    The folders must not share a file (the same, nested or overlapping folders are refused); exact duplicate
    images are left out (mia.data.duplicates).
    """
    parts = []
    pools = [FolderPool(folder, image_size, channels, name=prefix)
             for prefix, folder in (("members", members_dir), ("nonmembers", nonmembers_dir))]
    separate_folders(*pools)
    for pool in pools:
        images, _ = load_images(pool, range(len(pool)))
        parts.append((images, [f"{pool.name}/{i}" for i in pool.ids]))
    (mem_images, mem_ids), (non_images, non_ids) = parts
    images = torch.cat([mem_images, non_images])
    rows, n_members, duplicates = _distinct([pixel_digest(image) for image in images], mem_ids, non_ids)
    ids = mem_ids + non_ids
    evalset = EvaluationSet(images if len(rows) == len(ids) else images[rows], _labels(n_members, len(rows)),
                            [ids[r] for r in rows])
    evalset.record = folder_record(duplicates)
    return evalset


def folder_record(duplicates: dict[str, Any]) -> dict[str, Any]:
    """Where a folder evaluation set's labels come from (metrics.json's ``evaluation_set``)."""
    return {
        "labels": "folders (data.members, data.nonmembers)",
        "labels_verified": False,
        "verification": "the labels are the folders given; nothing records what the target was trained on",
        "duplicates": duplicates,
    }


def evaluation_set_for(data: Mapping[str, Any], image_shape: tuple[int, int, int], split: Split | None,
                       target_name: str, conditioning: str | None = None, stream: bool = False) -> EvaluationSet:
    """The attack's evaluation set from its data config: two folders when given, else the target's split.

    Checked against the image shape the target takes, so a mismatch stops the run before any query. The
    items carry the condition the target takes (``conditioning``: "text" = captions, "class" = class labels);
    ``stream`` decodes the images item by item instead of holding them all (latent targets).
    """
    from mia.data.streamed import streamed_folders  # it builds on EvaluationSet

    channels, height, width = image_shape
    check_caption_setting(data, conditioning, target_name)
    if data.get("members") or data.get("nonmembers"):
        if not (data.get("members") and data.get("nonmembers")):
            raise MiaError("give both data.members and data.nonmembers (folders of images), or neither")
        folders = streamed_folders if stream else from_folders
        evalset = folders(data["members"], data["nonmembers"], data.get("image_size") or height, channels)
    elif split is not None:
        evalset = from_split(split, data.get("root"), data.get("max_members"), data.get("max_nonmembers"),
                             allow_unverified=data.get("allow_unverified") is True, stream=stream)
    else:
        raise MiaError(
            f"{target_name} has no split.json, so members cannot be told from non-members; "
            "give data.members=<folder> and data.nonmembers=<folder>"
        )
    shape = evalset.image_shape
    if shape != (channels, height, width):
        raise MiaError(
            f"the evaluation images are {shape[0]}x{shape[1]}x{shape[2]} (channels x height x width) but the model "
            f"takes {channels}x{height}x{width}; use images that match (data.image_size resizes folder images)"
        )
    evalset.attach(conditions_for(data, conditioning, split, evalset.ids, target_name))
    return evalset
