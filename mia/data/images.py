"""Decode the sampled images once into one uint8 tensor, and the [-1, 1] conversion models use."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, UnidentifiedImageError

from mia.data.captions import captions_of
from mia.data.pools import ImagePool
from mia.data.split import fingerprint
from mia.errors import MiaError


def load_images(
    pool: ImagePool, indices: Sequence[int], raws: Sequence[bytes] | None = None
) -> tuple[torch.Tensor, list[bytes]]:
    """Read and transform pool samples into uint8 [N, C, H, W]; also return their raw bytes.

    ``raws`` are the samples' bytes when the caller has read them already. Every sample is decoded here,
    before any training or attack starts, so a bad file stops the run at once with its name.
    """
    images = torch.empty(len(indices), pool.channels, pool.image_size, pool.image_size, dtype=torch.uint8)
    contents: list[bytes] = []
    for row, index in enumerate(indices):
        index = int(index)
        try:
            raw = pool.read(index) if raws is None else raws[row]
            image = pool.decode(raw)
            images[row] = pool.transform(image)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as err:  # a bomb: more pixels than PIL's limit, refused unread
            raise MiaError(
                f"cannot read image {pool.describe(index)} ({err.__class__.__name__}: {err}); "
                "remove or replace that file"
            ) from err
        contents.append(raw)
    return images, contents


def load_split_images(
    pool: ImagePool, member_idx: Sequence[int], nonmember_idx: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Members' and non-members' images, and the fingerprint of both (members first; captions included)."""
    members, member_raw = load_images(pool, member_idx)
    nonmembers, nonmember_raw = load_images(pool, nonmember_idx)
    ids = [pool.ids[int(i)] for i in member_idx] + [pool.ids[int(i)] for i in nonmember_idx]
    captions = captions_of(pool, [*member_idx, *nonmember_idx])
    return members, nonmembers, fingerprint(ids, member_raw + nonmember_raw, captions)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range diffusion models are trained on."""
    return images.float() / 127.5 - 1.0
