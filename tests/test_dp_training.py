"""mia-train with DP-SGD (training.dp): the spent budget, clipping and noise, the export, resume, refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY_TRAIN, compose_config
from diffusers import UNet2DModel
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer

from mia.errors import MiaError
from train_targets.ema import EMA
from train_targets.privacy import dp_settings
from train_targets.train import train

DP = [*TINY_TRAIN, "training.dp.enabled=true"]  # 24 members in batches of 8: sampling rate 1/3, 6 steps
DELTA = 1e-4
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only thrashes


def rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """The oracle: Opacus' RDP accountant fed the run's settings directly, not through mia-train."""
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return accountant.get_epsilon(delta)


def _norm(tensors) -> float:
    return float(torch.sqrt(sum(t.pow(2).sum() for t in tensors)))


class LastStep(L.Callback):
    """Keeps what the last training step left: the raw weights, the EMA's, the optimizer and its gradients."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # Inside Lightning's closure, before the DPOptimizer clips: the batch's ordinary summed gradient.
        self.batch_grad_norm = _norm(p.grad for p in pl_module.unet.parameters())
        self.had_per_sample_grads = all(getattr(p, "grad_sample", None) is not None
                                        for p in pl_module.unet.parameters())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.optimizer = trainer.optimizers[0]
        grads = [p.grad for p in pl_module.unet.parameters()]  # after the step: what the optimizer applied
        self.step_grad_norm = _norm(grads)
        self.step_grad = torch.cat([g.flatten() for g in grads])
        self.batch_size = len(batch[0])
        self.raw = {k: v.detach().clone() for k, v in pl_module.unet.state_dict().items()}
        ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
        if ema is not None and ema._average_model is not None:
            self.ema = {k: v.detach().clone() for k, v in ema._average_model.module.unet.state_dict().items()}
        self.module = pl_module


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory, one_thread) -> tuple[Path, dict, LastStep]:
    """A DP-SGD run with EMA on: noise multiplier 1, Poisson sampling, 6 steps."""
    out = tmp_path_factory.mktemp("dp")
    last = LastStep()
    train(compose_config("train", [*DP, "training.dp.noise_multiplier=1.0", f"training.dp.delta={DELTA}"], out),
          extra_callbacks=[last])
    return out / "target", json.loads((out / "target" / "training.json").read_text()), last


def test_training_json_records_the_spent_budget(dp_run):
    _, info, _ = dp_run
    dp = info["dp"]
    assert dp["delta"] == DELTA and dp["noise_multiplier"] == 1.0 and dp["max_grad_norm"] == 1.0
    assert dp["steps"] == info["steps"] == 6 and dp["sample_rate"] == pytest.approx(1 / 3)
    assert dp["accountant"] == "rdp" and dp["poisson_sampling"] is True
    assert math.isfinite(dp["epsilon"]) and dp["epsilon"] > 0
    assert dp["epsilon"] == pytest.approx(rdp_epsilon(1.0, 1 / 3, 6, DELTA), rel=1e-9)
    assert info["config"]["trainer"]["gradient_clip_val"] is None  # Lightning's clipping was turned off


def test_the_dp_optimizer_trained_on_per_sample_gradients(dp_run):
    _, _, last = dp_run
    assert isinstance(last.optimizer, DPOptimizer)
    assert last.had_per_sample_grads


def test_the_export_is_a_plain_diffusers_folder_with_the_ema_weights(dp_run):
    target, _, last = dp_run
    unet = UNet2DModel.from_pretrained(target / "unet")
    exported = unet.state_dict()
    assert not any("_module" in key for key in exported)
    assert set(exported) == set(UNet2DModel.from_config(unet.config).state_dict())
    assert all(torch.equal(exported[k], last.ema[k]) for k in exported)  # the average ...
    assert any(not torch.equal(exported[k], last.raw[k]) for k in exported)  # ... not the last raw weights
    # The trained module was handed back without Opacus' hooks and per-sample gradients.
    assert not any(hasattr(p, "grad_sample") for p in last.module.unet.parameters())
    assert not any(module._forward_hooks for module in last.module.unet.modules())


