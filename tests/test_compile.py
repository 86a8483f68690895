"""compile=true: compiled scores equal eager within 1e-4, the same queries counted, the compile time reported;
mia-train and mia-audit take it too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, compose_config
from diffusers import UNet2DModel

from mia.errors import MiaError
from mia.evaluation.result import AttackResult
from mia.runs.attack import run
from mia.runs.audit import run as run_audit
from train_targets.train import train

TOLERANCE = 1e-4  # absolute, on NA's scores (float32 noise predictions; inductor reorders sums and fuses ops)


def _attack(target: Path, out: Path, *overrides: str) -> dict:
    return run(compose_config("attack", [f"target.path={target}", "attack=na", "logger=none", "metrics.bootstrap=0",
                                         "trainer=cpu", "trainer.enable_progress_bar=false", "data.batch_size=20",
                                         f"cache.dir={out}/cache", *overrides], out))


@pytest.mark.slow  # compiling the tiny UNet with inductor takes tens of seconds on 2 CPU cores
def test_compiled_scores_equal_eager_within_the_tolerance(tiny_target: Path, tmp_path: Path):
    eager = _attack(tiny_target, tmp_path / "eager")
    compiled = _attack(tiny_target, tmp_path / "compiled", "compile=true")
    # 48 samples in batches of 20: the last batch of 8 reuses the dynamic graph (one compile per module).
    a, b = AttackResult.load(tmp_path / "eager"), AttackResult.load(tmp_path / "compiled")
    assert a.ids == b.ids and not np.array_equal(a.scores, np.zeros_like(a.scores))
    np.testing.assert_allclose(b.scores, a.scores, rtol=0, atol=TOLERANCE)
    assert compiled["queries_per_sample"] == eager["queries_per_sample"] == 5
    record = json.loads((tmp_path / "compiled" / "metrics.json").read_text())["compile"]
    assert record["compiled"] == ["denoiser"] and record["compile_seconds"]["denoiser"] > 0
    assert record["freeze"] is True and record["channels_last"] is True  # the defaults
    assert "compile" not in eager
    # Its predictions were cached apart from eager ones, per compile setting.
    assert (tmp_path / "compiled" / "cache" / "compiled_default_frozen_nhwc").is_dir()


@pytest.mark.slow  # compiling forward and backward with inductor: about a minute on 2 CPU cores
def test_compiled_training_trains_the_same_model_and_exports_plain_weights(tmp_path: Path):
    runs = {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        info = train(compose_config("train", [*TINY_TRAIN, "seed=3", f"compile={str(compiled).lower()}",
                                              f"export_dir={out}/target"], out))
        runs[compiled] = (info, UNet2DModel.from_pretrained(out / "target" / "unet"))
    (eager_info, eager_unet), (compiled_info, compiled_unet) = runs[False], runs[True]
    assert "compile" not in eager_info and compiled_info["compile"]["mode"] == "default"
    assert compiled_info["compile"]["first_step_seconds"] > 0
    # The export is a plain diffusers UNet (no compiled wrapper in its keys), and six steps of the same seeded
    # training land on the same weights within float32 reordering.
    eager_state, compiled_state = eager_unet.state_dict(), compiled_unet.state_dict()
    assert eager_state.keys() == compiled_state.keys()
    for key, value in eager_state.items():
        torch.testing.assert_close(compiled_state[key], value, rtol=1e-3, atol=1e-4)


def test_training_compile_refuses_dp_and_a_bad_mode_in_one_line(tmp_path: Path):
    with pytest.raises(MiaError, match=r"compile=true does not apply with training\.dp"):
        train(compose_config("train", [*TINY_TRAIN, "compile=true", "training.dp.enabled=true",
                                       "training.dp.noise_multiplier=1"], tmp_path / "dp"))
    with pytest.raises(MiaError, match="compile_mode must be one of"):
        train(compose_config("train", [*TINY_TRAIN, "compile=true", "compile_mode=fastest"], tmp_path / "mode"))
    assert not (tmp_path / "dp" / "target").exists() and not (tmp_path / "mode" / "target").exists()


def test_audit_compile_refuses_a_bad_value_before_reading(tiny_target: Path, tmp_path: Path):
    with pytest.raises(MiaError, match="compile_freeze must be"):
        run_audit(compose_config("audit", [f"target.path={tiny_target}", "logger=none", "compile=true",
                                           "compile_freeze=sometimes"], tmp_path))
    assert not (tmp_path / "audit.json").exists()


def test_compile_refuses_what_it_cannot_apply_in_one_line(tiny_target: Path, tmp_path: Path):
    with pytest.raises(MiaError, match="compile_mode must be one of"):
        _attack(tiny_target, tmp_path / "a", "compile=true", "compile_mode=fastest")
    with pytest.raises(MiaError, match="has no weights"):
        _attack(tiny_target, tmp_path / "b", "compile=true", "target=memorizer")
    with pytest.raises(MiaError, match="compile must be"):
        _attack(tiny_target, tmp_path / "c", "compile=maybe")
    with pytest.raises(MiaError, match="compile_channels_last must be"):
        _attack(tiny_target, tmp_path / "d", "compile=true", "compile_channels_last=nhwc")
    assert not (tmp_path / "a" / "metrics.json").exists()
