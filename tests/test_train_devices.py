"""Training on devices: where the EMA average lives, who draws sample grids, the probe's timesteps, DDP epochs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, TINY_TRAIN
from diffusers import DDPMScheduler

from mia.data.pools import DigitsPool
from train_targets.data import MemberDataModule
from train_targets.ema import EMA
from train_targets.module import DDPMTarget

UNET = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16], "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8}


def _model(**kwargs) -> DDPMTarget:
    return DDPMTarget(unet=UNET, scheduler={"num_train_timesteps": 1000}, **kwargs)


def test_the_ema_average_lives_on_the_training_device():
    # Lightning runs callbacks' setup before the strategy moves the module to its device, so the module is
    # still on the CPU there; the average must go where training runs (the strategy's root device), here
    # "meta", which stands in for a GPU on a CPU-only machine.
    model = _model()
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")))
    ema = EMA(decay=0.9)
    ema.setup(trainer, model, "fit")
    devices = {p.device.type for p in ema._average_model.parameters()}
    assert devices == {"meta"}


def _stub_trainer(rank_zero: bool) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=rank_zero, sanity_checking=False, global_step=3, loggers=[],
                           callback_metrics={})


@pytest.mark.parametrize("rank_zero", [True, False])
def test_sample_grids_are_drawn_on_rank_zero_only(tmp_path: Path, rank_zero: bool):
    model = _model(sample_count=2, sample_steps=1, sample_dir=str(tmp_path))
    model._trainer = _stub_trainer(rank_zero)
    model.on_validation_epoch_start()
    model.on_validation_epoch_end()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["samples_step0000003.png"] if rank_zero else [])


def test_probe_timesteps_come_from_the_scheduler():
    data = MemberDataModule(DigitsPool(image_size=8), {"name": "digits"}, members=64, nonmembers=64, probe_size=64)
    data.prepare()
    model = SimpleNamespace(noise_scheduler=DDPMScheduler(num_train_timesteps=50))
    data.trainer = SimpleNamespace(lightning_module=model)
    timesteps = torch.cat([batch[3] for batch in data.val_dataloader()])
    assert int(timesteps.max()) < 50 and len(timesteps.unique()) > 10


@pytest.mark.slow
def test_ddp_training_counts_epochs_over_all_ranks(tmp_path: Path):
    # Two CPU processes, 24 members, batch 8 per rank: each step sees 16 images, 4 steps = 64 images.
    args = [*TINY_TRAIN, "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer=ddp",
            "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
            f"hydra.run.dir={tmp_path}/run"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-m", "train_targets", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "run" / "target" / "training.json").read_text())
    assert info["steps"] == 4
    assert info["epochs"] == pytest.approx(4 * 8 * 2 / 24)
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        "samples_step0000002.png", "samples_step0000004.png"]
