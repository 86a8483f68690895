"""Why NA flips (bench.na_flip): the profiles at several noise scales, the measures against the injected noise
(by hand and on the closed-form memoriser, whose members' predictions are exactly s·ε), and the command."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import compose_config

from bench.na_flip import SCALING, flip, noise_scale_profiles, relative_to_injected, scaling_profiles
from mia.attacks.noise_aggregation import NoiseAggregation
from mia.errors import MiaError
from mia.scoring.engine import ScoringSettings


def test_relative_to_injected_by_hand():
    # One sample, k = 3 predictions of D = 2 values: (0,0), (3,0), (0,4); injected s = 0.5, so s²·D = 0.5.
    eps = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]], dtype=torch.float64)
    dispersion, magnitude = relative_to_injected(eps, 0.5)
    assert dispersion.item() == pytest.approx(2 * (9 + 16 + 25) / 9 / 0.5)  # pairwise_l2 over s²·D
    assert magnitude.item() == pytest.approx((0 + 9 + 16) / 3 / 0.5)  # (1/k)·Σ‖ε̂_i‖² over s²·D


def _settings() -> ScoringSettings:
    return ScoringSettings(lambda: L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                                             enable_model_summary=False), batch_size=100)


def test_the_memorisers_members_return_the_injected_noise(digits_memorizer):
    target, evalset = digits_memorizer
    profiles = scaling_profiles(NoiseAggregation(), target, evalset, [0.25, 1.0], [40, 80], 24, batch_size=48)
    assert set(profiles) == set(SCALING)
    for scale in (0.25, 1.0):
        magnitude, dispersion = profiles["magnitude / s²D"][scale], profiles["dispersion / s²D"][scale]
        # A perfect memoriser's prediction for a member is s·ε at every step: its size is the injected noise's
        # (‖ε‖²/D for D = 256 lies within ±0.2 of 1) and the k predictions coincide.
        np.testing.assert_allclose(magnitude.members[:, 1], 1.0, atol=0.2)
        assert (dispersion.members[:, 1] < 1e-10).all()
        assert (magnitude.nonmembers[:, 1] > 1.5).all()  # non-members' carry the pull to their nearest member
        assert magnitude.queries_per_sample == 2 * 5  # two timesteps, k = 5 each


def test_profiles_share_the_samples_and_agree_with_the_direct_measure(digits_memorizer):
    target, evalset = digits_memorizer
    attack = NoiseAggregation(k=3, m=20)
    profiles = noise_scale_profiles(attack, target, evalset, [0.5, 1.0], [120, 200], ["pairwise_l2", "density"], 24,
                                    _settings())
    assert set(profiles) == {"pairwise_l2", "density"} and set(profiles["density"]) == {0.5, 1.0}
    scaling = scaling_profiles(attack, target, evalset, [0.5, 1.0], [120, 200], 24, batch_size=48)
    for scale in (0.5, 1.0):
        engine, direct = profiles["pairwise_l2"][scale], scaling["dispersion / s²D"][scale]
        assert engine.timesteps == direct.timesteps == [120, 200]
        # The same noise and predictions through Lightning and directly: a monotone rescaling, the same AUC.
        np.testing.assert_allclose(engine.auc, direct.auc, atol=1e-12)
        # (Members' dispersion is 0 here; the non-members' is well above the score's δ = 1e-12.)
        np.testing.assert_allclose(engine.nonmembers[:, 1] / (scale**2 * 256), direct.nonmembers[:, 1], rtol=1e-5)


def test_the_command_writes_both_csvs_and_the_figure(tiny_target: Path, tmp_path: Path):
    cfg = compose_config("attack", [f"target.path={tiny_target}", "experiment=na_flip", "flip.noise_scales=[0.1,1.0]",
                                    "flip.timesteps=[40,80]", "flip.statistics=[pairwise_l2,centroid]",
                                    "flip.max_samples=8", "trainer.enable_progress_bar=false",
                                    f"cache.dir={tmp_path}/cache"], tmp_path)
    out = flip(cfg)
    with open(out / "na_flip.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 2 and {r["statistic"] for r in rows} == {"pairwise_l2", "centroid"}
    assert all(0 <= float(r["auc"]) <= 1 for r in rows)
    with open(out / "na_flip_scaling.csv") as handle:
        assert {r["statistic"] for r in csv.DictReader(handle)} == set(SCALING)
    assert (out / "na_flip.png").stat().st_size > 10_000


def test_the_command_is_for_na(tiny_target: Path, tmp_path: Path):
    cfg = compose_config("attack", [f"target.path={tiny_target}", "experiment=na_flip", "attack=sima"], tmp_path)
    with pytest.raises(MiaError, match="use attack=na"):
        flip(cfg)
