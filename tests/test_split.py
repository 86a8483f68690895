"""Seeded splits: deterministic, disjoint, the requested sizes, and a record that round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mia.data.split import Split, make_split
from mia.errors import MiaError


def test_same_seed_same_split_and_another_seed_another():
    first = make_split(1000, 100, 300, seed=7)
    again = make_split(1000, 100, 300, seed=7)
    other = make_split(1000, 100, 300, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_split_is_disjoint_with_the_requested_sizes():
    members, nonmembers = make_split(1000, 100, 300, seed=0)
    assert len(members) == 100 and len(nonmembers) == 300
    assert len(set(members)) == 100 and len(set(nonmembers)) == 300
    assert not set(members) & set(nonmembers)
    assert set(members) | set(nonmembers) <= set(range(1000))


def test_null_sizes_mean_half_the_pool_each():
    members, nonmembers = make_split(11, None, None, seed=0)
    assert len(members) == len(nonmembers) == 5


@pytest.mark.parametrize(("members", "nonmembers"), [(60, 50), (0, 5), (5, -1), (2.5, 3)])
def test_impossible_sizes_are_refused(members, nonmembers):
    with pytest.raises(MiaError, match="split"):
        make_split(100, members, nonmembers, seed=0)


def test_record_round_trips(tmp_path: Path):
    split = Split(members=["a/1.png", "a/2.png"], nonmembers=["b/3.png"], seed=3, dataset={"name": "folder"})
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == split


def test_overlapping_or_corrupt_records_are_refused(tmp_path: Path):
    with pytest.raises(MiaError, match="both members and non-members"):
        Split(members=["1", "2"], nonmembers=["2", "3"], seed=0).check()
    with pytest.raises(MiaError, match="twice"):
        Split(members=["1", "1"], nonmembers=["3"], seed=0).check()
    (tmp_path / "split.json").write_text('{"members": ["1"]}')
    with pytest.raises(MiaError, match="lacks"):
        Split.load(tmp_path / "split.json")
    (tmp_path / "split.json").write_text("{not json")
    with pytest.raises(MiaError, match="cannot read split record"):
        Split.load(tmp_path / "split.json")
