"""GSA (Pang et al., PoPETs 2025): per-sample gradient norms against a hand-written loop, the counted passes, the
refusals, and an end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from mia.attacks.gsa import GSA1, GSA2, gsa_timesteps
from mia.attacks.moves import forward_noise
from mia.attacks.sample_noise import SampleNoise
from mia.errors import MiaError
from mia.runs.attack import run
from mia.targets.base import DiffusionTarget

KEYS = torch.arange(4, dtype=torch.int64) * 7919 + 3  # per-sample noise keys


@pytest.fixture(scope="module")
def unet_target() -> DiffusionTarget:
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4)
    alphas = DDPMScheduler(num_train_timesteps=100, beta_schedule="linear").alphas_cumprod
    return DiffusionTarget(unet, alphas, (1, 8, 8))


def images() -> torch.Tensor:
    return torch.rand(len(KEYS), 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


def loop_features(target: DiffusionTarget, attack: GSA1, x0: torch.Tensor) -> torch.Tensor:
    """The reference's recipe, one sample at a time: the denoiser called directly, ``loss.backward()``, and the norm
    of each ``p.grad`` (GSA1: one backward of the loss over the K copies; GSA2: one backward per timestep, the K
    norm vectors averaged)."""
    unet = target.denoiser
    timesteps = gsa_timesteps(target.num_timesteps, attack.k)
    eps = SampleNoise(KEYS, attack.seed).randn((len(timesteps), *x0.shape[1:]))
    rows = []
    unet.requires_grad_(True)
    try:
        for i in range(len(x0)):
            copies = torch.cat([forward_noise(target, x0[i:i + 1], eps[i, j:j + 1], t).float()
                                for j, t in enumerate(timesteps)])
            output = unet(copies, torch.tensor(timesteps)).sample
            losses = [F.mse_loss(output, eps[i])] if attack.name == "gsa1" else \
                [F.mse_loss(output[j:j + 1], eps[i, j:j + 1]) for j in range(len(timesteps))]
            per_loss = []
            for loss in losses:
                unet.zero_grad(set_to_none=True)
                loss.backward(retain_graph=True)
                per_loss.append(torch.stack([torch.zeros(()) if p.grad is None else p.grad.norm()
                                             for p in unet.parameters()]))
            rows.append(torch.stack(per_loss).mean(0))
    finally:
        unet.zero_grad(set_to_none=True)
        unet.requires_grad_(False)
    return torch.stack(rows)


@pytest.mark.parametrize("attack", [GSA1(k=4), GSA2(k=4)], ids=["gsa1", "gsa2"])
def test_per_sample_gradient_norms_equal_a_per_sample_loop(unet_target, attack):
    x0 = images()
    attack.check(unet_target)
    got = attack.collect(unet_target, x0, SampleNoise(KEYS, attack.seed))
    expected = loop_features(unet_target, attack, x0)
    assert got.shape == (4, len(list(unet_target.denoiser.parameters())))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert (got > 0).any(1).all()  # every sample has a gradient, and the rows differ from sample to sample
    assert not torch.allclose(got[0], got[1])


def test_features_do_not_depend_on_the_batch_and_flags_are_restored(unet_target):
    attack, x0 = GSA1(k=2), images()
    attack.check(unet_target)
    whole = attack.collect(unet_target, x0, SampleNoise(KEYS, 0))
    alone = torch.cat([attack.collect(unet_target, x0[i:i + 1], SampleNoise(KEYS[i:i + 1], 0)) for i in range(4)])
    torch.testing.assert_close(whole, alone, rtol=1e-5, atol=1e-7)
    assert not any(p.requires_grad for p in unet_target.denoiser.parameters())  # the target stays frozen
    assert all(p.grad is None for p in unet_target.denoiser.parameters())  # autograd.grad leaves no .grad behind


def test_timesteps_are_the_references():
    assert gsa_timesteps(1000, 10) == [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]
    assert gsa_timesteps(100, 4) == [24, 49, 74, 99]


@pytest.mark.parametrize("attack", [GSA1(k=3), GSA2(k=3)], ids=["gsa1", "gsa2"])
def test_forwards_and_backwards_are_counted_apart(unet_target, attack):
    unet_target.reset_queries()
    attack.check(unet_target)
    attack.collect(unet_target, images(), SampleNoise(KEYS, 0))
    assert unet_target.queries == 4 * 3  # k forwards per sample
    assert unet_target.passes() == {"gradient_passes": 4 * 3}  # k sample-backwards per sample
    unet_target.reset_queries()
    assert unet_target.passes() == {}


def test_layers_pick_parameter_tensors_by_name(unet_target):
    attack = GSA1(k=2, layers=["conv_in.*", "conv_out.weight"])
    attack.check(unet_target)
    got = attack.collect(unet_target, images(), SampleNoise(KEYS, 0))
    assert attack._columns == ["conv_in.weight", "conv_in.bias", "conv_out.weight"] and got.shape == (4, 3)
    everything = GSA1(k=2)
    everything.check(unet_target)
    names = everything._columns
    full = everything.collect(unet_target, images(), SampleNoise(KEYS, 0))
    torch.testing.assert_close(got, full[:, [names.index(n) for n in attack._columns]])


def test_fit_and_score_separate_members_of_a_toy_feature_set():
    rng = np.random.default_rng(0)
    labels = torch.tensor([1] * 40 + [0] * 40)
    features = torch.from_numpy(rng.normal(size=(80, 5)) + labels.numpy()[:, None] * 2.0).float()
    attack = GSA1(n_estimators=20)
    chosen = attack.fit(features, labels)
    assert chosen["classifier"] == "xgboost" and chosen["n_fit"] == 80 and chosen["validation"]["n_validation"] > 0
    scores = attack.score(features)
    assert scores.dtype == torch.float64 and scores[:40].mean() > scores[40:].mean()


class Detaching(nn.Module):
    """A denoiser whose forward leaves autograd (a NumPy round trip): it can be queried, not differentiated."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, timesteps):
        out = torch.from_numpy((x * self.scale).detach().numpy())
        return type("Out", (), {"sample": out})()


