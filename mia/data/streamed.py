"""Evaluation sets that stream their images: decoded item by item from the files, never held all at once.

A latent target's evaluation set at 512 px would take ~0.8 MB per decoded image; streamed, the process
holds one batch of images at a time (the VAE turns them into 4×64×64 latents). Each file's bytes are read
once up front, to hash them (the set's digest keys the prediction cache) and to check that every file is
an image, so a non-image stops the run before any query; the pixels are decoded when the item is asked for.
"""

from __future__ import annotations

import functools
import hashlib
import io
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

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

    def first(self, n: int | None) -> StreamedEvaluationSet:
        if n is None:
            return self
        members, nonmembers = torch.nonzero(self.labels == 1).flatten(), torch.nonzero(self.labels == 0).flatten()
        picked = [*members[:n].tolist(), *nonmembers[:n].tolist()]
        return StreamedEvaluationSet(self.pools, [self.rows[i] for i in picked], self.labels[picked],
                                     [self.ids[i] for i in picked], [self.sample_digests[i] for i in picked],
                                     {name: [values[i] for i in picked] for name, values in self.extras.items()})


def scan(pool: ImagePool, index: int) -> bytes:
    """sha256 of one sample's bytes, after checking they open as an image (the header only, not the pixels)."""
    try:
        raw = pool.read(index)
        if isinstance(pool, FolderPool):
            Image.open(io.BytesIO(raw))  # lazy: reads the header, decodes nothing
        else:
            pool.decode(raw)
    except _UNREADABLE as err:
        raise MiaError(f"cannot read image {pool.describe(index)} ({err.__class__.__name__}: {err}); "
                       "remove or replace that file") from err
    return hashlib.sha256(raw).digest()


def streamed_folders(members_dir: str, nonmembers_dir: str, image_size: int, channels: int) -> StreamedEvaluationSet:
    """Members and non-members from two image folders, as ``from_folders`` gives them, but streamed."""
    pools, rows, ids, digests = [], [], [], []
    for number, (prefix, folder) in enumerate((("members", members_dir), ("nonmembers", nonmembers_dir))):
        pool = FolderPool(folder, image_size, channels, name=prefix)
        pools.append(pool)
        for index, sample_id in enumerate(pool.ids):
            rows.append((number, index))
            ids.append(f"{prefix}/{sample_id}")
            digests.append(scan(pool, index))
    labels = torch.cat([torch.ones(len(pools[0])), torch.zeros(len(pools[1]))])
    return StreamedEvaluationSet(pools, rows, labels, ids, digests)
