"""The evaluation set of an attack: members and non-members with their ids, labels and images.

Built from a target's ``split.json`` (the dataset is re-read and its fingerprint checked), or from two
image folders for targets trained elsewhere. Its images come from a source: held in memory
(``InMemoryImages``) or, when they would not fit, decoded from the files item by item
(``mia.data.streamed.StreamedImages``); the set is the same either way.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from mia.data.conditions import check_caption_setting, conditions_for
from mia.data.duplicates import pixel_digest, separate_folders
from mia.data.images import load_images
from mia.data.pools import FolderPool, ImagePool
from mia.data.registry import RECORD_KEYS, build_pool, loader_arguments
from mia.data.samples import distinct_samples, first_n, folder_record, membership_labels, sample_key, split_record
from mia.data.split import Split, fingerprint
from mia.data.streamed import StreamedImages, scan
from mia.errors import MiaError


class ImageSource(Protocol):
    """Where an evaluation set's images come from: a uint8 tensor in memory, or files decoded item by item."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image."""

    def __len__(self) -> int: ...

    def image(self, index: int) -> torch.Tensor:
        """The uint8 image [C, H, W] at ``index``."""

    def stack(self, rows: Sequence[int] | None) -> torch.Tensor:
        """The images at ``rows`` (all when None) as one uint8 tensor [N, C, H, W]."""

    def subset(self, rows: list[int]) -> ImageSource:
        """The images at ``rows``, in that order."""

    def update_digest(self, digest: Any) -> None:
        """Add exactly what the images look like to the set's sha256 ``digest``."""


