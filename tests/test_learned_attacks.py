"""Learned attacks (secmi_nn, learned): features against hand computations, fitting on calibration rows only,
reproducible fits, and end-to-end runs reported by the protocol."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from diffusers import DDPMScheduler
from sklearn.metrics import roc_auc_score

from mia.attacks.features import FEATURE_SETS
from mia.attacks.learned import LearnedAttack
from mia.attacks.loss import LossAttack
from mia.attacks.noise_aggregation import NoiseAggregation
from mia.attacks.sample_noise import SampleNoise
from mia.attacks.secmi import SecMI
from mia.attacks.secmi_nn import SecMINN
from mia.data.images import load_images, to_model_range
from mia.data.pools import DigitsPool
from mia.data.split import make_split
from mia.errors import MiaError
from mia.evaluation.protocol import Protocol, apply, roles
from mia.runs.attack import run
from mia.targets.memorizer import memorizing_target


@pytest.fixture(scope="module")
def small():
    """A memoriser of 40 digits at 8x8, those 40 and 40 others, their ids, labels and noise keys."""
    alphas = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod
    pool = DigitsPool(image_size=8)
    members, others = make_split(len(pool), 40, 40, seed=0)
    images, _ = load_images(pool, [*members, *others])
    x0 = to_model_range(images)
    ids = [pool.ids[i] for i in [*members, *others]]
    labels = np.r_[np.ones(40, int), np.zeros(40, int)]
    return memorizing_target(x0[:40], alphas), x0, ids, labels, torch.arange(80)


def features_of(attack, small) -> np.ndarray:
    target, x0, _, _, keys = small
    attack.check(target)
    return attack.collect(target, x0, SampleNoise(keys, attack.seed)).double().numpy()


def test_secmi_residual_is_what_secmi_stat_sums(small):
    target, x0, *_ = small
    secmi = SecMI()
    residual = secmi.residual(target, x0[:6])
    assert residual.shape == (6, 1, 8, 8) and residual.dtype == torch.float64 and (residual >= 0).all()
    torch.testing.assert_close(secmi.scores_of(target, x0[:6], None), -residual.flatten(1).pow(2).sum(1))


def test_na_features_by_hand(small):
    target, x0, _, _, keys = small
    attack = LearnedAttack(features="na", source={"t": 40, "noise_scale": 0.5})
    features = torch.from_numpy(features_of(attack, small)[:5])
    eps = NoiseAggregation(t=40, noise_scale=0.5).collect(target, x0[:5], SampleNoise(keys[:5], 0)).double()
    for row in range(5):
        e = eps[row].numpy()
        pairs = [np.linalg.norm(e[i] - e[j]) for i in range(5) for j in range(i + 1, 5)]
        norms = [np.linalg.norm(e[i]) for i in range(5)]
        statistic = sum(np.sum((e[i] - e[j]) ** 2) for i in range(5) for j in range(5)) / 25
        expected = torch.tensor([*pairs, *norms, statistic])
        torch.testing.assert_close(features[row], expected.to(torch.float32).double(), rtol=1e-6, atol=1e-9)
    assert len(attack._set.columns((1, 8, 8))) == features.shape[1] == 16


def test_secmi_and_loss_features_by_hand(small):
    target, x0, _, _, keys = small
    secmi = features_of(LearnedAttack(features="secmi"), small)
    assert secmi.shape == (80, 7 + 1)  # seven statistics, one sum of squares per channel
    stat = -SecMI().scores_of(target, x0, None).numpy()
    np.testing.assert_allclose(secmi[:, 0], stat, rtol=1e-6)
    np.testing.assert_allclose(secmi[:, -1], stat, rtol=1e-6)  # one channel: its sum of squares is the total
    loss = features_of(LearnedAttack(features="loss_multi_t", source={"timesteps": [50, 300]}), small)
    for column, t in enumerate((50, 300)):
        expected = -LossAttack(t=t).scores_of(target, x0, SampleNoise(keys, 0)).numpy()
        np.testing.assert_allclose(loss[:, column], expected, rtol=1e-6)


def perturbed_evaluation(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The evaluation rows replaced by something else entirely (the calibration rows untouched)."""
    other = features.copy()
    rng = np.random.default_rng(7)
    other[~mask] = rng.permutation(other[~mask]) * 3.0 + 1.0
    return other


