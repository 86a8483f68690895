"""Datasets, member/non-member splits and data modules, shared by training and attacks."""

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
