"""The literature's member splits: SecMI's and PIA's ``*_train_ratio0.5.npz`` files as mia splits.

Such a file holds ``mia_train_idxs`` (the members: what the target was trained on) and ``mia_eval_idxs``
(the non-members), as positions in torchvision's order of the dataset's training set
(``CIFAR10(train=True)``, ``CIFAR100(train=True)``). mia's CIFAR pool in torchvision's format has exactly
that order (ids ``train/<index>``), so member ``i`` of the file becomes the id ``train/<i>``, in the file's
order. The image tree of JPEGs (``train/<class>/NNNN.jpg``) orders its images otherwise and is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mia.data.pools import CIFARPool, ImagePool
from mia.data.split import Split, fingerprint
from mia.errors import MiaError

log = logging.getLogger(__name__)

MEMBER_KEY, NONMEMBER_KEY = "mia_train_idxs", "mia_eval_idxs"


def read_index_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Members' and non-members' indices from a SecMI/PIA split file; each list distinct, the two disjoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MiaError(f"split file {path} does not exist; pass the .npz of member indices (e.g. "
                       "CIFAR10_train_ratio0.5.npz)")
    try:
        with np.load(path, allow_pickle=False) as content:
            arrays = {key: content[key] for key in content.files}
    except (OSError, ValueError) as err:
        raise MiaError(f"{path} is not a readable .npz file: {err}") from err
    missing = [key for key in (MEMBER_KEY, NONMEMBER_KEY) if key not in arrays]
    if missing:
        raise MiaError(f"{path} has no {missing[0]} (it holds {', '.join(sorted(arrays)) or 'nothing'}); a literature "
                       f"split file holds {MEMBER_KEY} (members) and {NONMEMBER_KEY} (non-members)")
    indices = []
    for key in (MEMBER_KEY, NONMEMBER_KEY):
        values = arrays[key]
        if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
            raise MiaError(f"{key} in {path} must be a non-empty 1-D array of integer indices, got "
                           f"{values.dtype} of shape {list(values.shape)}")
        if values.min() < 0:
            raise MiaError(f"{key} in {path} holds a negative index ({int(values.min())})")
        unique, counts = np.unique(values, return_counts=True)
        if (counts > 1).any():
            raise MiaError(f"{key} in {path} lists index {int(unique[counts > 1][0])} more than once")
        indices.append(values.astype(np.int64))
    members, nonmembers = indices
    overlap = np.intersect1d(members, nonmembers)
    if overlap.size:
        raise MiaError(f"{path}: {overlap.size} indices are both members and non-members (e.g. {int(overlap[0])}); "
                       "membership labels would be wrong")
    return members, nonmembers


def literature_indices(path: str | Path, pool: ImagePool) -> tuple[np.ndarray, np.ndarray]:
    """The file's indices, checked against the pool they index (torchvision's CIFAR training order)."""
    if not isinstance(pool, CIFARPool) or not pool.ids or not pool.ids[0].startswith("train/"):
        raise MiaError(
            f"the literature's split indices refer to torchvision's order of the CIFAR-10/100 training set, but "
            f"data '{pool.name}' is not that: use data=cifar10 or data=cifar100 with data.subset=train and "
            "torchvision's files under data.root (cifar-10-batches-py/ or cifar-100-python/)"
        )
    members, nonmembers = read_index_file(path)
    largest = int(max(members.max(), nonmembers.max()))
    if largest >= len(pool):
        raise MiaError(f"{Path(path).name} indexes image {largest}, but {pool.name} under data.root has only "
                       f"{len(pool)} training images (0..{len(pool) - 1}); is it the dataset the file was made for?")
    return members, nonmembers


def imported_indices(split_cfg: Mapping[str, Any], pool: ImagePool) -> tuple[np.ndarray, np.ndarray] | None:
    """mia-train's ``split.import_from``: the file's indices (None when unset); other split sizes must agree."""
    path = split_cfg.get("import_from")
    if not path:
        return None
    members, nonmembers = literature_indices(path, pool)
    for key, count in (("members", len(members)), ("nonmembers", len(nonmembers))):
        if split_cfg.get(key) is not None and split_cfg.get(key) != count:
            raise MiaError(f"split.{key}={split_cfg.get(key)} but {Path(path).name} lists {count}; with "
                           f"split.import_from the file fixes the split (set split.{key}=null)")
    if split_cfg.get("seed"):
        raise MiaError("split.seed does not apply with split.import_from (the file fixes the members); leave it 0")
    for key in ("exclude", "pool"):
        if split_cfg.get(key):
            raise MiaError(f"split.{key} applies to a seeded draw; with split.import_from the file fixes the split "
                           f"(leave split.{key} unset)")
    log.info("split from %s: %d members, %d non-members", path, len(members), len(nonmembers))
    return members, nonmembers


def literature_split(path: str | Path, pool: ImagePool, dataset: Mapping[str, Any]) -> Split:
    """The Split record (``split.json``) of the file on ``pool``; ``dataset`` is the data config to record.

    The fingerprint is over the indexed samples' bytes, as mia-train computes it for the same split.
    """
    members, nonmembers = literature_indices(path, pool)
    ids = [pool.ids[int(i)] for i in members] + [pool.ids[int(i)] for i in nonmembers]
    try:
        digest = fingerprint(ids, [pool.read(int(i)) for i in (*members, *nonmembers)])
    except OSError as err:
        raise MiaError(f"cannot read {pool.name}: {err}") from err
    split = Split(members=ids[: len(members)], nonmembers=ids[len(members):], seed=0,
                  dataset=dict(dataset, fingerprint=digest, pool_size=len(pool)))
    split.check()
    return split
