"""Every dataset path, on image fixtures made here; bad input gives MiaError naming what to fix."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, compose_config, write_images

from mia.data.captions import CaptionedFolderPool, read_captions
from mia.data.images import load_images, load_split_images
from mia.data.pools import DigitsPool, FolderPool, celeba_pool, cifar_pool
from mia.errors import MiaError


def test_digits_pool_is_sklearns_digits_upsampled():
    from sklearn.datasets import load_digits

    pool = DigitsPool(image_size=16)
    assert len(pool) == 1797 and pool.ids[:3] == ["0", "1", "2"]
    images, _ = load_images(pool, [0, 5])
    assert images.shape == (2, 1, 16, 16) and images.dtype == torch.uint8
    # The brightest and darkest pixels of the original digit stay where they are after upsampling.
    original = load_digits().images[5]
    small = torch.nn.functional.avg_pool2d(images[1:2].float(), 2)[0, 0].numpy()
    assert np.corrcoef(small.ravel(), original.ravel())[0, 1] > 0.9
    rgb, _ = load_images(DigitsPool(image_size=8, channels=3), [0])
    assert rgb.shape == (1, 3, 8, 8) and torch.equal(rgb[0, 0], rgb[0, 2])


def test_folder_pool_reads_recursively_with_relative_ids(image_tree: Path):
    pool = FolderPool(str(image_tree), image_size=16)
    assert len(pool) == 16  # the MANIFEST file is not an image and is skipped
    assert pool.ids[0] == "test/cat/0000.jpg" and all("/" in i for i in pool.ids)
    images, raw = load_images(pool, range(3))
    assert images.shape == (3, 3, 16, 16)
    assert raw[0] == (image_tree / pool.ids[0]).read_bytes()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_an_image_tree_uses_the_subset(image_tree: Path, name: str):
    pool = cifar_pool(str(image_tree), name=name, subset="train")
    assert len(pool) == 12 and pool.ids[0] == "train/cat/0000.jpg" and pool.name == name
    test_pool = cifar_pool(str(image_tree), name=name, subset="test")
    assert len(test_pool) == 4 and not set(pool.ids) & set(test_pool.ids)


def test_cifar_in_torchvision_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torchvision.datasets as datasets

    (tmp_path / "cifar-10-batches-py").mkdir()
    data = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    seen = {}

    def fake_cifar(root, train, download):
        seen.update(root=root, train=train, download=download)
        return SimpleNamespace(data=data)

    monkeypatch.setattr(datasets, "CIFAR10", fake_cifar)
    pool = cifar_pool(str(tmp_path), name="cifar10", subset="test")
    assert seen == {"root": str(tmp_path), "train": False, "download": False}
    assert pool.ids == [f"test/{i}" for i in range(5)]
    images, raw = load_images(pool, [2])
    assert torch.equal(images[0], torch.from_numpy(data[2]).permute(2, 0, 1))
    assert raw[0] == data[2].tobytes()


def test_celeba_crops_the_centre_then_resizes(tmp_path: Path):
    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    # 89x109 like the copies here: a white centre square on black, so the crop is visible.
    array = np.zeros((109, 89, 3), dtype=np.uint8)
    array[18:91, 8:81] = 255  # the 70x70 centre, with a pixel to spare for rounding
    from PIL import Image

    Image.fromarray(array).save(folder / "000001.png")
    pool = celeba_pool(str(tmp_path / "celeba"), image_size=16, crop_size=70)
    assert pool.ids == ["img_align_celeba/000001.png"]
    images, _ = load_images(pool, [0])
    assert images.shape == (1, 3, 16, 16)
    assert images.float().mean() > 250  # only the white centre survives the crop
    uncropped, _ = load_images(celeba_pool(str(tmp_path / "celeba"), image_size=16, crop_size=None), [0])
    assert uncropped.float().mean() < 220


def test_split_fingerprint_changes_with_a_file(image_tree: Path):
    pool = FolderPool(str(image_tree), image_size=8)
    _, _, before = load_split_images(pool, [0, 1], [2, 3])
    write_images(image_tree / "test" / "cat", 1, (32, 32), seed=99, ext="jpg")  # overwrites 0000.jpg
    _, _, after = load_split_images(pool, [0, 1], [2, 3])
    assert before.startswith("sha256:") and before != after


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: FolderPool(str(tmp / "nope"), 8), "does not exist"),
        (lambda tmp: FolderPool(str(tmp), 8), "no image files"),
        (lambda tmp: cifar_pool(str(tmp), name="cifar10"), "no cifar10 under"),
        (lambda tmp: cifar_pool(str(tmp), name="cifar10", subset="val"), "must be 'train' or 'test'"),
        (lambda tmp: celeba_pool(None), "data.root is not set"),
        (lambda tmp: DigitsPool(image_size=2), "data.image_size"),
        (lambda tmp: DigitsPool(channels=2), "data.channels"),
    ],
)
def test_bad_dataset_roots_are_named(tmp_path: Path, make, message: str):
    with pytest.raises(MiaError, match=message):
        make(tmp_path)


def test_a_broken_image_file_is_named(image_tree: Path):
    broken = image_tree / "train" / "cat" / "0003.jpg"
    broken.write_bytes(b"this is not a jpeg")
    pool = FolderPool(str(image_tree), image_size=8)
    with pytest.raises(MiaError, match=r"cannot read image .*0003\.jpg"):
        load_images(pool, range(len(pool)))


def _captioned(root: Path, names: list[str]) -> Path:
    """root/<subset>/NNNN.png images and root/metadata.jsonl with one row per name in ``names``."""
    for subset in ("train", "test"):
        write_images(root / subset, 2, (8, 8), seed=0)
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": f"a photo of {n}"}) + "\n"
                                                 for n in names))
    return root


ALL_FOUR = ["train/0000.png", "train/0001.png", "test/0000.png", "test/0001.png"]


def test_a_caption_row_naming_a_missing_image_is_refused(tmp_path: Path):
    root = _captioned(tmp_path / "data", [*ALL_FOUR, "train/0002.png"])
    message = (r"metadata.jsonl names 1 images that are not in .*data \(first: train/0002.png, line 5\): the folder "
               r"and its captions disagree")
    with pytest.raises(MiaError, match=message) as refused:
        read_captions(root)
    assert "\n" not in str(refused.value)
    with pytest.raises(MiaError, match=message):  # also when only one subset is read
        CaptionedFolderPool(str(root), 8, subset="train")
    from train_targets.train import train

    overrides = [o for o in TINY_TRAIN if not o.startswith(("data", "target="))]
    overrides += ["data=captioned_folder", f"data.root={root}", "data.image_size=8", "target=text_to_image_tiny"]
    with pytest.raises(MiaError, match=message):  # and mia-train data=captioned_folder, before any training
        train(compose_config("train", overrides, tmp_path / "run"))
    assert not (tmp_path / "run" / "target").exists()


def test_rows_for_existing_images_of_another_subset_are_not_refused(tmp_path: Path):
    root = _captioned(tmp_path / "data", ALL_FOUR)
    pool = CaptionedFolderPool(str(root), 8, subset="train")
    assert pool.ids == ["train/0000.png", "train/0001.png"]
    assert pool.captions == ["a photo of train/0000.png", "a photo of train/0001.png"]
    assert read_captions(root, images=["test/0001.png"]) == {"test/0001.png": "a photo of test/0001.png"}
