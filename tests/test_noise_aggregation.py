"""The NA attack: the path it walks, its queries, determinism, and membership signal on a memoriser."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from conftest import score_all
from torch.utils.data import DataLoader

from mia.attacks import NoiseAggregation, SampleNoise
from mia.attacks.aggregation import aggregation_score
from mia.data.evaluation_set import EvaluationSet
from mia.data.images import to_model_range
from mia.data.samples import sample_key
from mia.errors import MiaError
from mia.evaluation.metrics import auc, roc_curve
from mia.scoring.module import AttackModule


def test_na_separates_members_on_the_memorizer(digits_memorizer):
    target, evalset = digits_memorizer
    attack = NoiseAggregation()  # the paper's defaults: t = 80, k = 5, m = 10
    value = auc(roc_curve(score_all(attack, target, evalset), evalset.labels.numpy()))
    # The issue asks for at least 0.75 (another check measured about 0.82); this memoriser gives 1.000 at
    # 8x8, 16x16 and 32x32, noise scale 1 and 0.1 (measured 2026-11-29), so the bound sits just below that.
    assert value >= 0.95


def test_path_and_queries(digits_memorizer):
    target, evalset = digits_memorizer
    assert NoiseAggregation().timesteps() == [80, 70, 60, 50, 40]
    assert NoiseAggregation(t=20, k=3, m=5, direction="up").timesteps() == [20, 25, 30]
    for k in (2, 3, 5):
        target.reset_queries()
        attack = NoiseAggregation(k=k)
        predictions = attack.collect(target, to_model_range(evalset.stack(range(7))), SampleNoise(evalset.keys[:7], 0))
        assert predictions.shape == (7, k, 256)
        assert target.queries == 7 * k


def test_collect_follows_the_ddim_path_of_diffusers_schedulers(digits_memorizer):
    # The oracle is diffusers: add_noise for the injection, DDIMScheduler.step(eta=0) for each move.
    from diffusers import DDIMScheduler, DDPMScheduler

    target, evalset = digits_memorizer
    x0 = to_model_range(evalset.stack(range(3))).double()
    noise = SampleNoise(evalset.keys[:3], seed=4)
    attack = NoiseAggregation(t=30, k=3, m=10, noise_scale=0.5, seed=4)
    schedule = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    eps = noise.randn(x0.shape[1:]).double()
    x = DDPMScheduler(**schedule).add_noise(x0, 0.5 * eps, torch.full((3,), 30))
    sampler = DDIMScheduler(**schedule, clip_sample=False)
    sampler.alphas_cumprod = sampler.alphas_cumprod.double()  # the same ᾱ, stepped in float64 like mia
    sampler.set_timesteps(100)  # steps of 10
    expected = []
    for t in (30, 20, 10):
        e = target.predict_noise(x, t)
        expected.append(e.flatten(1))
        x = sampler.step(e.double(), t, x, eta=0.0).prev_sample
    got = attack.collect(target, x0, noise)
    torch.testing.assert_close(got, torch.stack(expected, 1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attack.scores_of(target, x0, noise), aggregation_score(got, "pairwise_l2"))


def test_same_seed_same_scores_in_any_batching(digits_memorizer):
    target, evalset = digits_memorizer
    attack = NoiseAggregation(seed=3)
    first = score_all(attack, target, evalset, batch_size=100)
    again = score_all(attack, target, evalset, batch_size=33)
    np.testing.assert_allclose(first, again, rtol=1e-5)
    other = score_all(NoiseAggregation(seed=4), target, evalset, batch_size=100)
    assert not np.allclose(first, other)


def test_noise_is_per_sample_and_seeded():
    keys = torch.tensor([sample_key("a"), sample_key("b")])
    draw = SampleNoise(keys, seed=0).randn((4,))
    assert torch.equal(draw[1], SampleNoise(keys[1:], seed=0).randn((4,))[0])
    assert not torch.equal(draw, SampleNoise(keys, seed=1).randn((4,)))
    assert not torch.equal(draw, SampleNoise(keys, seed=0).randn((4,), stream=1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"statistic": "convex_hull"}, "attack.statistic must be one of"),
        ({"k": 1}, "attack.k"),
        ({"m": 0}, "attack.m"),
        ({"direction": "sideways"}, "attack.direction"),
        ({"noise_scale": -1.0}, "attack.noise_scale"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(MiaError, match=message):
        NoiseAggregation(**kwargs)


def test_a_path_outside_the_schedule_is_refused(digits_memorizer):
    target, _ = digits_memorizer
    with pytest.raises(MiaError, match="leaves the target's timesteps"):
        NoiseAggregation(t=30, k=5, m=10).check(target)
    with pytest.raises(MiaError, match="leaves the target's timesteps"):
        NoiseAggregation(t=990, direction="up").check(target)


def test_lightning_predict_loop_gives_the_same_scores(digits_memorizer):
    target, evalset = digits_memorizer
    attack = NoiseAggregation()
    subset = EvaluationSet(evalset.stack(range(195, 205)), evalset.labels[195:205], evalset.ids[195:205])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(AttackModule(target, attack), DataLoader(subset, batch_size=4))
    scores = torch.cat([b["features"] for b in batches]).numpy()
    np.testing.assert_allclose(scores, score_all(attack, target, subset), rtol=1e-6)
    assert sum(int(b["queries"]) for b in batches) == 5 * len(subset)
