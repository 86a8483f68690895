"""The baselines against direct hand computations of their formulas on a tiny UNet (docs/method.md, "the baselines")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import score_all
from diffusers import DDPMScheduler, UNet2DModel

from mia.attacks import PIA, PIAN, LossAttack, NoiseAggregation, SampleNoise, SecMI, SimA
from mia.data.samples import sample_key
from mia.errors import MiaError
from mia.evaluation.metrics import auc, roc_curve
from mia.targets.base import DiffusionTarget

ALL_DEFAULTS = [NoiseAggregation(), LossAttack(), PIA(), PIAN(), SecMI(), SimA()]


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised tiny UNet (8x8 RGB) as a target, and four samples with their noise."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    alphas = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod
    target = DiffusionTarget(unet, alphas, (3, 8, 8))
    x0 = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    keys = torch.tensor([sample_key(str(i)) for i in range(4)])
    return target, unet, alphas.double(), x0, keys


def eps_of(unet, x, t):
    with torch.no_grad():
        return unet(x, torch.full((len(x),), t)).sample


def test_loss_by_hand(tiny):
    target, unet, a, x0, keys = tiny
    noise = SampleNoise(keys, seed=5)
    eps = noise.randn((3, 8, 8))
    x_t = a[200].sqrt().float() * x0 + (1 - a[200]).sqrt().float() * eps
    expected = -(eps_of(unet, x_t, 200) - eps).pow(2).flatten(1).sum(1).double()
    torch.testing.assert_close(LossAttack(t=200, seed=5).scores_of(target, x0, noise), expected, rtol=1e-5, atol=1e-6)


def test_loss_averages_independent_draws(tiny):
    target, _, _, x0, keys = tiny
    noise = SampleNoise(keys, seed=5)
    one = LossAttack(seed=5).scores_of(target, x0, noise)
    two = LossAttack(draws=2, seed=5).scores_of(target, x0, noise)
    eps = noise.randn((3, 8, 8), stream=1)
    a = target.alphas_cumprod.float()
    second = -(target.predict_noise(a[200].sqrt() * x0 + (1 - a[200]).sqrt() * eps, 200) - eps).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(two, (one + second.double()) / 2, rtol=1e-5, atol=1e-6)


def test_pia_and_pian_by_hand(tiny):
    target, unet, a, x0, keys = tiny
    eps0 = eps_of(unet, x0, 0)
    normalised = eps0 / eps0.abs().mean((1, 2, 3), keepdim=True) * math.sqrt(2 / math.pi)
    for attack, start in ((PIA(), eps0), (PIAN(), normalised)):
        x_t = a[200].sqrt().float() * x0 + (1 - a[200]).sqrt().float() * start
        expected = -(start - eps_of(unet, x_t, 200)).abs().pow(4).flatten(1).sum(1).double()
        torch.testing.assert_close(attack.scores_of(target, x0, SampleNoise(keys, 0)), expected, rtol=1e-5, atol=1e-7)


def test_sima_by_hand(tiny):
    target, unet, _, x0, keys = tiny
    expected = -eps_of(unet, x0, 100).abs().pow(4).flatten(1).sum(1).double()
    torch.testing.assert_close(SimA().scores_of(target, x0, SampleNoise(keys, 0)), expected, rtol=1e-5, atol=1e-7)


def test_secmi_against_diffusers_ddim_schedulers(tiny):
    # Inversion and the step up by DDIMInverseScheduler, the step back down by DDIMScheduler (η = 0).
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    target, unet, _, x0, keys = tiny
    schedule = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "clip_sample": False}
    up, down = DDIMInverseScheduler(**schedule), DDIMScheduler(**schedule)
    for scheduler in (up, down):
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()  # the same ᾱ, stepped in float64 like mia
        scheduler.set_timesteps(100)  # steps of 10

    def eps(x, t):  # the model sees float32
        return eps_of(unet, x.float(), t).double()

    x = x0.double()
    for t in range(0, 100, 10):  # inversion 0 → 10 → … → 100: 10 queries
        x = up.step(eps(x, t), t + 10, x).prev_sample
    x_up = up.step(eps(x, 100), 110, x).prev_sample  # one step up: t_sec → t_sec + interval
    x_back = down.step(eps(x_up, 110), 110, x_up, eta=0.0).prev_sample  # and back down
    expected = -(x_back - x).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(SecMI().scores_of(target, x0, SampleNoise(keys, 0)), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("attack", "queries"), list(zip(ALL_DEFAULTS, [5, 1, 2, 2, 12, 1], strict=True)))
def test_queries_at_the_defaults_are_counted(tiny, attack, queries):
    target, _, _, x0, keys = tiny
    target.reset_queries()
    attack.scores_of(target, x0, SampleNoise(keys, 0))
    assert target.queries == queries * len(x0)


def test_query_counts_follow_the_settings(tiny):
    target, _, _, x0, keys = tiny
    for attack, queries in ((SecMI(t_sec=50, interval=10), 7), (LossAttack(draws=3), 3), (NoiseAggregation(k=2), 2)):
        target.reset_queries()
        attack.scores_of(target, x0, SampleNoise(keys, 0))
        assert target.queries == queries * len(x0), attack


@pytest.mark.parametrize("attack", ALL_DEFAULTS, ids=lambda a: a.name)
def test_each_attack_beats_chance_on_the_memorizer_and_is_oriented(digits_memorizer, attack):
    target, evalset = digits_memorizer
    value = auc(roc_curve(score_all(attack, target, evalset), evalset.labels.numpy()))
    # Higher = member: a memoriser makes every attack's members score higher, so AUC is well above 0.5
    # (an inverted score would sit well below it).
    assert value > 0.7, (attack.name, value)


def test_members_score_higher_than_noise_images(digits_memorizer):
    target, evalset = digits_memorizer
    x0 = torch.cat([evalset.stack(range(5)).float() / 127.5 - 1, torch.rand(5, 1, 16, 16) * 2 - 1])
    keys = torch.arange(10)
    for attack in ALL_DEFAULTS:
        scores = attack.scores_of(target, x0, SampleNoise(keys, 0)).numpy()
        assert np.min(scores[:5]) > np.max(scores[5:]), attack.name


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SecMI(t_sec=95, interval=10), "multiple of attack.interval"),
        (lambda: SecMI(interval=0), "attack.interval"),
        (lambda: LossAttack(draws=0), "attack.draws"),
        (lambda: PIA(p=0), "attack.p"),
        (lambda: SimA(p=-1), "attack.p"),
    ],
)
def test_bad_settings_are_refused(make, message):
    with pytest.raises(MiaError, match=message):
        make()


def test_timesteps_outside_the_schedule_are_refused(tiny):
    target = tiny[0]
    for attack in (LossAttack(t=1000), PIA(t=-1), SimA(t=5000), SecMI(t_sec=990, interval=10)):
        with pytest.raises(MiaError, match="outside the target's timesteps"):
            attack.check(target)
