"""The streamed image source: images decoded item by item from the files, never held all at once.

A latent target's evaluation set at 512 px would take ~0.8 MB per decoded image; streamed, the process
holds one batch of images at a time (the VAE turns them into 4×64×64 latents). Each file is read and
decoded once up front (``scan``), one at a time, to hash its bytes (the set's digest keys the prediction
cache) and its pixels (exact duplicates are left out, as for in-memory sets), so a broken file stops the
run before any query; the pixels are decoded again when the item is asked for, and never kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from PIL import UnidentifiedImageError

from mia.data.duplicates import pixel_digest
from mia.data.pools import ImagePool
from mia.errors import MiaError

_UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


class StreamedImages:
    """Images at ``rows`` = ``(pool number, index in that pool)``, each read and decoded when asked for.

    ``sample_digests`` are the sha256 of each file's bytes (from ``scan``): with how the pools transform
    images, they stand for the pixels in the evaluation set's digest.
    """

    def __init__(self, pools: list[ImagePool], rows: list[tuple[int, int]], sample_digests: list[bytes]) -> None:
        if len(rows) != len(sample_digests):
            raise ValueError("rows and sample digests differ in length")
        shapes = {(p.channels, p.image_size, p.image_size) for p in pools}
        if len(shapes) != 1:
            raise ValueError("the pools of one evaluation set must give one image shape")
        self.pools = pools
        self.rows = rows
        self.sample_digests = sample_digests

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int, int]:
        pool = self.pools[0]
        return pool.channels, pool.image_size, pool.image_size

    def image(self, index: int) -> torch.Tensor:
        pool_number, row = self.rows[index]
        pool = self.pools[pool_number]
        try:
            return pool.transform(pool.decode(pool.read(row)))
        except _UNREADABLE as err:
            raise MiaError(f"cannot read image {pool.describe(row)} ({err.__class__.__name__}: {err}); "
                           "remove or replace that file") from err

    def stack(self, rows: Sequence[int] | None) -> torch.Tensor:
        """The images at ``rows`` (all when None) decoded into one uint8 tensor [N, C, H, W], all in memory."""
        rows = range(len(self)) if rows is None else rows
        images = torch.empty(len(rows), *self.shape, dtype=torch.uint8)
        for position, row in enumerate(rows):
            images[position] = self.image(row)
        return images

    def subset(self, rows: list[int]) -> StreamedImages:
        return StreamedImages(self.pools, [self.rows[i] for i in rows], [self.sample_digests[i] for i in rows])

    def update_digest(self, digest) -> None:
        """How images are transformed, then each file's bytes (hashed once, by ``scan``)."""
        for pool in self.pools:
            digest.update(f"{pool.channels}:{pool.image_size}:{pool.crop_size}".encode())
        for sample in self.sample_digests:
            digest.update(sample)


def scan(pool: ImagePool, index: int, raw: bytes | None = None) -> tuple[bytes, bytes]:
    """(sha256 of one sample's bytes, its pixel digest), decoding it once and keeping nothing."""
    try:
        raw = pool.read(index) if raw is None else raw
        pixels = pixel_digest(pool.transform(pool.decode(raw)))
    except _UNREADABLE as err:
        raise MiaError(f"cannot read image {pool.describe(index)} ({err.__class__.__name__}: {err}); "
                       "remove or replace that file") from err
    return hashlib.sha256(raw).digest(), pixels
