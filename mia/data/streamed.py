"""Evaluation sets that stream their images: decoded item by item from the files, never held all at once.

A latent target's evaluation set at 512 px would take ~0.8 MB per decoded image; streamed, the process
holds one batch of images at a time (the VAE turns them into 4×64×64 latents). Each file is read and
decoded once up front, one at a time, to hash its bytes (the set's digest keys the prediction cache) and
its pixels (exact duplicates are left out, as for in-memory sets), so a broken file stops the run before
any query; the pixels are decoded again when the item is asked for, and never kept.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import torch
from PIL import UnidentifiedImageError

from mia.data.duplicates import pixel_digest, separate_folders
from mia.data.evaluation_set import EvaluationSet, sample_key
from mia.data.pools import FolderPool, ImagePool
from mia.errors import MiaError

_UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


class StreamedEvaluationSet(EvaluationSet):
    """Rows ``(pool number, index in that pool)``; each item is read and decoded when it is asked for."""

    def __init__(self, pools: list[ImagePool], rows: list[tuple[int, int]], labels: torch.Tensor, ids: list[str],
                 sample_digests: list[bytes], extras: dict[str, list] | None = None) -> None:
        if not (len(rows) == len(labels) == len(ids) == len(sample_digests)):
            raise ValueError("rows, labels, ids and digests differ in length")
        shapes = {(p.channels, p.image_size, p.image_size) for p in pools}
        if len(shapes) != 1:
            raise ValueError("the pools of one evaluation set must give one image shape")
        self.pools = pools
        self.rows = rows
        self.labels = labels.long()
        self.ids = ids
        self.sample_digests = sample_digests
        self.keys = torch.tensor([sample_key(i) for i in ids], dtype=torch.int64)
        self.record: dict[str, Any] = {}
        self.extras: dict[str, list] = {}
        self.attach(extras or {})

    @property
    def images(self) -> torch.Tensor:
        raise TypeError("a streamed evaluation set holds no images in memory; read items (or .image(i)) instead")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        pool = self.pools[0]
        return pool.channels, pool.image_size, pool.image_size

    @functools.cached_property
    def digest(self) -> str:
        """sha256 over the ids, how images are transformed, each file's bytes (hashed once) and the conditions."""
        digest = hashlib.sha256("\n".join(self.ids).encode())
        for pool in self.pools:
            digest.update(f"{pool.channels}:{pool.image_size}:{pool.crop_size}".encode())
        for sample in self.sample_digests:
            digest.update(sample)
        self._extras_digest(digest)
        return digest.hexdigest()

    def image(self, index: int) -> torch.Tensor:
        pool_number, row = self.rows[index]
        pool = self.pools[pool_number]
        try:
            return pool.transform(pool.decode(pool.read(row)))
        except _UNREADABLE as err:
            raise MiaError(f"cannot read image {pool.describe(row)} ({err.__class__.__name__}: {err}); "
                           "remove or replace that file") from err

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.image(index), "label": self.labels[index], "index": index, "key": self.keys[index],
                **{name: values[index] for name, values in self.extras.items()}}

    def subset(self, rows) -> StreamedEvaluationSet:
        rows = [int(r) for r in rows]
        return StreamedEvaluationSet(self.pools, [self.rows[i] for i in rows], self.labels[rows],
                                     [self.ids[i] for i in rows], [self.sample_digests[i] for i in rows],
                                     {name: [values[i] for i in rows] for name, values in self.extras.items()})


def scan(pool: ImagePool, index: int, raw: bytes | None = None) -> tuple[bytes, bytes]:
    """(sha256 of one sample's bytes, its pixel digest), decoding it once and keeping nothing."""
    try:
        raw = pool.read(index) if raw is None else raw
        pixels = pixel_digest(pool.transform(pool.decode(raw)))
    except _UNREADABLE as err:
        raise MiaError(f"cannot read image {pool.describe(index)} ({err.__class__.__name__}: {err}); "
                       "remove or replace that file") from err
    return hashlib.sha256(raw).digest(), pixels


def streamed_folders(members_dir: str, nonmembers_dir: str, image_size: int, channels: int) -> StreamedEvaluationSet:
    """Members and non-members from two image folders, as ``from_folders`` gives them, but streamed."""
    from mia.data.evaluation_set import _distinct, _labels, folder_record

    pools = [FolderPool(folder, image_size, channels, name=prefix)
             for prefix, folder in (("members", members_dir), ("nonmembers", nonmembers_dir))]
    separate_folders(*pools)
    rows, ids, scanned = [], [], []
    for number, pool in enumerate(pools):
        for index, sample_id in enumerate(pool.ids):
            rows.append((number, index))
            ids.append(f"{pool.name}/{sample_id}")
            scanned.append(scan(pool, index))
    n_members = len(pools[0])
    kept, kept_members, duplicates = _distinct([pixels for _, pixels in scanned], ids[:n_members], ids[n_members:])
    evalset = StreamedEvaluationSet(pools, [rows[r] for r in kept], _labels(kept_members, len(kept)),
                                    [ids[r] for r in kept], [scanned[r][0] for r in kept])
    evalset.record = folder_record(duplicates)
    return evalset