@pytest.mark.parametrize("noise_multiplier", [0.0, 1.0])
def test_each_members_gradient_is_clipped_and_noised(tmp_path: Path, noise_multiplier: float):
    # A clipping norm far below the gradients' own: with DP silently off, the applied gradient would be the
    # ordinary one, orders of magnitude larger. Fixed-size batches, so the batch is the expected batch size.
    clip = 1e-4
    last = LastStep()
    train(compose_config("train", [*DP, f"training.dp.noise_multiplier={noise_multiplier}",
                                   f"training.dp.max_grad_norm={clip}", "training.dp.poisson_sampling=false",
                                   "trainer.max_steps=2", "~callbacks.ema"], tmp_path), extra_callbacks=[last])
    assert last.batch_grad_norm > 100 * clip
    if noise_multiplier == 0:
        # The mean of 8 gradients, each clipped to the norm `clip`.
        assert last.step_grad_norm <= clip * (1 + 1e-4)
        assert json.loads((tmp_path / "target" / "training.json").read_text())["dp"]["epsilon"] is None  # ε = ∞
    else:
        # Noise of std σ·C on the sum, divided by the batch size, dwarfs the clipped mean (norm ≤ C).
        expected_std = noise_multiplier * clip / last.batch_size
        assert float(last.step_grad.std()) == pytest.approx(expected_std, rel=0.03)


