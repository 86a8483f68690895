"""FreMIA's high-frequency filter (attack.frequency_filter=high) and NA's two readings of the injected noise
(attack.injection=schedule | absolute), with the tuning grid that covers both."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler
from omegaconf import OmegaConf
from torch import nn

from mia.attacks.frequency import frequency_filter
from mia.attacks.loss import LossAttack
from mia.attacks.moves import coefficients, ddim_move
from mia.attacks.noise_aggregation import NoiseAggregation
from mia.attacks.pia import PIA, PIAN
from mia.attacks.sample_noise import SampleNoise
from mia.attacks.secmi import SecMI
from mia.config import config_dir
from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.tuning.grid import grid_settings

SIZE = 16
KEYS = torch.arange(3, dtype=torch.int64) * 101 + 7
ALPHAS = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod
CHECKER = (-1.0) ** (torch.arange(SIZE)[:, None] + torch.arange(SIZE)[None, :])  # the highest frequency only
# Frequencies 0 and ±2 only, inside the kept box:
LOW = torch.cos(2 * math.pi * 2 * torch.arange(SIZE, dtype=torch.float64) / SIZE)[None, :] + 0.5


def fremia_reference(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """poetic2/FreMIA's ``Fourier_filter``, written as its code reads (slices on the shifted spectrum)."""
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.double(), dim=(-2, -1)), dim=(-2, -1))
    mask = torch.ones_like(spectrum.real) * scale
    rows, cols = x.shape[-2] // 2, x.shape[-1] // 2
    mask[..., rows - threshold:rows + threshold, cols - threshold:cols + threshold] = 1.0
    return torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real


def test_the_filter_is_fremias_and_keeps_the_low_frequencies_only():
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(frequency_filter(x), fremia_reference(x, 5, 0.2), rtol=0, atol=1e-12)
    torch.testing.assert_close(frequency_filter(LOW.expand(SIZE, SIZE)), LOW.expand(SIZE, SIZE).double())
    torch.testing.assert_close(frequency_filter(CHECKER), 0.2 * CHECKER.double())
    torch.testing.assert_close(frequency_filter(CHECKER, scale=0.0), torch.zeros(SIZE, SIZE, dtype=torch.float64),
                               rtol=0, atol=1e-12)


class Scripted(nn.Module):
    """ε = x·0 + pattern where t > 0, and x·0 at t = 0: PIA's two predictions then differ by exactly ``pattern``."""

    def __init__(self, pattern: torch.Tensor) -> None:
        super().__init__()
        self.pattern = pattern

    def forward(self, x, timesteps):
        out = x * 0 + (timesteps > 0).to(x.dtype)[:, None, None, None] * self.pattern
        return type("Out", (), {"sample": out})()


def scripted(pattern: torch.Tensor) -> DiffusionTarget:
    return DiffusionTarget(Scripted(pattern), ALPHAS, (1, SIZE, SIZE))


@pytest.mark.parametrize("make", [PIA, PIAN], ids=["pia", "pian"])
def test_pia_filtered_removes_a_high_frequency_difference_and_keeps_a_low_one(make):
    x0 = torch.zeros(3, 1, SIZE, SIZE)
    noise = SampleNoise(KEYS, 0)
    high, low = scripted(CHECKER), scripted(LOW.expand(SIZE, SIZE))
    off, on = make(), make(frequency_filter="high")
    for attack in (off, on):
        attack.check(high)
    assert torch.allclose(on.collect(high, x0, noise), 0.2 ** 4 * off.collect(high, x0, noise), rtol=1e-9)
    assert torch.allclose(on.collect(low, x0, noise), off.collect(low, x0, noise), rtol=1e-6)


def test_loss_filters_the_error_before_the_distance(digits_memorizer):
    target, evalset = digits_memorizer
    x0 = evalset.stack(range(4)) * 2 - 1
    noise = SampleNoise(torch.arange(4), 0)
    attack = LossAttack(frequency_filter="high", filter_cutoff=3, filter_scale=0.5)
    attack.check(target)
    eps = noise.randn(x0.shape[1:])
    x_t = coefficients(target, 200)[0] * x0.double() + coefficients(target, 200)[1] * eps
    error = target.predict_noise(x_t, 200) - eps
    expected = -fremia_reference(error, 3, 0.5).flatten(1).pow(2).sum(1)
    torch.testing.assert_close(attack.collect(target, x0, noise), expected)
    assert not torch.allclose(LossAttack().collect(target, x0, noise), expected)


def test_na_and_secmi_filter_what_they_compare(digits_memorizer):
    target, evalset = digits_memorizer
    x0, noise = evalset.stack(range(3)) * 2 - 1, SampleNoise(KEYS, 0)
    raw = NoiseAggregation().collect(target, x0, noise)
    filtered = NoiseAggregation(frequency_filter="high", filter_cutoff=4).collect(target, x0, noise)
    expected = frequency_filter(raw.view(3, 5, 1, 16, 16), 4).float().flatten(2)
    torch.testing.assert_close(filtered, expected)
    secmi = SecMI(frequency_filter="high")
    difference = secmi.round_trip(target, x0)
    torch.testing.assert_close(secmi.collect(target, x0, noise), -fremia_reference(difference, 5, 0.2).flatten(1)
                               .pow(2).sum(1))
    with pytest.raises(MiaError, match="secmi_nn read the unfiltered residual"):
        secmi.residual(target, x0)


