"""mia-train: the export round trip, resume, and bad input that stops before anything is written."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, TINY_TRAIN, compose_config, write_images
from diffusers import DDPMPipeline

from mia.data.split import Split
from mia.errors import MiaError
from train_targets.train import train


def test_export_loads_in_diffusers_and_samples(tiny_target: Path):
    pipeline = DDPMPipeline.from_pretrained(tiny_target)
    images = pipeline(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
    assert images.shape == (2, 8, 8, 1) and images.min() >= 0.0 and images.max() <= 1.0
    assert pipeline.scheduler.config.num_train_timesteps == 1000
    assert pipeline.scheduler.config.beta_schedule == "linear"


def test_export_records_a_disjoint_split_and_the_run(tiny_target: Path):
    split = Split.load(tiny_target / "split.json")
    assert len(split.members) == 24 and len(split.nonmembers) == 24
    assert not set(split.members) & set(split.nonmembers)
    assert split.dataset["name"] == "digits" and split.dataset["fingerprint"].startswith("sha256:")
    assert "_target_" not in split.dataset  # named from the registry, so loading it runs no code it names
    assert split.duplicates["left_out"] == {} and "pixels" in split.duplicates["rule"]  # checked as it was drawn
    info = json.loads((tiny_target / "training.json").read_text())
    assert info["steps"] == 6 and info["members"] == 24
    assert {"val/loss_members", "val/loss_nonmembers", "val/loss_gap"} <= set(info["metrics"])
    assert info["provenance"]["split"] == {"fingerprint": split.dataset["fingerprint"], "seed": 0}
    assert info["provenance"]["device"] == "cpu" and info["provenance"]["libraries"]["lightning"]


def test_exported_weights_are_the_ema_weights(tmp_path: Path):
    # With EMA, the export differs from the raw weights; without it, it equals them.
    raw = compose_config("train", [*TINY_TRAIN, "~callbacks.ema"], tmp_path / "raw")
    ema = compose_config("train", TINY_TRAIN, tmp_path / "ema")
    train(raw)
    train(ema)
    raw_unet = DDPMPipeline.from_pretrained(tmp_path / "raw" / "target").unet.state_dict()
    ema_unet = DDPMPipeline.from_pretrained(tmp_path / "ema" / "target").unet.state_dict()
    assert any(not torch.equal(raw_unet[k], ema_unet[k]) for k in raw_unet)


def test_same_config_same_split_and_weights(tmp_path: Path):
    for name in ("a", "b"):
        train(compose_config("train", TINY_TRAIN, tmp_path / name))
    assert Split.load(tmp_path / "a/target/split.json") == Split.load(tmp_path / "b/target/split.json")
    first = DDPMPipeline.from_pretrained(tmp_path / "a/target").unet.state_dict()
    second = DDPMPipeline.from_pretrained(tmp_path / "b/target").unet.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def _logged_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def test_resume_continues_from_the_checkpoint(tmp_path: Path):
    common = [*TINY_TRAIN, "logger=csv", "trainer.log_every_n_steps=1",
              "callbacks.model_checkpoint.every_n_train_steps=4"]
    train(compose_config("train", [*common, "trainer.max_steps=4"], tmp_path / "first"))
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert checkpoint.exists()
    info = train(compose_config("train", [*common, "trainer.max_steps=8", f"ckpt_path={checkpoint}"],
                                tmp_path / "second"))
    assert info["steps"] == 8
    assert min(_logged_steps(tmp_path / "second")) >= 4  # it did not start again from step 0


def test_resume_with_another_split_is_refused(tmp_path: Path):
    common = [*TINY_TRAIN, "callbacks.model_checkpoint.every_n_train_steps=2", "trainer.max_steps=2"]
    train(compose_config("train", common, tmp_path / "first"))
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    cfg = compose_config("train", [*common, "split.seed=1", "trainer.max_steps=4", f"ckpt_path={checkpoint}"],
                         tmp_path / "second")
    with pytest.raises(MiaError, match="different member split"):
        train(cfg)
    assert not (tmp_path / "second" / "target").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=folder", "data.root={tmp}/missing"], "does not exist"),
        (["data=folder", "data.root={tmp}/empty"], "no image files"),
        (["data=folder", "data.root={tmp}/broken", "data.image_size=8"], "cannot read image"),
        (["split.members=1000", "split.nonmembers=1000"], "pool has only 1797"),
        (["ckpt_path={tmp}/nope.ckpt"], "checkpoint .* does not exist"),
        (["data.channels=3", "target.unet.in_channels=1"], "the model takes 1x8x8 images"),
    ],
)
def test_bad_input_stops_before_training_and_writes_no_target(tmp_path: Path, overrides, message):
    (tmp_path / "empty").mkdir()
    write_images(tmp_path / "broken", 48, (8, 8), seed=0)  # all 48 are in the 24 + 24 split
    (tmp_path / "broken" / "0001.png").write_bytes(b"\x89PNG truncated")
    cfg = compose_config("train", [*TINY_TRAIN, *(o.format(tmp=tmp_path) for o in overrides)], tmp_path / "run")
    with pytest.raises(MiaError, match=message):
        train(cfg)
    assert not (tmp_path / "run" / "target").exists()


def test_an_existing_export_folder_is_not_overwritten(tmp_path: Path):
    (tmp_path / "run" / "target").mkdir(parents=True)
    with pytest.raises(MiaError, match="already exists"):
        train(compose_config("train", TINY_TRAIN, tmp_path / "run"))


def _cli(*args: str, cwd: Path, output: Path | None = None) -> subprocess.Popen:
    """mia-train in a subprocess; its output piped, or written to ``output`` (a long run would fill a pipe)."""
    command, env = [sys.executable, "-m", "train_targets", *args], dict(os.environ, PYTHONUNBUFFERED="1")
    if output is None:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(output, "w") as sink:  # the child keeps its own copy of the file open
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)


def _checkpoint_step(path: Path) -> int | None:
    """The step of the complete checkpoint at ``path``, or None while there is none."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except (OSError, EOFError, RuntimeError, KeyError, pickle.UnpicklingError):
        return None


