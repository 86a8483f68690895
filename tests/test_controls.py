"""The controls: the model-free classifier (attack=blind and the check on two folders), the reference model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from PIL import Image
from tiny_t2i import build_tiny_pixel

import mia
from mia.attacks.blind import BlindAttack, blind_features
from mia.controls.blind import blind_control
from mia.data.evaluation_set import from_split
from mia.data.pools import DigitsPool
from mia.data.split import Split, fingerprint, make_split
from mia.errors import MiaError
from mia.reporting.console import format_metrics
from mia.runs.attack import run

QUICK = ["logger=none", "metrics.bootstrap=200", "trainer.enable_progress_bar=false", "trainer=cpu"]


def two_sources(root: Path, count: int = 40) -> tuple[Path, Path]:
    """Two folders of 8 px photos from different "sources": bright and smooth against dark and grainy."""
    rng = np.random.default_rng(0)
    for name, make in (("a", lambda: np.clip(rng.normal(180, 10, (8, 8, 3)), 0, 255)),
                       ("b", lambda: np.clip(rng.normal(90, 60, (8, 8, 3)), 0, 255))):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(make().astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root / "a", root / "b"


@pytest.fixture(scope="module")
def pixel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pixel(tmp_path_factory.mktemp("pixel") / "ddpm")


def test_blind_features_are_per_sample_and_never_query_the_model(pixel: Path, tmp_path: Path):
    members, nonmembers = two_sources(tmp_path)
    target = mia.load_target(pixel)
    result = mia.run_attack(target, BlindAttack(), members, nonmembers, protocol=mia.Protocol(calibration=0.25),
                            blind_control=False)
    assert target.queries == 0 and result.metrics["queries_per_sample"] == 0
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(blind_features(images)[2:3], blind_features(images[2:3]))  # batch-invariant


def test_two_folders_from_different_sources_are_told_apart_and_every_report_says_so(pixel: Path, tmp_path: Path):
    members, nonmembers = two_sources(tmp_path / "data")
    out = tmp_path / "run"
    metrics = run(compose_config("attack", [f"target.path={pixel}", f"data.members={members}",
                                            f"data.nonmembers={nonmembers}", "attack=blind", *QUICK], out))
    assert metrics["auc"] > 0.95 and metrics["queries_per_sample"] == 0  # attack=blind itself
    control = metrics["blind_control"]
    assert control["differs"] and control["auc"] > 0.95 and control["auc_ci"][0] > 0.5
    assert metrics["warnings"] == [control["warning"]] and "differ without the model" in control["warning"]
    assert json.loads((out / "metrics.json").read_text())["warnings"] == metrics["warnings"]
    assert "WARNING: the two sets differ without the model" in format_metrics(metrics)  # the console's table
    # Any attack on the same folders carries the same warning.
    sima = run(compose_config("attack", [f"target.path={pixel}", f"data.members={members}",
                                         f"data.nonmembers={nonmembers}", "attack=sima", *QUICK], tmp_path / "sima"))
    assert sima["blind_control"]["differs"] and sima["warnings"]


def test_on_a_split_drawn_from_one_pool_the_blind_control_finds_nothing():
    pool = DigitsPool(image_size=8)
    members, nonmembers = make_split(len(pool), 300, 300, seed=0)
    ids = [pool.ids[i] for i in members], [pool.ids[i] for i in nonmembers]
    dataset = {"name": "digits", "image_size": 8, "channels": 1,
               "fingerprint": fingerprint(ids[0] + ids[1], [pool.read(pool.ids.index(i)) for i in ids[0] + ids[1]])}
    evalset = from_split(Split(members=ids[0], nonmembers=ids[1], seed=0, dataset=dataset))
    control = blind_control(evalset)
    low, high = control["auc_ci"]
    assert control["ran"] and low <= 0.5 <= high and not control["differs"], control


def test_the_blind_attack_on_the_targets_own_split_is_at_chance(tiny_target: Path, tmp_path: Path):
    metrics = run(compose_config("attack", [f"target.path={tiny_target}", "attack=blind", *QUICK], tmp_path))
    low, high = metrics["auc_ci"]
    assert low <= 0.5 <= high and "blind_control" not in metrics  # a split, not two folders: no automatic control


def test_the_reference_control_reports_the_reference_and_the_calibrated_score(tiny_target: Path, tmp_path: Path):
    both = [f"target.path={tiny_target}", f"reference.path={tiny_target}", "attack=loss", *QUICK]
    metrics = run(compose_config("attack", both, tmp_path / "none"))
    assert metrics["reference_model"]["auc"] == metrics["auc"]  # the same model: the same scores
    assert metrics["reference_calibrated"]["auc"] == 0.5 and metrics["queries_per_sample"] == 1
    calibrated = run(compose_config("attack", [*both, "attack.calibration=reference"], tmp_path / "reference"))
    assert calibrated["auc"] == 0.5 and calibrated["uncalibrated"]["auc"] == metrics["auc"]
    assert calibrated["queries_per_sample"] == 2  # target and reference, each once per sample
    with open(tmp_path / "reference" / "scores.csv") as handle:
        assert {float(row["score"]) for row in csv.DictReader(handle)} == {0.0}


def test_a_reference_of_another_kind_or_no_reference_is_refused(tiny_target: Path, pixel: Path, tmp_path: Path):
    with pytest.raises(MiaError, match=r"the reference model .* takes inputs of shape \[3, 8, 8\]"):
        run(compose_config("attack", [f"target.path={tiny_target}", f"reference.path={pixel}", *QUICK], tmp_path))
    with pytest.raises(MiaError, match=r"attack.calibration=reference subtracts a reference model's scores"):
        run(compose_config("attack", [f"target.path={tiny_target}", "attack.calibration=reference", *QUICK],
                           tmp_path))