@pytest.mark.parametrize("attack", [
    LearnedAttack(features="na", n_estimators=20),
    LearnedAttack(features="secmi", classifier="hist_gradient_boosting", n_estimators=20),
    SecMINN(epochs=2, width=8),
], ids=["learned-na-xgboost", "learned-secmi-hgb", "secmi_nn"])
def test_fitting_sees_the_calibration_rows_only(attack, small):
    _, _, ids, labels, _ = small
    features = features_of(attack, small)
    protocol = Protocol(calibration=0.25, bootstrap=0)
    mask = roles(ids, labels, protocol)
    first = apply(attack, features, labels, mask, protocol)
    second = apply(attack, perturbed_evaluation(features, mask), labels, mask, protocol)
    assert first.chosen == second.chosen  # what was learned (losses, validation AUC, importances) is the same
    np.testing.assert_array_equal(first.scores[mask], second.scores[mask])  # hence the same classifier
    assert not np.array_equal(first.scores[~mask], second.scores[~mask])  # while the evaluation part did change
    assert first.metrics["n_calibration"] == 20
    keep = ~mask
    assert first.metrics["auc"] == pytest.approx(roc_auc_score(labels[keep], first.scores[keep]), abs=1e-12)


def test_secmi_nn_fits_reproducibly_and_records_its_training(small):
    _, _, ids, labels, _ = small
    attack = SecMINN(epochs=3, width=8, validation=0.25)
    features = features_of(attack, small)
    protocol = Protocol(calibration=0.5, bootstrap=0)
    mask = roles(ids, labels, protocol)
    deterministic = torch.are_deterministic_algorithms_enabled()
    first = apply(attack, features, labels, mask, protocol)
    assert torch.are_deterministic_algorithms_enabled() == deterministic  # the caller's setting comes back
    again = apply(SecMINN(epochs=3, width=8, validation=0.25), features, labels, mask, protocol)
    other = apply(SecMINN(epochs=3, width=8, validation=0.25, seed=1), features, labels, mask, protocol)
    np.testing.assert_array_equal(first.scores, again.scores)
    assert first.chosen == again.chosen and not np.array_equal(first.scores, other.scores)
    chosen = first.chosen
    assert [h["epoch"] for h in chosen["history"]] == [0, 1, 2]
    assert (chosen["n_fit"], chosen["n_validation"]) == (30, 10)
    losses = [h["validation_loss"] for h in chosen["history"]]
    assert chosen["best_epoch"] == int(np.argmin(losses))
    # The memoriser's residuals separate members at once: the classifier must find it on held-out rows.
    assert first.metrics["auc"] > 0.9


@pytest.mark.parametrize(("make", "message"), [
    (lambda: LearnedAttack(features="pixels"), "attack.features must be one of"),
    (lambda: LearnedAttack(features="na", source={"t_sec": 100}), r"attack.source.t_sec is not a setting"),
    (lambda: LearnedAttack(features="na", source={"seed": 3}), r"noise seed is attack.seed"),
    (lambda: LearnedAttack(features="na", source={"k": 1}), "attack.k must be"),
    (lambda: LearnedAttack(features="loss_multi_t", source={"timesteps": []}), "attack.source.timesteps"),
    (lambda: LearnedAttack(features="loss_multi_t", source={"t": 10}), "not attack.source.t"),
    (lambda: LearnedAttack(classifier="forest"), "attack.classifier must be one of"),
    (lambda: LearnedAttack(validation=1.0), "attack.validation"),
    (lambda: SecMINN(architecture="vit"), "attack.architecture must be one of"),
    (lambda: SecMINN(t_sec=95), "attack.t_sec must be a positive multiple"),
    (lambda: SecMINN(epochs=0), "attack.epochs must be an integer ≥ 1, got 0"),
])
def test_bad_settings_are_refused(make, message):
    with pytest.raises(MiaError, match=message):
        make()


