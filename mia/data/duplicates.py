"""Exact duplicate images: kept out of splits when they are drawn, and out of evaluation sets when attacked.

A non-member whose pixels equal a member's is mislabelled data: the model trained on exactly those pixels.
Duplicates are found by a sha256 of the *decoded, transformed* pixels (the uint8 tensor the model sees),
not of the file bytes: two files of the same picture can differ in bytes (re-encoded JPEGs, another PNG
compression level, EXIF data) yet decode to the same pixels, and a model cannot tell them apart. The
dataset fingerprint stays a hash of the bytes, since it answers another question (did any file change?).
Near-duplicates (a re-encoded JPEG with other pixels, a crop) are not exact and are not caught here.

The rule, the same at split time and at attack time: samples are taken in order, members first; a sample
whose pixels equal an earlier one's is left out, and every one left out is listed with the sample it repeats.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mia.data.captions import captions_of
from mia.data.images import load_images
from mia.data.pools import FolderPool, ImagePool
from mia.data.split import Split, draw_order, fingerprint, split_sizes
from mia.errors import MiaError

log = logging.getLogger(__name__)

RULE = "exact duplicates by sha256 of the decoded, transformed pixels; later copies left out (members first)"


def pixel_digest(image: torch.Tensor) -> bytes:
    """sha256 of one image's shape and uint8 pixels."""
    digest = hashlib.sha256(str(tuple(image.shape)).encode())
    digest.update(image.contiguous().numpy().tobytes())
    return digest.digest()


def distinct_rows(images: torch.Tensor | Sequence[bytes], labels: Sequence[int],
                  ids: Sequence[str]) -> tuple[list[int], dict[str, Any]]:
    """The rows to keep (each distinct image once, members first) and the record of those left out.

    ``images``: the decoded images, or their ``pixel_digest``s (a streamed set hashes them as it scans).
    A non-member equal to a member is left out (it is not a non-member of that model); a repeated member or
    non-member is left out too, so that no image counts twice in the metrics and their intervals.
    """
    digests = [pixel_digest(image) for image in images] if isinstance(images, torch.Tensor) else list(images)
    labels = [int(label) for label in labels]
    first_seen: dict[bytes, int] = {}
    left_out: dict[str, list[list[str]]] = {"nonmembers_equal_to_members": [], "repeated_members": [],
                                            "repeated_nonmembers": []}
    keep = []
    for row in sorted(range(len(ids)), key=lambda r: -labels[r]):  # members first, each group in order
        kept = first_seen.setdefault(digests[row], row)
        if kept == row:
            keep.append(row)
            continue
        if labels[row] == 1:
            kind = "repeated_members"
        else:
            kind = "nonmembers_equal_to_members" if labels[kept] == 1 else "repeated_nonmembers"
        left_out[kind].append([ids[row], ids[kept]])
    record = {"rule": RULE, "left_out": sum(len(pairs) for pairs in left_out.values()), **left_out}
    if record["left_out"]:
        log.warning(
            "%d exact duplicate images left out of the evaluation set: %d non-members identical to a member "
            "(the model trained on those pixels), %d repeated members, %d repeated non-members; "
            "listed in metrics.json under evaluation_set.duplicates",
            record["left_out"], *(len(left_out[kind]) for kind in left_out),
        )
    return sorted(keep), record


