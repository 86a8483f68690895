"""The calibration split and the protocol around it: roles, fitting on calibration only, metrics on the rest."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from conftest import compose_config
from sklearn.metrics import roc_auc_score

from mia.attacks.base import Attack
from mia.errors import MiaError
from mia.evaluation.calibration import calibration_fraction, calibration_mask
from mia.evaluation.protocol import Protocol, apply, roles
from mia.runs.attack import run

IDS = [f"s{i}" for i in range(200)]
LABELS = np.r_[np.ones(80, int), np.zeros(120, int)]


def test_calibration_is_stratified_seeded_and_follows_the_ids():
    mask = calibration_mask(IDS, LABELS, 0.25, seed=0)
    assert mask.sum() == 20 + 30 and mask[LABELS == 1].sum() == 20 and mask[LABELS == 0].sum() == 30
    assert np.array_equal(mask, calibration_mask(IDS, LABELS, 0.25, seed=0))
    assert not np.array_equal(mask, calibration_mask(IDS, LABELS, 0.25, seed=1))
    order = np.random.default_rng(0).permutation(len(IDS))  # another order of the same samples
    shuffled = calibration_mask([IDS[i] for i in order], LABELS[order], 0.25, seed=0)
    assert np.array_equal(shuffled, mask[order])  # each sample keeps its role
    assert calibration_mask(IDS, LABELS, 0.0, seed=0) is None


@pytest.mark.parametrize(("requested", "fitted", "message"), [
    (1.0, False, "fraction in"), (-0.1, False, "fraction in"), ("half", False, "fraction in"),
    (0, True, "something is fitted"),
])
def test_bad_calibration_settings_are_refused(requested, fitted, message):
    with pytest.raises(MiaError, match=message):
        calibration_fraction(requested, fitted)


def test_calibration_too_small_for_a_class_is_refused():
    with pytest.raises(MiaError, match="each role needs"):
        calibration_mask(IDS[:10], np.r_[np.ones(2, int), np.zeros(8, int)], 0.2, seed=0)


@dataclasses.dataclass
class SignFitted(Attack):
    """A toy fitted attack: features are given; it fits the sign that orients them on calibration."""

    name: ClassVar[str] = "sign_fitted"
    learns_from_labels: ClassVar[bool] = True
    sign: float = 0.0

    def collect(self, target, x0, noise, cond=None):  # pragma: no cover (apply() never calls it)
        raise AssertionError

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        members, others = features[labels == 1, 0].mean(), features[labels == 0, 0].mean()
        self.sign = 1.0 if members >= others else -1.0
        return {"sign": self.sign}

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return self.sign * features[:, 0].double()


def test_nothing_of_the_evaluation_part_influences_what_is_fitted():
    rng = np.random.default_rng(0)
    features = (rng.normal(size=len(IDS)) - LABELS)[:, None]  # inverted: members score lower
    protocol = Protocol(calibration=0.25, bootstrap=0)
    mask = roles(IDS, LABELS, protocol)
    first = apply(SignFitted(), features, LABELS, mask, protocol)
    assert first.chosen == {"sign": -1.0} and first.metrics["auc"] > 0.7
    # Make the evaluation part point the other way, as strongly as we like: the choice must not move.
    perturbed = features.copy()
    perturbed[~first.calibration] = -50.0 * perturbed[~first.calibration]
    second = apply(SignFitted(), perturbed, LABELS, roles(IDS, LABELS, protocol), protocol)
    assert second.chosen == first.chosen and np.array_equal(second.calibration, first.calibration)
    keep = ~first.calibration
    assert first.metrics["auc"] == pytest.approx(roc_auc_score(LABELS[keep], first.scores[keep]), abs=1e-12)
    assert first.metrics["n_calibration"] == 50 and first.metrics["n_members"] == 60


def test_a_fitted_attack_without_calibration_is_refused():
    with pytest.raises(MiaError, match=r"set protocol\.calibration"):
        apply(SignFitted(), np.zeros((len(IDS), 1)), LABELS, None, Protocol(calibration=0.0))


def test_an_attack_run_with_calibration_reports_the_evaluation_rows(tiny_target: Path, tmp_path: Path):
    cfg = compose_config("attack", [f"target.path={tiny_target}", "attack=sima", "protocol.calibration=0.25",
                                    "logger=none", "metrics.bootstrap=0", "trainer.enable_progress_bar=false"],
                         tmp_path)
    metrics = run(cfg)
    with open(tmp_path / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    roles = [r["role"] for r in rows]
    assert roles.count("calibration") == 12 and roles.count("evaluation") == 36
    evaluation = [r for r in rows if r["role"] == "evaluation"]
    labels = [int(r["label"]) for r in evaluation]
    scores = [float(r["score"]) for r in evaluation]
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics["n_calibration"] == 12 and metrics["n_members"] + metrics["n_nonmembers"] == 36


def test_no_calibration_keeps_scores_csv_as_it_was(tiny_target: Path, tmp_path: Path):
    cfg = compose_config("attack", [f"target.path={tiny_target}", "attack=sima", "logger=none",
                                    "metrics.bootstrap=0", "trainer.enable_progress_bar=false"], tmp_path)
    assert run(cfg)["n_calibration"] == 0
    assert (tmp_path / "scores.csv").read_text().splitlines()[0] == "id,label,score"


def _tuned(target: Path, out: Path, *overrides: str) -> dict:
    cfg = compose_config("attack", [f"target.path={target}", "logger=none", "metrics.bootstrap=0",
                                    "trainer.enable_progress_bar=false", f"cache.dir={out}/cache", *overrides], out)
    return run(cfg)


def test_tuning_chooses_on_calibration_and_reports_the_evaluation_part(tiny_target: Path, tmp_path: Path):
    grid = ["attack=na", "tune=na_grid", "protocol.calibration=0.25", "tune.grid.t=[40,60]",
            "tune.grid.injection.schedule.noise_scale=[0.1,1.0]", "~tune.grid.injection.absolute",
            "tune.grid.statistic=[pairwise_l2,centroid]", "tune.grid.direction=[down]"]
    metrics = _tuned(tiny_target, tmp_path / "a", *grid)
    tuning = metrics["tuning"]
    assert len(tuning["grid"]) == 8
    assert set(tuning["chosen"]) == {"t", "injection", "noise_scale", "statistic", "direction"}
    # The statistic shares predictions: 4 prediction runs of k = 5 queries over the 12 calibration samples.
    assert tuning["calibration_queries"] == 4 * 5 * 12
    assert metrics["queries_per_sample"] == 5 and metrics["n_calibration"] == 12
    chosen = {k: metrics["settings"][k] for k in tuning["chosen"]}
    assert chosen == tuning["chosen"]
    with open(tmp_path / "a" / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    evaluation = [r for r in rows if r["role"] == "evaluation"]
    assert metrics["auc"] == pytest.approx(roc_auc_score([int(r["label"]) for r in evaluation],
                                                         [float(r["score"]) for r in evaluation]), abs=1e-12)


def test_evaluation_samples_cannot_move_the_tuned_choice(tiny_target: Path, tmp_path: Path):
    import shutil

    from conftest import write_images

    pipeline = tmp_path / "pipeline"  # the target without its split: members and non-members from folders
    shutil.copytree(tiny_target, pipeline, ignore=shutil.ignore_patterns("split.json"))
    write_images(tmp_path / "in", 16, (8, 8), seed=0)
    write_images(tmp_path / "out", 16, (8, 8), seed=1)
    grid = ["attack=sima", "tune=sima_t", "protocol.calibration=0.25", "tune.grid.t=[10,100,300]",
            f"data.members={tmp_path}/in", f"data.nonmembers={tmp_path}/out"]
    first = _tuned(pipeline, tmp_path / "first", *grid)
    # Redraw every evaluation image (same file names, so the same ids and roles): only the calibration
    # part may decide, so the choice and its calibration value must not move.
    with open(tmp_path / "first" / "scores.csv") as handle:
        evaluation = [r["id"] for r in csv.DictReader(handle) if r["role"] == "evaluation"]
    for number, sample_id in enumerate(evaluation):
        folder, name = sample_id.split("/")
        path = tmp_path / ("in" if folder == "members" else "out") / name
        path.unlink()
        write_images(tmp_path / "redraw", 1, (8, 8), seed=100 + number)[0].rename(path)
    second = _tuned(pipeline, tmp_path / "second", *grid)
    assert second["tuning"]["chosen"] == first["tuning"]["chosen"]
    assert second["tuning"]["calibration_value"] == first["tuning"]["calibration_value"]
    assert second["tuning"]["grid"] == first["tuning"]["grid"]
    with open(tmp_path / "second" / "scores.csv") as handle:
        redrawn = {r["id"]: r["score"] for r in csv.DictReader(handle) if r["role"] == "evaluation"}
    with open(tmp_path / "first" / "scores.csv") as handle:
        before = {r["id"]: r["score"] for r in csv.DictReader(handle) if r["role"] == "evaluation"}
    assert all(redrawn[i] != before[i] for i in evaluation)  # the evaluation part did change
