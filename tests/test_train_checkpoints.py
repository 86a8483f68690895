"""Training checkpoints: the EMA weights on every export path, the split they carry, and safe loading."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, compose_config
from diffusers import DDPMPipeline
from PIL import Image
from torchvision.utils import save_image

from mia.errors import MiaError
from mia.targets.checkpoint import read_training_checkpoint
from mia.targets.folder import load_folder
from train_targets.module import DDPMTarget
from train_targets.train import train

EVERY_3 = [*TINY_TRAIN, "callbacks.model_checkpoint.every_n_train_steps=3", "callbacks.model_checkpoint.save_top_k=-1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 steps with EMA, a checkpoint every 3 steps, a sample grid at steps 3 and 6."""
    out = tmp_path_factory.mktemp("run")
    train(compose_config("train", EVERY_3, out))
    return out


def _unet_state(target: Path) -> dict[str, torch.Tensor]:
    return DDPMPipeline.from_pretrained(target).unet.state_dict()


@pytest.mark.parametrize("max_steps", [6, 0])
def test_resume_at_or_past_max_steps_exports_the_ema_weights(run: Path, tmp_path: Path, max_steps: int):
    # The fit loop does no step here, so Lightning never copies the average in: the export must still be EMA.
    last = run / "checkpoints" / "last.ckpt"
    info = train(compose_config("train", [*EVERY_3, f"trainer.max_steps={max_steps}", f"ckpt_path={last}"],
                                tmp_path))
    assert info["steps"] == 6
    saved = torch.load(last, map_location="cpu", weights_only=True)
    exported = _unet_state(tmp_path / "target")
    ema = {k[len("unet."):]: v for k, v in saved["state_dict"].items() if k.startswith("unet.")}
    raw = {k[len("unet."):]: v for k, v in saved["current_model_state"].items() if k.startswith("unet.")}
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # the two differ, so the check below means something
    assert all(torch.equal(exported[k], ema[k]) for k in ema)


def test_sample_grids_are_drawn_with_the_ema_weights(run: Path):
    # The grid of the last validation (step 6) is the grid of the exported (EMA) weights.
    saved = np.asarray(Image.open(run / "samples" / "samples_step0000006.png"))
    hparams = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    model = DDPMTarget(**hparams)
    model.unet.load_state_dict(_unet_state(run / "target"))
    save_image(model.sample_grid(), run / "regenerated.png")
    assert np.array_equal(saved, np.asarray(Image.open(run / "regenerated.png")))


def test_training_checkpoints_load_with_weights_only(run: Path):
    # What Lightning, the callbacks (EMA, checkpointing) and the data module write is plain tensors and types.
    for path in (run / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert checkpoint["MemberDataModule"]["fingerprint"].startswith("sha256:")


class _RunsCode:
    """An object whose unpickling runs code: what a checkpoint from elsewhere could hold."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def _poisoned(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    gadget = _RunsCode()
    gadget.marker = tmp_path / "code-ran"
    checkpoint["extra"] = gadget
    path = tmp_path / "poisoned.ckpt"
    torch.save(checkpoint, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    return path, gadget.marker


def test_a_checkpoint_that_needs_pickle_is_refused_as_a_target(run: Path, tmp_path: Path):
    path, marker = _poisoned(run, tmp_path)
    with pytest.raises(MiaError, match="weights_only"):
        read_training_checkpoint(path)
    assert not marker.exists()


def test_a_checkpoint_that_needs_pickle_is_refused_on_resume(run: Path, tmp_path: Path):
    path, marker = _poisoned(run, tmp_path)
    cfg = compose_config("train", [*EVERY_3, "trainer.max_steps=8", f"ckpt_path={path}"], tmp_path / "resumed")
    with pytest.raises(MiaError, match="weights_only"):
        train(cfg)
    assert not marker.exists() and not (tmp_path / "resumed" / "target").exists()


@pytest.fixture(scope="module")
def other_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another run: same data, another member split."""
    out = tmp_path_factory.mktemp("other")
    train(compose_config("train", [*EVERY_3, "split.seed=1", "trainer.max_steps=3"], out))
    return out


def test_target_checkpoint_of_the_same_run_keeps_its_split(run: Path):
    model = load_folder(str(run / "target"), checkpoint=str(run / "checkpoints" / "last.ckpt"))
    split = model.split
    assert split is not None and len(split.members) == 24
    exported = _unet_state(run / "target")
    assert all(torch.equal(model.denoiser.state_dict()[k], exported[k]) for k in exported)


def test_target_checkpoint_of_another_run_is_refused(run: Path, other_run: Path):
    with pytest.raises(MiaError, match="another member split"):
        load_folder(str(run / "target"), checkpoint=str(other_run / "checkpoints" / "last.ckpt"))
