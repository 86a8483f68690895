"""Exact duplicate images never become non-members of a model that trained on them (split time, attack time)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images
from PIL import Image

from mia.data.duplicates import draw_distinct_split, exclusion, pixel_digest
from mia.data.evaluation_set import from_split
from mia.data.images import load_images, load_split_images
from mia.data.pools import DigitsPool, FolderPool
from mia.data.split import Split, fingerprint, make_split
from mia.errors import MiaError


def _copy_pixels(source: Path, dest: Path) -> None:
    """Same pixels, other bytes (another PNG compression level): only a pixel hash sees they are one image."""
    Image.open(source).save(dest, compress_level=0)
    assert dest.read_bytes() != source.read_bytes()


@pytest.fixture
def folder_with_copies(tmp_path: Path) -> Path:
    """10 distinct 8x8 images and 3 copies of them: an exact byte copy and two re-encoded ones."""
    root = tmp_path / "pool"
    write_images(root, 10, (8, 8), seed=0)
    shutil.copy(root / "0001.png", root / "copy_a.png")
    _copy_pixels(root / "0002.png", root / "copy_b.png")
    _copy_pixels(root / "0003.png", root / "copy_c.png")
    return root


def _pixels(images: torch.Tensor) -> set[bytes]:
    return {pixel_digest(image) for image in images}


def test_a_pool_without_duplicates_gets_the_split_it_always_got():
    pool = DigitsPool(image_size=8)
    split, members, nonmembers = draw_distinct_split(pool, {"name": "digits"}, 30, 20, seed=3)
    member_idx, nonmember_idx = make_split(len(pool), 30, 20, seed=3)
    assert split.members == [pool.ids[i] for i in member_idx]
    assert split.nonmembers == [pool.ids[i] for i in nonmember_idx]
    old_members, old_nonmembers, digest = load_split_images(pool, member_idx, nonmember_idx)
    assert torch.equal(members, old_members) and torch.equal(nonmembers, old_nonmembers)
    assert split.dataset["fingerprint"] == digest and split.duplicates["left_out"] == {}


@pytest.mark.parametrize("seed", range(4))
def test_the_split_skips_duplicates_and_keeps_its_sizes(folder_with_copies: Path, seed: int):
    pool = FolderPool(str(folder_with_copies), image_size=8)
    split, members, nonmembers = draw_distinct_split(pool, {"name": "folder"}, 5, 5, seed=seed)
    assert len(split.members) == 5 and len(split.nonmembers) == 5
    assert len(_pixels(torch.cat([members, nonmembers]))) == 10  # every image once, no member among non-members
    ids = split.members + split.nonmembers
    pairs = [{"copy_a.png", "0001.png"}, {"copy_b.png", "0002.png"}, {"copy_c.png", "0003.png"}]
    assert all(len(pair & set(ids)) == 1 for pair in pairs)  # one of each pair, whichever was drawn first
    # Each one skipped is recorded with the drawn image it repeats (the walk stops once the split is full,
    # so a copy drawn after that is neither in the split nor recorded).
    for skipped, original in split.duplicates["left_out"].items():
        assert {skipped, original} in pairs and original in ids and skipped not in ids
    raws = [(folder_with_copies / i).read_bytes() for i in ids]
    assert split.dataset["fingerprint"] == fingerprint(ids, raws)
    images, _ = load_images(pool, [pool.ids.index(i) for i in ids])
    assert torch.equal(images, torch.cat([members, nonmembers]))


def test_null_sizes_take_half_the_distinct_images_and_too_many_are_refused(folder_with_copies: Path):
    pool = FolderPool(str(folder_with_copies), image_size=8)
    split, _, _ = draw_distinct_split(pool, {"name": "folder"}, None, None, seed=0)
    assert len(split.members) == len(split.nonmembers) == 5  # 13 files, 10 distinct images
    assert len(split.duplicates["left_out"]) == 3  # the whole pool was read: every copy is met
    with pytest.raises(MiaError, match=r"only 10 distinct images \(3 exact duplicates left out\)"):
        draw_distinct_split(pool, {"name": "folder"}, 6, 5, seed=0)
    with pytest.raises(MiaError, match="pool has only 13 images"):  # checked before any image is read
        draw_distinct_split(pool, {"name": "folder"}, 10, 10, seed=0)


def _legacy_split(root: Path, members: list[str], nonmembers: list[str]) -> Split:
    """A split record as mia 0.1 wrote it: a fingerprint, no duplicate check."""
    ids = members + nonmembers
    dataset = {"name": "folder", "root": str(root), "image_size": 8, "channels": 3,
               "fingerprint": fingerprint(ids, [(root / i).read_bytes() for i in ids])}
    return Split(members=members, nonmembers=nonmembers, seed=0, dataset=dataset)


def test_an_old_split_with_a_member_among_its_nonmembers_loses_that_nonmember(folder_with_copies: Path, caplog):
    split = _legacy_split(folder_with_copies, ["0000.png", "0002.png", "0004.png", "0005.png"],
                          ["copy_b.png", "0006.png", "0007.png", "copy_a.png", "0001.png"])
    evalset = from_split(split)
    assert evalset.n_members == 4 and len(evalset) - evalset.n_members == 3
    assert "copy_b.png" not in evalset.ids and "copy_a.png" in evalset.ids and "0001.png" not in evalset.ids
    record = evalset.record["duplicates"]
    assert record["nonmembers_equal_to_members"] == [["copy_b.png", "0002.png"]]
    assert record["repeated_nonmembers"] == [["0001.png", "copy_a.png"]]
    assert record["left_out"] == 2 and evalset.record["labels_verified"] is True
    assert "2 exact duplicate images left out" in caplog.text
    # Limited to one member, the copy of an unattacked member is still no non-member: all are checked.
    limited = from_split(split, max_members=1)
    assert limited.ids[0] == "0000.png" and "copy_b.png" not in limited.ids and limited.n_members == 1


def test_a_nonmember_folder_image_equal_to_a_member_is_left_out(tmp_path: Path):
    from mia.data.evaluation_set import from_folders

    write_images(tmp_path / "in", 3, (8, 8), seed=0)
    write_images(tmp_path / "out", 2, (8, 8), seed=1)
    _copy_pixels(tmp_path / "in" / "0001.png", tmp_path / "out" / "same.png")
    shutil.copy(tmp_path / "in" / "0002.png", tmp_path / "in" / "again.png")  # a member given twice
    evalset = from_folders(str(tmp_path / "in"), str(tmp_path / "out"), 8, 3)
    assert evalset.ids == ["members/0000.png", "members/0001.png", "members/0002.png", "nonmembers/0000.png",
                           "nonmembers/0001.png"]
    assert evalset.labels.tolist() == [1, 1, 1, 0, 0]
    record = evalset.record["duplicates"]
    assert record["nonmembers_equal_to_members"] == [["nonmembers/same.png", "members/0001.png"]]
    assert record["repeated_members"] == [["members/again.png", "members/0002.png"]] and record["left_out"] == 2


def test_folders_left_with_no_nonmembers_are_refused(tmp_path: Path):
    from mia.data.evaluation_set import from_folders

    write_images(tmp_path / "in", 2, (8, 8), seed=0)
    (tmp_path / "out").mkdir()
    _copy_pixels(tmp_path / "in" / "0000.png", tmp_path / "out" / "same.png")
    with pytest.raises(MiaError, match="no members or no non-members are left"):
        from_folders(str(tmp_path / "in"), str(tmp_path / "out"), 8, 3)


def test_pixel_digest_sees_pixels_not_bytes(folder_with_copies: Path):
    pool = FolderPool(str(folder_with_copies), image_size=8)
    images, raws = load_images(pool, [pool.ids.index(i) for i in ("0002.png", "copy_b.png", "0004.png")])
    assert raws[0] != raws[1] and pixel_digest(images[0]) == pixel_digest(images[1])
    assert pixel_digest(images[0]) != pixel_digest(images[2])
    assert not np.array_equal(images[0].numpy(), images[2].numpy())


def test_a_split_drawn_with_another_excluded_shares_no_sample_nor_pixel_copy(tmp_path: Path):
    write_images(tmp_path / "pool", 40, (8, 8), seed=3)
    pool = FolderPool(tmp_path / "pool", image_size=8, channels=3)
    config = {"name": "folder", "root": str(tmp_path / "pool"), "image_size": 8, "channels": 3}
    target, _, _ = draw_distinct_split(pool, config, 6, 6, seed=0)
    target.save(tmp_path / "split.json")
    # A copy of a target member under another name: a model trained on it would have seen that member.
    shutil.copy(tmp_path / "pool" / target.members[0], tmp_path / "pool" / "copy_of_a_member.png")
    pool = FolderPool(tmp_path / "pool", image_size=8, channels=3)
    excluded = exclusion([str(tmp_path / "split.json")], pool, config)
    for seed in range(4):
        other, _, _ = draw_distinct_split(pool, config, 14, 14, seed=seed, exclude=excluded)
        assert not set(other.members + other.nonmembers) & set(target.members + target.nonmembers)
        assert "copy_of_a_member.png" not in other.members + other.nonmembers
    assert other.excluded["samples"] == 12 and Split.load(tmp_path / "split.json").excluded == {}
    with pytest.raises(MiaError, match="the split asks for 15 members"):
        draw_distinct_split(pool, config, 15, 15, seed=0, exclude=excluded)  # 41 images, 12 excluded, 1 copy


def test_a_split_of_another_dataset_cannot_be_excluded(tmp_path: Path):
    write_images(tmp_path / "pool", 10, (8, 8), seed=3)
    pool = FolderPool(tmp_path / "pool", image_size=8, channels=3)
    Split(members=["0000.png"], nonmembers=["0001.png"], seed=0, dataset={"name": "cifar10"}).save(tmp_path / "s.json")
    with pytest.raises(MiaError, match="is a split of the cifar10 dataset, not of folder"):
        exclusion([str(tmp_path / "s.json")], pool, {"name": "folder", "root": str(tmp_path / "pool")})
