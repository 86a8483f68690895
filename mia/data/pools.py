"""Image pools: fixed, ordered collections of images with stable ids, from which splits are drawn.

A pool reads a sample's raw bytes once (``read``) and decodes them (``decode``), so the same bytes serve
both the dataset fingerprint and the image. ``transform`` turns a decoded image into the uint8 tensor
``[C, H, W]`` that training and attacks use.
"""

from __future__ import annotations

import io
import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from mia.checks import require_integer
from mia.errors import MiaError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


class ImagePool(ABC):
    """An ordered collection of images with stable string ids."""

    def __init__(self, name: str, image_size: int, channels: int = 3, crop_size: int | None = None) -> None:
        require_integer("data.image_size", image_size, minimum=4)
        if channels not in (1, 3):
            raise MiaError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        require_integer("data.crop_size", crop_size, minimum=1, optional=True)
        self.name = name
        self.image_size = image_size
        self.channels = channels
        self.crop_size = crop_size
        steps: list = [v2.CenterCrop(crop_size)] if crop_size else []
        # Resize the shorter side, then crop the centre square: non-square images keep their aspect ratio.
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), v2.PILToTensor()]
        self._transform = v2.Compose(steps)
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    @abstractmethod
    def read(self, index: int) -> bytes:
        """The sample's raw bytes (file contents, or the array row), hashed into the fingerprint."""

    @abstractmethod
    def decode(self, raw: bytes) -> Image.Image:
        """Decode raw bytes into a PIL image."""

    def describe(self, index: int) -> str:
        """Where a sample comes from, for error messages."""
        return f"{self.name} sample {self.ids[index]}"

    def transform(self, image: Image.Image) -> torch.Tensor:
        """Decoded image -> uint8 tensor [C, H, W] at ``image_size``."""
        image = image.convert("L" if self.channels == 1 else "RGB")
        return self._transform(image)


class FolderPool(ImagePool):
    """Every image file under ``root/subset`` (recursively); ids are paths relative to ``root``."""

    def __init__(
        self,
        root: str,
        image_size: int,
        channels: int = 3,
        crop_size: int | None = None,
        subset: str | None = None,
        name: str = "folder",
    ) -> None:
        super().__init__(name, image_size, channels, crop_size)
        if root is None:
            raise MiaError(f"data.root is not set for dataset '{name}'; pass data.root=<folder of images>")
        self.root = Path(root).expanduser()
        folder = self.root / subset if subset else self.root
        if not folder.exists():
            raise MiaError(f"dataset folder {folder} does not exist; set data.root to a folder of images")
        if not folder.is_dir():
            raise MiaError(f"dataset root {folder} is not a folder; set data.root to a folder of images")
        files = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            files += [
                Path(dirpath, f)
                for f in filenames
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        if not files:
            raise MiaError(
                f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder}; "
                "point data.root at a folder that holds images"
            )
        self.ids = sorted(p.relative_to(self.root).as_posix() for p in files)

    def read(self, index: int) -> bytes:
        return (self.root / self.ids[index]).read_bytes()

    def decode(self, raw: bytes) -> Image.Image:
        # Past PIL's pixel limit an image is a likely decompression bomb: an error, not a warning and gigabytes.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            image.load()
        return image

    def describe(self, index: int) -> str:
        return str(self.root / self.ids[index])


class DigitsPool(ImagePool):
    """scikit-learn's bundled handwritten digits (1,797 8x8 images, shipped with scikit-learn), upsampled."""

    def __init__(self, image_size: int = 16, channels: int = 1, name: str = "digits") -> None:
        super().__init__(name, image_size, channels)
        from sklearn.datasets import load_digits

        # Pixel values are 0..16; scale to 0..255 exactly once so the stored bytes are the image.
        self._pixels = np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
        self.ids = [str(i) for i in range(len(self._pixels))]

    def read(self, index: int) -> bytes:
        return self._pixels[index].tobytes()

    def decode(self, raw: bytes) -> Image.Image:
        return Image.fromarray(np.frombuffer(raw, dtype=np.uint8).reshape(8, 8), mode="L")


class CIFARPool(ImagePool):
    """CIFAR-10/100 in torchvision's own format (``cifar-10-batches-py``); ids are ``<subset>/<index>``."""

    def __init__(self, dataset, subset: str, image_size: int, channels: int, name: str) -> None:
        super().__init__(name, image_size, channels)
        self._data = dataset.data  # uint8 [N, 32, 32, 3]
        self.ids = [f"{subset}/{i}" for i in range(len(self._data))]

    def read(self, index: int) -> bytes:
        return self._data[index].tobytes()

    def decode(self, raw: bytes) -> Image.Image:
        return Image.fromarray(np.frombuffer(raw, dtype=np.uint8).reshape(32, 32, 3), mode="RGB")


_TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def cifar_pool(
    root: str,
    name: str = "cifar10",
    subset: str = "train",
    download: bool = False,
    image_size: int = 32,
    channels: int = 3,
) -> ImagePool:
    """CIFAR-10/100 from torchvision's format under ``root``, or from an image tree ``root/<subset>/<class>/``."""
    if name not in _TORCHVISION_FOLDERS:
        raise MiaError(f"unknown CIFAR dataset '{name}'; use cifar10 or cifar100")
    if subset not in ("train", "test"):
        raise MiaError(f"data.subset must be 'train' or 'test', got {subset!r}")
    if root is None:
        raise MiaError(f"data.root is not set for {name}; pass data.root=<folder>")
    root_path = Path(root).expanduser()
    if (root_path / _TORCHVISION_FOLDERS[name]).is_dir() or download:
        from torchvision import datasets

        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        try:
            dataset = cls(str(root_path), train=subset == "train", download=download)
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            raise MiaError(f"{name} under {root_path}: {err}") from err
        return CIFARPool(dataset, subset, image_size, channels, name)
    if (root_path / subset).is_dir():
        return FolderPool(str(root_path), image_size, channels, subset=subset, name=name)
    raise MiaError(
        f"no {name} under {root_path}: expected torchvision's {_TORCHVISION_FOLDERS[name]}/ or an image tree "
        f"{root_path}/{subset}/<class>/*.jpg; set data.root, or data.download=true to fetch it"
    )


def celeba_pool(
    root: str, image_size: int = 32, crop_size: int | None = 70, channels: int = 3, name: str = "celeba"
) -> ImagePool:
    """Aligned CelebA faces from ``root/img_align_celeba/`` (or ``root`` itself): centre-crop, then resize."""
    root_path = Path(root).expanduser() if root is not None else None
    subset = "img_align_celeba" if root_path is not None and (root_path / "img_align_celeba").is_dir() else None
    return FolderPool(root, image_size, channels, crop_size=crop_size, subset=subset, name=name)