def separate_folders(members: FolderPool, nonmembers: FolderPool) -> None:
    """Refuse member and non-member folders that are the same, nested, or share a file (a link included)."""
    first, second = members.root.resolve(), nonmembers.root.resolve()
    if first == second:
        raise MiaError(f"data.members and data.nonmembers are the same folder ({first}); give two separate folders")
    for inner, outer, inner_key, outer_key in ((first, second, "members", "nonmembers"),
                                               (second, first, "nonmembers", "members")):
        if inner.is_relative_to(outer):
            raise MiaError(f"data.{inner_key} ({inner}) is inside data.{outer_key} ({outer}), so its images would "
                           "be members and non-members at once; give two separate folders")

    def files(pool: FolderPool) -> dict[tuple[int, int], str]:
        stats = {}
        for sample_id in pool.ids:
            info = os.stat(pool.root / sample_id)  # follows links: a linked file is the file it points at
            stats[(info.st_dev, info.st_ino)] = sample_id
        return stats

    member_files, nonmember_files = files(members), files(nonmembers)
    shared = sorted(set(member_files) & set(nonmember_files))
    if shared:
        raise MiaError(
            f"{len(shared)} files are in both data.members and data.nonmembers (e.g. members/"
            f"{member_files[shared[0]]} is nonmembers/{nonmember_files[shared[0]]}, through a link); "
            "give folders that share no file"
        )


@dataclass
class Exclusion:
    """Samples a split must not draw: those of other splits (by id), and any pixel copy of them."""

    ids: set[str] = field(default_factory=set)
    pixels: set[bytes] = field(default_factory=set)
    record: dict[str, Any] = field(default_factory=dict)  # what split.json keeps of it


def exclusion(paths: Sequence[str] | None, pool: ImagePool, data_config: Mapping[str, Any]) -> Exclusion | None:
    """``split.exclude``: the members and non-members of these split.json files, read from ``pool``, and the
    samples another part of their model trained on (``also_trained_on``: a text-to-image autoencoder's).

    A reference or shadow model trained on a split drawn without them never saw a target's evaluation samples,
    not even as a pixel copy under another id (CIFAR-10 has some); a fine-tune's split drawn without its base's
    never evaluates on a sample the base trained on.
    """
    if not paths:
        return None
    excluded: list[str] = []
    for path in paths:
        split = Split.load(path)
        name = split.dataset.get("name")
        if name != data_config.get("name"):
            raise MiaError(f"split.exclude: {path} is a split of the {name} dataset, not of {data_config.get('name')}; "
                           "its samples cannot be told apart in this pool")
        excluded += split.members + split.nonmembers + [i for ids in split.also_trained_on.values() for i in ids]
    excluded = list(dict.fromkeys(excluded))  # each once, in order
    position = {sample_id: i for i, sample_id in enumerate(pool.ids)}
    missing = [i for i in excluded if i not in position]
    if missing:
        raise MiaError(f"split.exclude: {len(missing)} of its samples (e.g. {missing[0]}) are not in the dataset at "
                       f"{data_config.get('root')}; give the data.root those splits were drawn from")
    images, _ = load_images(pool, [position[i] for i in excluded])
    return Exclusion(set(excluded), {pixel_digest(image) for image in images},
                     {"splits": [str(p) for p in paths], "samples": len(set(excluded))})


@dataclass
class Candidates:
    """``split.pool``: the only samples a split may draw (those another split lists, its labels never read)."""

    ids: list[str]  # sorted, so the draw depends on which samples they are, not on how that split labelled them
    record: dict[str, Any] = field(default_factory=dict)  # what split.json keeps of it


def candidates(path: str | None, pool: ImagePool, data_config: Mapping[str, Any]) -> Candidates | None:
    """The members and non-members of the split.json at ``path`` as one unlabelled pool (shadow models).

    A shadow model of a target draws its own members from the target's evaluation samples, so that each of
    those samples is in some shadows' training sets and out of others' (docs/method.md, "Shadow models").
    """
    if not path:
        return None
    split = Split.load(path)
    if split.dataset.get("name") != data_config.get("name"):
        raise MiaError(f"split.pool: {path} is a split of the {split.dataset.get('name')} dataset, not of "
                       f"{data_config.get('name')}; draw from a split of this dataset")
    ids = sorted(set(split.members) | set(split.nonmembers))
    known = set(pool.ids)
    missing = [i for i in ids if i not in known]
    if missing:
        raise MiaError(f"split.pool: {len(missing)} of its samples (e.g. {missing[0]}) are not in the dataset at "
                       f"{data_config.get('root')}; give the data.root that split was drawn from")
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    return Candidates(ids, {"split": str(path), "samples": len(ids), "ids_sha256": digest})