@pytest.mark.slow  # mia-train processes, ~15 s; in-process twins in test_bad_inputs.py (`make test-slow`)
def test_cli_bad_input_is_one_line_and_a_nonzero_exit(tmp_path: Path):
    process = _cli("data=folder", f"data.root={tmp_path}/missing", "logger=none", f"hydra.run.dir={tmp_path}/run",
                   cwd=tmp_path)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 2
    assert stderr.strip().splitlines()[-1].startswith("mia-train: error: dataset folder")
    assert "Traceback" not in stderr
    assert not (tmp_path / "run" / "target").exists()


@pytest.mark.slow  # two mia-train processes, ~30 s of start-up (`make test-slow`)
def test_cli_unknown_option_or_value_fails(tmp_path: Path):
    for override in ("data=imagenet", "no_such_key=1"):
        process = _cli(override, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 1  # Hydra's own refusal (docs/bad_inputs.md, rows G4 and G5)
        assert "imagenet" in stderr or "no_such_key" in stderr
        assert "Traceback" not in stderr


@pytest.mark.slow  # two mia-train processes and a kill, ~30 s (`make test-slow`)
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path):
    run = tmp_path / "run"
    args = [*[a for a in TINY_TRAIN if not a.startswith("trainer.max_steps")], "logger=csv",
            "trainer.log_every_n_steps=1", "trainer.max_steps=100000",
            "callbacks.model_checkpoint.every_n_train_steps=5",
            f"hydra.run.dir={run}"]
    process = _cli(*args, cwd=REPO, output=tmp_path / "first.log")
    checkpoint = run / "checkpoints" / "last.ckpt"
    # Wait for what the run itself signals, a complete checkpoint, then kill at once: the run is training on
    # (and may be writing the next checkpoint), which is the moment a kill must not corrupt last.ckpt.
    deadline = time.monotonic() + 1800  # a bound for a loaded machine, not an expected duration
    while _checkpoint_step(checkpoint) is None:
        assert process.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 1800 s"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "target").exists()
    saved_step = _checkpoint_step(checkpoint)
    assert saved_step is not None and saved_step >= 5

    resumed = [a for a in args if not a.startswith(("trainer.max_steps", "hydra.run.dir"))]
    process = _cli(*resumed, f"trainer.max_steps={saved_step + 5}", f"ckpt_path={checkpoint}",
                   f"hydra.run.dir={tmp_path}/resumed", cwd=REPO)
    _, stderr = process.communicate(timeout=1800)
    assert process.returncode == 0, stderr[-2000:]
    info = json.loads((tmp_path / "resumed" / "target" / "training.json").read_text())
    assert info["steps"] == saved_step + 5
    assert min(_logged_steps(tmp_path / "resumed")) >= saved_step


class _EpochBound(L.Callback):
    """Records (epoch, trainer.max_epochs) at each epoch start: what the progress bar reads ("Epoch e/max-1")."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen.append((trainer.current_epoch, trainer.max_epochs))


@pytest.mark.parametrize("dp", [False, True], ids=["shuffled", "dp-poisson"])
def test_max_epochs_is_what_max_steps_takes_and_steps_still_end_training(tmp_path: Path, dp: bool):
    # 24 members in batches of 8: 3 batches an epoch (Poisson: 1 / sampling rate), so 7 steps take 3 epochs.
    extra = ["training.dp.enabled=true", "training.dp.noise_multiplier=1.0"] if dp else []
    bound = _EpochBound()
    cfg = compose_config("train", [*TINY_TRAIN, *extra, "trainer.max_steps=7"], tmp_path)
    assert cfg.trainer.max_epochs == -1
    info = train(cfg, extra_callbacks=[bound])
    assert info["steps"] == 7
    assert bound.seen == [(0, 3), (1, 3), (2, 3)]


def test_the_epoch_bound_follows_a_resumed_run(tmp_path: Path):
    common = [*TINY_TRAIN, "callbacks.model_checkpoint.every_n_train_steps=4"]
    train(compose_config("train", [*common, "trainer.max_steps=4"], tmp_path / "first"))  # epoch 0, 1 batch of 1
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    bound = _EpochBound()
    info = train(compose_config("train", [*common, "trainer.max_steps=11", f"ckpt_path={checkpoint}"],
                                tmp_path / "second"), extra_callbacks=[bound])
    assert info["steps"] == 11
    # Epoch 1 goes on from its 2nd batch (Lightning calls no epoch-start hook for it) to step 6, epoch 2 to 9,
    # and max_steps ends epoch 3 after 2 of its 3 batches: epochs 0..3, each read as "Epoch e/3".
    assert bound.seen == [(2, 4), (3, 4)]