@pytest.mark.parametrize("make", [NoiseAggregation, LossAttack, PIA, PIAN, SecMI])
def test_the_filter_is_off_by_default_and_its_knobs_need_it(make):
    assert make().frequency_filter == "none"
    assert make().filtered(CHECKER) is CHECKER
    with pytest.raises(MiaError, match=r"apply with attack\.frequency_filter=high"):
        make(filter_cutoff=3)
    with pytest.raises(MiaError, match=r"attack\.frequency_filter must be one of none, high"):
        make(frequency_filter="low")
    with pytest.raises(MiaError, match=r"attack.filter_scale must be in \[0, 1\)"):
        make(frequency_filter="high", filter_scale=1.0)


def test_a_box_that_covers_the_sample_is_refused():
    with pytest.raises(MiaError, match="covers the whole 16x16 sample"):
        LossAttack(frequency_filter="high", filter_cutoff=8).check(scripted(CHECKER))


class Recording(DiffusionTarget):
    """A target that keeps the inputs of its queries."""

    def predict_noise(self, x_t, t, cond=None):
        self.inputs.append(x_t.clone())
        return super().predict_noise(x_t, t, cond)


def test_na_injection_readings_by_hand(digits_memorizer):
    memorizer, evalset = digits_memorizer
    target = Recording(memorizer.denoiser, memorizer.alphas_cumprod, memorizer.sample_shape)
    x0, noise = (evalset.stack(range(3)) * 2 - 1).double(), SampleNoise(KEYS, 0)
    eps = noise.randn(x0.shape[1:]).double()
    signal, sigma_t = coefficients(target, 80)
    for attack, expected in [(NoiseAggregation(), signal * x0 + sigma_t * eps),
                             (NoiseAggregation(noise_scale=0.5), signal * x0 + 0.5 * sigma_t * eps),
                             (NoiseAggregation(injection="absolute"), signal * x0 + 0.1 * eps),
                             (NoiseAggregation(injection="absolute", sigma=0.3), signal * x0 + 0.3 * eps)]:
        target.inputs = []
        predictions = attack.collect(target, x0, noise)
        assert torch.equal(target.inputs[0], expected)  # bit for bit, as mia ≤ 0.1 wrote the schedule reading
        # The rest of the path is the same deterministic DDIM walk whichever the reading.
        walked = ddim_move(target, expected, predictions[:, 0].view_as(x0).double(), 80, 70)
        torch.testing.assert_close(target.inputs[1], walked)
    assert math.isclose(float(sigma_t), math.sqrt(1 - float(ALPHAS[80])), rel_tol=1e-12)


def test_the_absolute_reading_differs_from_the_schedule_one(digits_memorizer):
    target, evalset = digits_memorizer
    x0, noise = evalset.stack(range(3)) * 2 - 1, SampleNoise(KEYS, 0)
    assert not torch.equal(NoiseAggregation(injection="absolute").collect(target, x0, noise),
                           NoiseAggregation().collect(target, x0, noise))


@pytest.mark.parametrize("settings, message", [
    ({"sigma": 0.2}, "attack.sigma applies with attack.injection=absolute"),
    ({"injection": "absolute", "noise_scale": 0.5}, "attack.noise_scale applies with attack.injection=schedule"),
    ({"injection": "relative"}, "attack.injection must be one of schedule, absolute"),
    ({"injection": "absolute", "sigma": -0.1}, "attack.sigma must be ≥ 0"),
])
def test_na_readings_refuse_the_other_readings_knob(settings, message):
    with pytest.raises(MiaError, match=message):
        NoiseAggregation(**settings)


def test_the_na_grid_covers_both_readings_and_every_setting_is_valid():
    spec = OmegaConf.load(f"{config_dir('attack')}/tune/na_grid.yaml")
    settings = grid_settings(NoiseAggregation(), spec.grid)
    assert len(settings) == 3 * (3 + 3) * 3 * 2
    for setting in settings:
        NoiseAggregation(**setting)  # valid: each reading with its own knob, the other's at its default
    schedule = {s["noise_scale"] for s in settings if s["injection"] == "schedule"}
    absolute = {s["sigma"] for s in settings if s["injection"] == "absolute"}
    assert schedule == {0.1, 0.5, 1.0} and absolute == {0.05, 0.1, 0.2}
    assert {s["sigma"] for s in settings if s["injection"] == "schedule"} == {0.1}
    assert {s["noise_scale"] for s in settings if s["injection"] == "absolute"} == {1.0}
    with pytest.raises(MiaError, match="sets noise_scale twice"):
        grid_settings(NoiseAggregation(), {"noise_scale": [0.5], **OmegaConf.to_container(spec.grid)})
    with pytest.raises(MiaError, match=r"tune\.grid\.injection\.absolute\.bogus is not a knob"):
        grid_settings(NoiseAggregation(), {"injection": {"absolute": {"bogus": [1]}}})
