"""compile=true: compiled scores equal eager within 1e-4, the same queries counted, the compile time reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config

from mia.errors import MiaError
from mia.evaluation.result import AttackResult
from mia.runs.attack import run

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
    assert "compile" not in eager


def test_compile_refuses_what_it_cannot_apply_in_one_line(tiny_target: Path, tmp_path: Path):
    with pytest.raises(MiaError, match="compile_mode must be one of"):
        _attack(tiny_target, tmp_path / "a", "compile=true", "compile_mode=fastest")
    with pytest.raises(MiaError, match="has no weights"):
        _attack(tiny_target, tmp_path / "b", "compile=true", "target=memorizer")
    with pytest.raises(MiaError, match="compile must be"):
        _attack(tiny_target, tmp_path / "c", "compile=maybe")
    assert not (tmp_path / "a" / "metrics.json").exists()
