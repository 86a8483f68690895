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

from mia.data.conditions import check_caption_setting, conditions_for
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

    def first(self, n: int | None) -> EvaluationSet:
        """The first ``n`` members and first ``n`` non-members (all when ``n`` is None)."""
        if n is None:
            return self
        members, nonmembers = torch.nonzero(self.labels == 1).flatten(), torch.nonzero(self.labels == 0).flatten()
        rows = [*members[:n].tolist(), *nonmembers[:n].tolist()]
        return EvaluationSet(self.images[rows], self.labels[rows], [self.ids[i] for i in rows],
                             {name: [values[i] for i in rows] for name, values in self.extras.items()})


def _first(ids: list[str], limit: int | None) -> list[str]:
    if limit is None:
        return ids
    if not isinstance(limit, int) or limit < 1:
        raise MiaError(f"data.max_members / data.max_nonmembers must be positive integers, got {limit!r}")
    return ids[:limit]


def from_split(
    split: Split, root: str | None = None, max_members: int | None = None, max_nonmembers: int | None = None,
    stream: bool = False,
) -> EvaluationSet:
    """Rebuild the split's members and non-members from their dataset, after checking its fingerprint.

    ``stream``: decode the images item by item from the dataset, never all at once (latent targets).
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
    if split.dataset.get("fingerprint") and digest != split.dataset["fingerprint"]:
        raise MiaError(
            f"the images at {data.get('root', data.get('name'))} differ from those the target was trained on "
            "(fingerprint mismatch); membership labels would be wrong. Pass data.root=<the original dataset>"
        )
    members, nonmembers = _first(split.members, max_members), _first(split.nonmembers, max_nonmembers)
    chosen = members + nonmembers
    labels = torch.cat([torch.ones(len(members)), torch.zeros(len(nonmembers))])
    if stream:
        from mia.data.streamed import StreamedEvaluationSet  # it builds on EvaluationSet

        return StreamedEvaluationSet([pool], [(0, position[i]) for i in chosen], labels, chosen,
                                     [hashlib.sha256(raw[i]).digest() for i in chosen])
    images, _ = load_images(pool, [position[i] for i in chosen], [raw[i] for i in chosen])
    return EvaluationSet(images, labels, members + nonmembers)


def from_folders(members_dir: str, nonmembers_dir: str, image_size: int, channels: int) -> EvaluationSet:
    """Members and non-members from two image folders (resized and centre-cropped to ``image_size``)."""
    parts = []
    for prefix, folder in (("members", members_dir), ("nonmembers", nonmembers_dir)):
        pool = FolderPool(folder, image_size, channels, name=prefix)
        images, _ = load_images(pool, range(len(pool)))
        parts.append((images, [f"{prefix}/{i}" for i in pool.ids]))
    (mem_images, mem_ids), (non_images, non_ids) = parts
    labels = torch.cat([torch.ones(len(mem_ids)), torch.zeros(len(non_ids))])
    return EvaluationSet(torch.cat([mem_images, non_images]), labels, mem_ids + non_ids)


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
        evalset = from_split(split, data.get("root"), data.get("max_members"), data.get("max_nonmembers"), stream)
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