def draw_distinct_split(
    pool: ImagePool, data_config: Mapping[str, Any], members: int | None, nonmembers: int | None, seed: int,
    exclude: Exclusion | None = None, within: Candidates | None = None,
) -> tuple[Split, torch.Tensor, torch.Tensor]:
    """A seeded split of distinct images, with the members' and non-members' images (uint8) decoded once.

    Samples are taken in the seeded order; one whose pixels equal an already drawn one's is skipped and
    the next is taken, so the split keeps its sizes. A pool without duplicates gets exactly the split of
    ``make_split``. ``None`` sizes mean half of the pool's distinct images each (less what ``exclude`` holds).
    ``exclude``: samples never drawn, nor any pixel copy of them. ``within``: the only samples drawn
    (``split.pool``), in a seeded order of their sorted ids; ``None`` sizes are then half of them each.
    """
    if within is None:
        available, order = len(pool), draw_order(len(pool), seed)
    else:
        position = {sample_id: i for i, sample_id in enumerate(pool.ids)}
        order = np.array([position[i] for i in within.ids], dtype=np.int64)[draw_order(len(within.ids), seed)]
        available = len(within.ids)
    excluded = 0 if exclude is None else sum(pool.ids[int(i)] in exclude.ids for i in order)
    split_sizes(available - excluded, members, nonmembers)  # before any image is read
    if exclude is not None:
        order = order[[pool.ids[int(i)] not in exclude.ids for i in order]]
    wanted = None if members is None or nonmembers is None else members + nonmembers
    kept: list[int] = []
    images: list[torch.Tensor] = []
    raws: list[bytes] = []
    first_seen: dict[bytes, int] = {}
    skipped: dict[str, str] = {}
    position = 0
    while position < len(order) and (wanted is None or len(kept) < wanted):
        stop = len(order) if wanted is None else min(len(order), position + wanted - len(kept))
        chunk = [int(i) for i in order[position:stop]]
        decoded, contents = load_images(pool, chunk)
        for index, image, raw in zip(chunk, decoded, contents, strict=True):
            digest = pixel_digest(image)
            if exclude is not None and digest in exclude.pixels:  # a copy of an excluded sample under another id
                exclude.record["pixel_copies"] = exclude.record.get("pixel_copies", 0) + 1
                continue
            first = first_seen.setdefault(digest, index)
            if first != index:
                skipped[pool.ids[index]] = pool.ids[first]
                continue
            kept.append(index)
            images.append(image)
            raws.append(raw)
        position = stop
    what = f"distinct images ({len(skipped)} exact duplicates left out)" if skipped else "images"
    n_members, n_nonmembers = split_sizes(len(kept), members, nonmembers, what=what)
    chosen = n_members + n_nonmembers
    ids = [pool.ids[i] for i in kept[:chosen]]
    stacked = torch.stack(images[:chosen]) if images else torch.empty(0, dtype=torch.uint8)
    in_split = set(ids)
    # Record only the skipped samples whose original is in the split (the walk may have read a few more).
    left_out = {dup: orig for dup, orig in skipped.items() if orig in in_split}
    if left_out:
        log.warning("%d images of %s are exact pixel duplicates of images drawn before them; left out of the "
                    "split (listed in split.json under duplicates)", len(left_out), pool.name)
    split = Split(
        members=ids[:n_members],
        nonmembers=ids[n_members:],
        seed=seed,
        # A captioned pool's captions are fingerprinted with the images, as the attack side checks them.
        dataset=dict(data_config, fingerprint=fingerprint(ids, raws[:chosen], captions_of(pool, kept[:chosen])),
                     pool_size=len(pool)),
        duplicates={"rule": RULE, "left_out": dict(sorted(left_out.items()))},
        excluded=exclude.record if exclude is not None else {},
        drawn_from=within.record if within is not None else {},
    )
    split.check()
    return split, stacked[:n_members], stacked[n_members:]

