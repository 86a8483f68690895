"""The closed-form moves against diffusers' schedulers, an implementation written apart from ours.

``forward_noise`` against ``DDPMScheduler.add_noise``; the DDIM move down against ``DDIMScheduler.step``
with η = 0; the DDIM move up against ``DDIMInverseScheduler.step``. Each scheduler computes its own ᾱ from
the same β schedule, so a wrong schedule, a swapped coefficient or an off-by-one timestep fails here.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler

from mia.attacks.moves import ddim_move, forward_noise
from mia.targets.base import DiffusionTarget

SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}


@pytest.fixture(scope="module")
def target() -> DiffusionTarget:
    alphas = DDPMScheduler(**SCHEDULE).alphas_cumprod
    return DiffusionTarget(torch.nn.Identity(), alphas, (3, 4, 4))


def _state(seed: int) -> torch.Tensor:
    return torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("t", [0, 1, 80, 500, 999])
def test_forward_noise_is_add_noise(target: DiffusionTarget, t: int):
    x0, eps = _state(0).clamp(-1, 1), _state(1)
    expected = DDPMScheduler(**SCHEDULE).add_noise(x0, eps, torch.full((5,), t))
    torch.testing.assert_close(forward_noise(target, x0, eps, t), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("t", "interval"), [(80, 10), (10, 10), (500, 50), (999, 111)])
def test_ddim_move_down_is_ddim_step_with_eta_zero(target: DiffusionTarget, t: int, interval: int):
    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(1000 // interval)  # "leading" spacing: DDIMScheduler.step goes from t to t − interval
    x_t, eps = _state(2).float(), _state(3).float()
    expected = scheduler.step(eps, t, x_t, eta=0.0).prev_sample
    got = ddim_move(target, x_t, eps, t, t - interval)
    torch.testing.assert_close(got.float(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("t", "interval"), [(0, 10), (90, 10), (100, 10), (400, 100)])
def test_ddim_move_up_is_the_inverse_scheduler_step(target: DiffusionTarget, t: int, interval: int):
    scheduler = DDIMInverseScheduler(**SCHEDULE, clip_sample=False)
    scheduler.set_timesteps(1000 // interval)
    x_t, eps = _state(4).float(), _state(5).float()
    # The inverse scheduler's step at timestep s moves from s − interval up to s.
    expected = scheduler.step(eps, t + interval, x_t).prev_sample
    got = ddim_move(target, x_t, eps, t, t + interval)
    torch.testing.assert_close(got.float(), expected, rtol=1e-5, atol=1e-5)


def test_a_move_there_and_back_with_the_same_estimate_is_the_identity(target: DiffusionTarget):
    # Not an oracle, a property: with ε̂ held fixed, DDIM's moves are exact inverses of each other.
    x, eps = _state(6), _state(7)
    torch.testing.assert_close(ddim_move(target, ddim_move(target, x, eps, 100, 110), eps, 110, 100), x)