def test_a_non_differentiable_target_is_refused_in_one_line(digits_memorizer):
    memorizer, _ = digits_memorizer
    with pytest.raises(MiaError, match="has none") as error:
        GSA1().check(memorizer)
    assert "\n" not in str(error.value)
    detaching = DiffusionTarget(Detaching(), DDPMScheduler(num_train_timesteps=100).alphas_cumprod, (1, 8, 8))
    attack = GSA1(k=2)
    attack.check(detaching)
    with pytest.raises(MiaError, match="differentiable denoiser") as error:
        attack.collect(detaching, images(), SampleNoise(KEYS, 0))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("make, message", [
    (lambda: GSA1(layers=["nope.*"]), None),
    (lambda: GSA1(layers="conv_in.*"), "attack.layers must be a non-empty list"),
    (lambda: GSA1(k=0), "attack.k"),
    (lambda: GSA1(validation=1.0), "attack.validation"),
])
def test_bad_settings_are_refused(unet_target, make, message):
    if message is None:  # refused against the target: no parameter tensor matches
        with pytest.raises(MiaError, match="matches none"):
            make().check(unet_target)
    else:
        with pytest.raises(MiaError, match=message):
            make()


def test_gsa_end_to_end_reports_forwards_and_backwards_apart(tiny_target: Path, tmp_path: Path):
    out = tmp_path / "gsa"
    overrides = [f"target.path={tiny_target}", "logger=none", "metrics.bootstrap=0",
                 "trainer.enable_progress_bar=false", f"cache.dir={tmp_path}/cache", "attack=gsa", "attack.k=2",
                 "attack.n_estimators=10", "attack.layers=[conv_in.*,conv_out.*]"]
    metrics = run(compose_config("attack", overrides, out))
    assert metrics["attack"] == "gsa1" and metrics["n_calibration"] == 10
    assert metrics["queries_per_sample"] == 2 and metrics["gradient_passes_per_sample"] == 2
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["gradient_passes_per_sample"] == 2 and stored["calibration"]["n_features"] == 4
    assert 0.0 <= stored["auc"] <= 1.0
    # A cache hit makes no pass, and reports the passes its predictions took when they were made.
    hit = run(compose_config("attack", overrides, tmp_path / "hit"))
    assert hit["queries_per_sample_this_run"] == 0
    assert hit["queries_per_sample"] == 2 and hit["gradient_passes_per_sample"] == 2
    assert (tmp_path / "hit" / "scores.csv").read_bytes() == (out / "scores.csv").read_bytes()


def test_gsa2_on_a_text_to_image_target_counts_its_passes(tiny_sd: Path, captioned, tmp_path: Path):
    members, nonmembers = captioned
    cfg = compose_config("attack", [f"target.path={tiny_sd}", f"data.members={members}",
                                    f"data.nonmembers={nonmembers}", "logger=none", "metrics.bootstrap=0",
                                    "trainer.enable_progress_bar=false", "cache.enabled=false", "attack=gsa2",
                                    "attack.k=2", "attack.n_estimators=5", "protocol.calibration=0.4"], tmp_path)
    metrics = run(cfg)
    assert metrics["attack"] == "gsa2" and metrics["n_calibration"] == 8
    assert metrics["queries_per_sample"] == 2 and metrics["gradient_passes_per_sample"] == 2
    assert metrics["encoder_passes_per_sample"] == 1 and metrics["calibration"]["n_features"] > 10