class InMemoryImages:
    """All images decoded up front, in one uint8 tensor [N, C, H, W]."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("in-memory images must be a uint8 tensor [N, C, H, W]")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def image(self, index: int) -> torch.Tensor:
        return self.images[index]

    def stack(self, rows: Sequence[int] | None) -> torch.Tensor:
        return self.images if rows is None else self.images[list(rows)]

    def subset(self, rows: list[int]) -> InMemoryImages:
        return InMemoryImages(self.images[rows])

    def update_digest(self, digest: Any) -> None:
        digest.update(self.images.numpy().tobytes())


class EvaluationSet(Dataset):
    """Images (an ``ImageSource``), labels (1 = member) and ids; items are dicts for the attack module.

    ``images``: a uint8 tensor [N, C, H, W] (held in memory) or any ``ImageSource`` (``StreamedImages``).
    ``extras`` are per-sample conditions the items carry besides the image (``caption``, ``class_label``).
    """

    def __init__(self, images: torch.Tensor | ImageSource, labels: torch.Tensor, ids: list[str],
                 extras: dict[str, list] | None = None) -> None:
        source = InMemoryImages(images) if isinstance(images, torch.Tensor) else images
        if not (len(source) == len(labels) == len(ids)):
            raise ValueError("images, labels and ids differ in length")
        self.source = source
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
        return self.source.shape

    @functools.cached_property
    def digest(self) -> str:
        """sha256 over the ids, what the images look like and the conditions: it keys the prediction cache."""
        digest = hashlib.sha256("\n".join(self.ids).encode())
        self.source.update_digest(digest)
        if self.extras:
            digest.update(json.dumps(self.extras, sort_keys=True).encode())
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.source.image(index), "label": self.labels[index], "index": index,
                "key": self.keys[index], **{name: values[index] for name, values in self.extras.items()}}

    def image(self, index: int) -> torch.Tensor:
        """The uint8 image [C, H, W] of one sample (for thumbnails in reports)."""
        return self.source.image(index)

    def stack(self, rows: Sequence[int] | None = None) -> torch.Tensor:
        """The images at ``rows`` (positions; all when None) as one uint8 tensor [N, C, H, W].

        For whatever needs the images at once (the closed-form memoriser); a streamed set decodes them here.
        """
        return self.source.stack(None if rows is None else [int(r) for r in rows])

    @property
    def n_members(self) -> int:
        return int(self.labels.sum())

    def subset(self, rows) -> EvaluationSet:
        """The samples at ``rows`` (positions), in that order, with their conditions."""
        rows = [int(r) for r in rows]
        return EvaluationSet(self.source.subset(rows), self.labels[rows], [self.ids[i] for i in rows],
                             {name: [values[i] for i in rows] for name, values in self.extras.items()})

    def first(self, n: int | None) -> EvaluationSet:
        """The first ``n`` members and first ``n`` non-members (all when ``n`` is None)."""
        if n is None:
            return self
        members, nonmembers = torch.nonzero(self.labels == 1).flatten(), torch.nonzero(self.labels == 0).flatten()
        return self.subset([*members[:n].tolist(), *nonmembers[:n].tolist()])


def _distinct_images(parts: list[tuple[ImagePool, Sequence[int], list[bytes] | None]], members: list[str],
                     nonmembers: list[str], stream: bool, limits: tuple[int | None, int | None] = (None, None),
                     ) -> tuple[ImageSource, list[int], int, dict[str, Any]]:
    """The images of ``parts`` (pool, indices, their bytes when read already), in order, less exact duplicates.

    Every image is decoded once here (a broken file stops the run before any query). Returns their source
    (streamed: decoded again item by item), the rows kept, how many are members and the duplicates' record.
    """
    pools = [pool for pool, _, _ in parts]
    if stream:
        rows = [(number, int(index)) for number, (_, indices, _) in enumerate(parts) for index in indices]
        raws = [raw for _, indices, given in parts for raw in (given or [None] * len(indices))]
        scanned = [scan(pools[number], index, raw) for (number, index), raw in zip(rows, raws, strict=True)]
        kept, n_members, duplicates = distinct_samples([pixels for _, pixels in scanned], members, nonmembers, limits)
        source = StreamedImages(pools, [rows[r] for r in kept], [scanned[r][0] for r in kept])
        return source, kept, n_members, duplicates
    loaded = [load_images(pool, indices, given)[0] for pool, indices, given in parts]
    images = loaded[0] if len(loaded) == 1 else torch.cat(loaded)
    kept, n_members, duplicates = distinct_samples([pixel_digest(image) for image in images], members, nonmembers,
                                                   limits)
    kept_images = images if len(kept) == len(images) else images[kept]  # no copy when nothing is left out
    return InMemoryImages(kept_images), kept, n_members, duplicates


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
    members = first_n(split.members, max_members, "data.max_members") if checked_when_drawn else split.members
    nonmembers = (first_n(split.nonmembers, max_nonmembers, "data.max_nonmembers") if checked_when_drawn
                  else split.nonmembers)
    chosen = members + nonmembers
    source, kept, n_members, duplicates = _distinct_images(
        [(pool, [position[i] for i in chosen], [raw[i] for i in chosen])], members, nonmembers, stream,
        (max_members, max_nonmembers))
    evalset = EvaluationSet(source, membership_labels(n_members, len(kept)), [chosen[r] for r in kept])
    evalset.record = split_record(digest, verified, duplicates)
    return evalset


def from_folders(members_dir: str, nonmembers_dir: str, image_size: int, channels: int,
                 stream: bool = False) -> EvaluationSet:
    """Members and non-members from two image folders (resized and centre-cropped to ``image_size``).

    The folders must not share a file (the same, nested or overlapping folders are refused); exact duplicate
    images are left out (mia.data.duplicates). ``stream``: decode the images item by item when scoring.
    """
    pools = [FolderPool(folder, image_size, channels, name=prefix)
             for prefix, folder in (("members", members_dir), ("nonmembers", nonmembers_dir))]
    separate_folders(*pools)
    ids = [f"{pool.name}/{i}" for pool in pools for i in pool.ids]
    n_listed = len(pools[0])
    source, kept, n_members, duplicates = _distinct_images([(pool, range(len(pool)), None) for pool in pools],
                                                           ids[:n_listed], ids[n_listed:], stream)
    evalset = EvaluationSet(source, membership_labels(n_members, len(kept)), [ids[r] for r in kept])
    evalset.record = folder_record(duplicates)
    return evalset


def evaluation_set_for(data: Mapping[str, Any], image_shape: tuple[int, int, int], split: Split | None,
                       target_name: str, conditioning: str | None = None, stream: bool = False) -> EvaluationSet:
    """The attack's evaluation set from its data config: two folders when given, else the target's split.

    Checked against the image shape the target takes, so a mismatch stops the run before any query. The
    items carry the condition the target takes (``conditioning``: "text" = captions, "class" = class labels);
    ``stream`` decodes the images item by item instead of holding them all (latent targets).
    """
    channels, height, width = image_shape
    check_caption_setting(data, conditioning, target_name)
    if data.get("members") or data.get("nonmembers"):
        if not (data.get("members") and data.get("nonmembers")):
            raise MiaError("give both data.members and data.nonmembers (folders of images), or neither")
        evalset = from_folders(data["members"], data["nonmembers"], data.get("image_size") or height, channels,
                               stream=stream)
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
