"""NA's aggregation statistics against hand computations on a few vectors."""

from __future__ import annotations

import math

import pytest
import torch

from mia.attacks.aggregation import aggregation_score, centroid, density, magnitude, pairwise_l1, pairwise_l2

# Three 2-D predictions for one sample: (0,0), (3,0), (0,4).
E = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]], dtype=torch.float64)


def test_pairwise_l2_by_hand():
    # Squared distances: 9, 16, 25, each counted twice, over k² = 9.
    assert pairwise_l2(E).item() == pytest.approx(2 * (9 + 16 + 25) / 9)


def test_pairwise_l1_by_hand():
    # L1 distances: 3, 4, 7, each twice.
    assert pairwise_l1(E).item() == pytest.approx(2 * (3 + 4 + 7) / 9)


def test_centroid_by_hand():
    mean = (1.0, 4 / 3)
    distances = [math.dist(p, mean) for p in ((0, 0), (3, 0), (0, 4))]
    assert centroid(E).item() == pytest.approx(sum(distances) / 3)


def test_magnitude_by_hand():
    # Squared norms: 0, 9, 16, over k = 3.
    assert magnitude(E).item() == pytest.approx((0 + 9 + 16) / 3)


def test_density_by_hand():
    # Nearest neighbours: (0,0)->3, (3,0)->3, (0,4)->4.
    assert density(E, delta=0.0).item() == pytest.approx((1 / 3 + 1 / 3 + 1 / 4) / 3)


def test_scores_are_oriented_higher_is_tighter():
    tight = E * 0.1
    for statistic in ("pairwise_l2", "pairwise_l1", "centroid", "magnitude", "density"):
        assert aggregation_score(tight, statistic) > aggregation_score(E, statistic)
    assert aggregation_score(E, "pairwise_l2").item() == pytest.approx(-math.log(100 / 9 + 1e-12))


def test_identical_predictions_give_a_finite_top_score():
    same = torch.ones(1, 4, 3, dtype=torch.float64)
    assert aggregation_score(same, "pairwise_l2").item() == pytest.approx(-math.log(1e-12))
    assert torch.isfinite(aggregation_score(same, "density")).all()


def test_batches_are_scored_per_sample():
    batch = torch.cat([E, 2 * E, E])
    scores = pairwise_l2(batch)
    assert scores[0] == scores[2] and scores[1] == pytest.approx(4 * scores[0].item())
