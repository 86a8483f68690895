"""The Python API: docs/api.md's session runs as written, and the API gives what mia-attack gives."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, compose_config

import mia
from mia.attacks import NoiseAggregation
from mia.errors import MiaError
from mia.runs.attack import run

DEMO_TARGET = "runs/demo/target"


def code_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_the_notebook_session_in_docs_api_runs(tiny_target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocks = code_blocks(REPO / "docs" / "api.md")
    assert len(blocks) >= 4 and DEMO_TARGET in blocks[0]
    monkeypatch.chdir(tmp_path)  # the session writes roc.png and results/ where it runs
    namespace: dict = {}
    for block in blocks:
        exec(compile(block.replace(DEMO_TARGET, str(tiny_target)), "docs/api.md", "exec"), namespace)
    assert (tmp_path / "roc.png").is_file() and (tmp_path / "results" / "na" / "scores.csv").is_file()
    assert namespace["tuned"].metrics["tuning"]["chosen"].keys() == {"t", "noise_scale"}
    assert namespace["statistic"].metrics["queries_per_sample_this_run"] == 0
    assert namespace["learned"].metrics["n_calibration"] == 12


def test_the_api_scores_what_the_command_scores(tiny_target: Path, tmp_path: Path):
    metrics = run(compose_config("attack", [f"target.path={tiny_target}", "attack=na", "attack.t=40", "logger=none",
                                            "metrics.bootstrap=50", "trainer.enable_progress_bar=false",
                                            "trainer=cpu"], tmp_path))
    result = mia.run_attack(mia.load_target(tiny_target), NoiseAggregation(t=40),
                            protocol=mia.Protocol(bootstrap=50))
    saved = mia.AttackResult.load(tmp_path)
    np.testing.assert_array_equal(result.scores, saved.scores)
    assert result.ids == saved.ids and result.metrics["auc"] == metrics["auc"]
    assert result.metrics["auc_ci"] == metrics["auc_ci"] and result.metrics["target"] == metrics["target"]


def test_attacks_by_name_take_their_configs_defaults_and_refuse_unknown_names():
    assert mia.make_attack("na") == NoiseAggregation()
    assert mia.make_attack("na", t=40) == NoiseAggregation(t=40)
    with pytest.raises(MiaError, match="there is no attack 'nope'; choose one of"):
        mia.make_attack("nope")


def test_samples_are_given_once(tiny_target: Path):
    target = mia.load_target(tiny_target)
    evalset = mia.evaluation_set(target, max_members=4, max_nonmembers=4)
    with pytest.raises(MiaError, match="give the samples once"):
        mia.run_attack(target, "sima", evalset=evalset, max_members=2)
