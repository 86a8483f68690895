"""Datasets (by name), member/non-member splits and their record, and the attack's evaluation set."""

from mia.data.pools import CIFARPool, DigitsPool, FolderPool, ImagePool, celeba_pool, cifar_pool
from mia.data.split import Split, make_split

__all__ = [
    "CIFARPool",
    "DigitsPool",
    "FolderPool",
    "ImagePool",
    "Split",
    "celeba_pool",
    "cifar_pool",
    "make_split",
]