class BatchSizes(L.Callback):
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.updates: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.sizes.append(len(batch[0]))
        self.before = [p.detach().clone() for p in pl_module.unet.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = list(pl_module.unet.parameters())
        self.updates.append(any(not torch.equal(a, p) for a, p in zip(self.before, now, strict=True)))


def test_an_empty_poisson_batch_is_a_step_of_noise_that_counts(tmp_path: Path):
    # batch_size=1 over 24 members: sampling rate 1/24, so a batch is empty about a third of the time.
    sizes = BatchSizes()
    info = train(compose_config("train", [*DP, "training.dp.noise_multiplier=1.0", f"training.dp.delta={DELTA}",
                                          "batch_size=1", "~callbacks.ema"], tmp_path), extra_callbacks=[sizes])
    assert 0 in sizes.sizes and len(set(sizes.sizes)) > 1  # Poisson: batch sizes vary, and one was empty
    assert all(sizes.updates)  # the empty batch's step moved the weights too: noise was added
    assert info["dp"]["steps"] == 6
    assert info["dp"]["epsilon"] == pytest.approx(rdp_epsilon(1.0, 1 / 24, 6, DELTA), rel=1e-9)


def test_the_prv_accountant_is_used_when_asked(tmp_path: Path):
    from opacus.accountants import PRVAccountant

    info = train(compose_config("train", [*DP, "training.dp.noise_multiplier=1.0", f"training.dp.delta={DELTA}",
                                          "training.dp.accountant=prv", "trainer.max_steps=3", "~callbacks.ema"],
                                tmp_path))
    oracle = PRVAccountant()
    oracle.history = [(1.0, 1 / 3, 3)]
    assert info["dp"]["accountant"] == "prv"
    assert info["dp"]["epsilon"] == pytest.approx(oracle.get_epsilon(DELTA), rel=1e-6)
    assert info["dp"]["epsilon"] < rdp_epsilon(1.0, 1 / 3, 3, DELTA)  # PRV's bound is the tighter one


def test_target_epsilon_is_reached_at_max_steps(tmp_path: Path):
    info = train(compose_config("train", [*DP, "training.dp.target_epsilon=8.0", f"training.dp.delta={DELTA}",
                                          "~callbacks.ema"], tmp_path))
    dp = info["dp"]
    assert dp["steps"] == 6 and dp["target_epsilon"] == 8.0
    assert 8.0 - 0.02 <= dp["epsilon"] <= 8.0  # Opacus' search stops within 0.01 below the target
    assert dp["epsilon"] == pytest.approx(rdp_epsilon(dp["noise_multiplier"], 1 / 3, 6, DELTA), rel=1e-9)


def test_resume_continues_the_privacy_accounting(tmp_path: Path):
    common = [*DP, "training.dp.noise_multiplier=1.0", f"training.dp.delta={DELTA}", "~callbacks.ema",
              "callbacks.model_checkpoint.every_n_train_steps=3"]
    first = train(compose_config("train", [*common, "trainer.max_steps=3"], tmp_path / "first"))
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)  # loads as mia-train loads it
    assert saved["privacy"]["history"] == [[1.0, pytest.approx(1 / 3), 3]]
    second = train(compose_config("train", [*common, "trainer.max_steps=6", f"ckpt_path={checkpoint}"],
                                  tmp_path / "second"))
    assert second["dp"]["steps"] == 6
    assert second["dp"]["epsilon"] == pytest.approx(rdp_epsilon(1.0, 1 / 3, 6, DELTA), rel=1e-9)
    assert second["dp"]["epsilon"] > first["dp"]["epsilon"]
    # Without DP the DP checkpoint is refused, and so is resuming a non-private checkpoint with DP.
    with pytest.raises(MiaError, match="trained with DP-SGD"):
        train(compose_config("train", [*TINY_TRAIN, "~callbacks.ema", "trainer.max_steps=6",
                                       f"ckpt_path={checkpoint}"], tmp_path / "third"))
    plain = [*TINY_TRAIN, "~callbacks.ema", "callbacks.model_checkpoint.every_n_train_steps=2", "trainer.max_steps=2"]
    train(compose_config("train", plain, tmp_path / "plain"))
    with pytest.raises(MiaError, match="trained without DP-SGD"):
        train(compose_config("train", [*common, "trainer.max_steps=4",
                                       f"ckpt_path={tmp_path / 'plain' / 'checkpoints' / 'last.ckpt'}"],
                             tmp_path / "fourth"))
    assert not (tmp_path / "third" / "target").exists() and not (tmp_path / "fourth" / "target").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.dp.noise_multiplier=1", "training.dp.target_epsilon=5"], "needs exactly one of noise_multiplier"),
        ([], "needs exactly one of noise_multiplier"),
        (["training.dp.noise_multiplier=-1"], r"training.dp.noise_multiplier must be a finite number ≥ 0.0, got -1"),
        (["training.dp.target_epsilon=0"], r"training.dp.target_epsilon must be a finite number > 0.0, got 0"),
        (["training.dp.noise_multiplier=1", "training.dp.max_grad_norm=0"],
         r"training.dp.max_grad_norm must be a finite number > 0.0, got 0"),
        (["training.dp.noise_multiplier=1", "training.dp.delta=1"],
         r"training.dp.delta must be a finite number in \(0.0, 1.0\), got 1"),
        (["training.dp.noise_multiplier=1", "training.dp.delta=0"], r"training.dp.delta must be a finite number in"),
        (["training.dp.noise_multiplier=1", "training.dp.accountant=gdp"],
         "training.dp.accountant must be one of rdp, prv; got 'gdp'"),
        (["training.dp.noise_multiplier=1", "training.dp.poisson_sampling=maybe"],
         "training.dp.poisson_sampling must be true or false"),
        (["training.dp.target_epsilon=1e-9"], "cannot be reached in 6 steps"),
        (["training.dp.noise_multiplier=1", "trainer.accelerator=cpu", "trainer.devices=2"], "trains on one device"),
        (["training.dp.noise_multiplier=1", "trainer.precision=bf16-mixed"], "set trainer.precision=32-true"),
        (["training.dp.noise_multiplier=1", "+trainer.accumulate_grad_batches=2"], "one batch per optimizer step"),
        (["training.dp.noise_multiplier=1", "target=text_to_image_tiny", "data.image_size=16", "data.channels=3"],
         "trains the pixel DDPM targets .* only, not TextToImageTarget"),
    ],
)
def test_bad_dp_settings_are_refused_before_training(tmp_path: Path, overrides: list[str], message: str):
    cfg = compose_config("train", [*DP, *overrides], tmp_path / "run")
    with pytest.raises(MiaError, match=message):
        train(cfg)
    assert not (tmp_path / "run" / "target").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_dp_experiments_compose_with_valid_settings():
    for experiment in ("dp_demo", "bench_cifar10_dp"):
        cfg = compose_config("train", [f"experiment={experiment}"], Path("/tmp/unused"))
        settings = dp_settings(cfg.training.dp)
        assert settings is not None and settings.target_epsilon == 10.0 and settings.noise_multiplier is None
        assert cfg.trainer.precision == "32-true"
    assert dp_settings(compose_config("train", [], Path("/tmp/unused")).training.dp) is None  # off by default