def test_too_few_calibration_rows_to_validate_are_refused():
    with pytest.raises(MiaError, match="too few to fit on and to validate"):
        LearnedAttack().fit(torch.zeros(3, 4), torch.tensor([1, 0, 0]))


def test_every_feature_set_names_its_columns(small):
    for name in FEATURE_SETS:
        attack = LearnedAttack(features=name)
        assert len(attack._set.columns((1, 8, 8))) == features_of(attack, small).shape[1]


def _run(target: Path, out: Path, *overrides: str) -> dict:
    cfg = compose_config("attack", [f"target.path={target}", "logger=none", "metrics.bootstrap=0",
                                    "trainer.enable_progress_bar=false", f"cache.dir={out.parent}/cache",
                                    *overrides], out)
    return run(cfg)


def _evaluation_rows(out: Path) -> tuple[list[int], list[float], int]:
    with open(out / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    evaluation = [r for r in rows if r["role"] == "evaluation"]
    calibration = sum(r["role"] == "calibration" for r in rows)
    return [int(r["label"]) for r in evaluation], [float(r["score"]) for r in evaluation], calibration


def test_secmi_nn_end_to_end(tiny_target: Path, tmp_path: Path):
    metrics = _run(tiny_target, tmp_path / "nn", "attack=secmi_nn", "attack.epochs=2", "attack.width=8")
    labels, scores, calibration = _evaluation_rows(tmp_path / "nn")
    assert calibration == metrics["n_calibration"] == 10  # null = 0.2 of 24 members and of 24 non-members
    assert metrics["queries_per_sample"] == 12  # SecMI's round trip: 10 inversion steps, one up, one down
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    stored = json.loads((tmp_path / "nn" / "metrics.json").read_text())
    assert stored["calibration"]["architecture"] == "cnn" and len(stored["calibration"]["history"]) == 2


def test_learned_on_na_end_to_end_and_refit_from_the_cache(tiny_target: Path, tmp_path: Path):
    metrics = _run(tiny_target, tmp_path / "xgb", "attack=learned", "attack.features=na", "protocol.calibration=0.25")
    labels, scores, calibration = _evaluation_rows(tmp_path / "xgb")
    assert calibration == metrics["n_calibration"] == 12
    assert metrics["queries_per_sample"] == 5 and metrics["queries_per_sample_this_run"] == 5
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics["calibration"]["classifier"] == "xgboost" and len(metrics["calibration"]["features"]) == 16
    # Another classifier over the same features: read from the cache, no model queries, the same cost reported.
    again = _run(tiny_target, tmp_path / "hgb", "attack=learned", "attack.features=na", "protocol.calibration=0.25",
                 "attack.classifier=hist_gradient_boosting")
    assert again["queries_per_sample"] == 5 and again["queries_per_sample_this_run"] == 0
    assert again["calibration"]["classifier"] == "hist_gradient_boosting"


def test_a_learned_attack_without_calibration_is_refused(tiny_target: Path, tmp_path: Path):
    with pytest.raises(MiaError, match="something is fitted"):
        _run(tiny_target, tmp_path / "none", "attack=learned", "protocol.calibration=0")


@pytest.mark.slow
def test_secmi_nn_resnet18_end_to_end(tiny_target: Path, tmp_path: Path):
    metrics = _run(tiny_target, tmp_path / "resnet", "attack=secmi_nn", "attack.architecture=resnet18",
                   "attack.epochs=3", "protocol.calibration=0.5")
    assert metrics["calibration"]["parameters"] > 11_000_000 and metrics["n_calibration"] == 24
    assert metrics["queries_per_sample"] == 12
