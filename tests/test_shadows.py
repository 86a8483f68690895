"""Shadow models: splits drawn from a target's samples (split.pool), protocol=shadow, LiRA (attack.calibration=shadows).

Targets and shadows are closed-form memorisers of 8 px digits (no training), each labelled by a real split drawn
as mia-train draws it; one test trains two tiny shadows with mia-train and attacks through mia-attack's config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, compose_config
from diffusers import DDPMScheduler

import mia
from mia.attacks.learned import LearnedAttack
from mia.attacks.loss import LossAttack
from mia.attacks.secmi_nn import SecMINN
from mia.data.duplicates import candidates, draw_distinct_split
from mia.data.evaluation_set import from_split
from mia.data.images import to_model_range
from mia.data.pools import DigitsPool
from mia.data.split import Split
from mia.errors import MiaError
from mia.evaluation.lira import IN, OUT, UNKNOWN, leave_one_out, lira
from mia.evaluation.shadows import fit_on_shadows
from mia.reporting.console import format_metrics
from mia.runs.attack import run
from mia.targets.memorizer import memorizing_target

DATA = {"name": "digits", "image_size": 8, "channels": 1}
SCHEDULE = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod
QUICK = dict(protocol=mia.Protocol(bootstrap=0), scoring=mia.ScoringSettings(mia.trainer_factory(accelerator="cpu")))


def memoriser_of(split: Split, members: torch.Tensor, name: str, alphas: torch.Tensor = SCHEDULE):
    model = memorizing_target(to_model_range(members), alphas)
    model.kind, model.source, model.split = "memorizer", name, split
    return model


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, one_thread):
    """A memorised target of 30 of 60 digits, and 10 memorised shadows, each on a seeded half of those 60."""
    pool = DigitsPool(image_size=8)
    split, members, _ = draw_distinct_split(pool, DATA, 30, 30, seed=0)
    path = tmp_path_factory.mktemp("target") / "split.json"
    split.save(path)
    shadows = []
    for seed in range(1, 11):  # seeds under which every sample is in 2 shadows or more and out of 2 or more
        within = candidates(str(path), pool, DATA)
        own, own_members, _ = draw_distinct_split(pool, DATA, 30, 30, seed=seed, within=within)
        shadows.append(memoriser_of(own, own_members, f"shadow{seed}"))
    return memoriser_of(split, members, "target"), shadows, from_split(split), path, pool


def test_shadow_splits_come_from_the_targets_samples_disjoint_and_without_its_labels(world):
    target, shadows, _, path, pool = world
    samples = set(target.split.members) | set(target.split.nonmembers)
    for shadow in shadows:
        members, nonmembers = set(shadow.split.members), set(shadow.split.nonmembers)
        assert not members & nonmembers and len(members) == len(nonmembers) == 30  # its in and out never overlap
        assert members | nonmembers == samples  # drawn from the target's samples only: each in or out of it
        assert shadow.split.drawn_from["split"] == str(path) and shadow.split.drawn_from["samples"] == 60
    assert len({tuple(s.split.members) for s in shadows}) == len(shadows)  # each seed its own draw
    # The draw depends on which samples the target has, not on how it labelled them.
    relabelled = dataclasses.replace(target.split, members=target.split.nonmembers, nonmembers=target.split.members)
    relabelled.save(path.parent / "relabelled.json")
    within = candidates(str(path.parent / "relabelled.json"), pool, DATA)
    again, _, _ = draw_distinct_split(pool, DATA, 30, 30, seed=1, within=within)
    assert again.members == shadows[0].split.members and again.nonmembers == shadows[0].split.nonmembers
    Split.load(path.parent / "relabelled.json")  # a valid record
    with pytest.raises(MiaError, match=r"split\.pool: .* not of cifar10"):
        candidates(str(path), pool, {**DATA, "name": "cifar10"})


def scrambled(evalset):
    """The same samples with their labels permuted: what a run must not read before it measures."""
    copy = evalset.subset(range(len(evalset)))
    copy.labels = copy.labels[torch.randperm(len(copy), generator=torch.Generator().manual_seed(1))]
    copy.record = dict(evalset.record)
    return copy


@pytest.mark.parametrize("attack", [
    LossAttack(t=5),
    LearnedAttack(features="loss_multi_t", n_estimators=20),
    SecMINN(t_sec=20, interval=10, epochs=2, width=8),
    LossAttack(t=5, calibration="shadows"),
], ids=["loss", "learned", "secmi_nn", "loss_lira"])
def test_the_targets_labels_are_never_read_under_the_shadow_protocol(world, attack):
    target, shadows, evalset, _, _ = world
    first = mia.run_attack(target, attack, evalset=evalset, shadows=shadows, **QUICK)
    second = mia.run_attack(target, dataclasses.replace(attack), evalset=scrambled(evalset), shadows=shadows, **QUICK)
    assert not np.array_equal(first.labels, second.labels) and first.metrics["auc"] != second.metrics["auc"]
    np.testing.assert_array_equal(first.scores, second.scores)  # classifier outputs, orientation, LiRA: all unchanged
    assert first.metrics.get("calibration") == second.metrics.get("calibration")  # what the attack's fit chose
    fitted = {k: v for k, v in first.metrics["shadows"].items() if k not in ("target_at_threshold", "seconds")}
    assert fitted == {k: v for k, v in second.metrics["shadows"].items() if k not in ("target_at_threshold", "seconds")}
    assert fitted["orientation"] in (1.0, -1.0)
    assert "threshold" in fitted  # LiRA's: each shadow scored by the 9 others
    assert first.metrics["n_calibration"] == 0 and first.metrics["n_members"] + first.metrics["n_nonmembers"] == 60
    if attack.learns_from_labels:
        assert first.metrics["calibration"]  # the attack's fit ran, on the shadows' 10 x 60 rows
    models = first.metrics["shadows"]["models"]
    assert [m["source"] for m in models] == [s.source for s in shadows]
    assert all(m["split_digest"].startswith("sha256:") and m["in"] == m["out"] == 30 for m in models)
    # The shadows' queries are counted apart: the target's per-sample cost is the attack's own.
    assert first.metrics["shadows"]["queries_per_sample"] == 10 * first.metrics["queries_per_sample"]


def test_lira_on_the_memoriser_puts_members_above_non_members(world):
    target, shadows, evalset, _, _ = world
    result = mia.run_attack(target, LossAttack(t=5, calibration="shadows"), evalset=evalset, shadows=shadows, **QUICK)
    record = result.metrics["shadows"]["lira"]
    assert record["shadows"] == 10 and record["mode"] == "online" and record["in_per_sample"]["min"] >= 1
    members, nonmembers = result.scores[result.labels == 1], result.scores[result.labels == 0]
    assert result.metrics["auc"] > 0.95 and np.median(members) > np.median(nonmembers)


def test_lira_online_and_offline_by_hand():
    # Sample 0: in-shadows score ~2, out-shadows ~0; the target scores 2 (member-like) on it and 0 on sample 1.
    shadow = np.array([[2.0, 0.1], [0.1, 2.1], [1.9, -0.1], [-0.1, 1.9]])
    rows = np.array([[IN, OUT], [OUT, IN], [IN, OUT], [OUT, IN]])
    scores, record = lira(np.array([2.0, 0.0]), shadow, rows)
    assert record["mode"] == "online" and scores[0] > 0 > scores[1]
    sigma = record["sigma_in"]
    from scipy.stats import norm
    expected = norm.logpdf(2.0, 1.95, sigma) - norm.logpdf(2.0, 0.0, record["sigma_out"])
    assert scores[0] == pytest.approx(expected)
    # Without in-shadows for sample 1: offline, one-sided against the out-scores for every sample.
    rows_offline = np.array([[IN, OUT], [OUT, OUT], [IN, OUT], [OUT, OUT]])
    offline, record = lira(np.array([2.0, 0.0]), shadow, rows_offline)
    assert record["mode"] == "offline" and offline[0] > offline[1]
    flipped, _ = lira(np.array([2.0, 0.0]), shadow, rows_offline, orientation=-1.0)
    assert flipped[0] < flipped[1]  # the one side is the one the shadows showed members lie on
    with pytest.raises(MiaError, match="1 evaluation samples are held out by no shadow model"):
        lira(np.array([2.0, 0.0]), shadow, np.array([[IN, OUT], [IN, IN], [IN, OUT], [IN, IN]]))


def test_leave_one_shadow_out_leaves_out_the_rows_the_others_cannot_score():
    # Sample 2 is in shadows 1 and 2: scoring shadow 0 from those two, no model held it out; it is left out of
    # shadow 0's rows (not the whole threshold), and kept for shadows 1 and 2, whose others include shadow 0.
    shadow = np.array([[0.0, 1.0, 0.2], [1.1, 0.1, 2.0], [0.1, 0.9, 2.1]])
    rows = np.array([[OUT, IN, OUT], [IN, OUT, IN], [OUT, OUT, IN]])
    scores, labels = leave_one_out(shadow, rows, 1.0, "offline")
    assert len(scores) == len(labels) == 2 + 3 + 3 and np.isfinite(scores).all()
    assert list(labels[:2]) == [OUT, IN]  # shadow 0's samples 0 and 1
    with pytest.raises(MiaError, match="no shadow's samples can be scored by offline LiRA"):
        leave_one_out(shadow[:, 2:], rows[:, 2:] * 0 + IN, 1.0, "offline")


class LookupTable:
    """A fitted attack that memorises its training rows: perfect on them, no better than chance on any other."""

    name, learns_from_labels = "lookup", True

    def __init__(self):
        self.fitted_on: list[set[float]] = []

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> dict:
        self.table = dict(zip(features[:, 0].tolist(), labels.tolist(), strict=True))
        self.fitted_on.append(set(self.table))
        return {"rows": len(self.table)}

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tensor([float(self.table.get(x, 0.5)) for x in features[:, 0].tolist()], dtype=torch.float64)


def test_a_fitted_attack_chooses_its_threshold_on_shadows_it_was_not_fitted_on():
    # 4 shadows x 20 samples; every (shadow, sample) row has its own feature, so the lookup table knows a row only
    # when it was fitted on it. In-sample it separates the shadows perfectly; cross-fitted it cannot.
    rng = np.random.default_rng(0)
    rows = np.stack([rng.permutation([IN] * 10 + [OUT] * 10) for _ in range(4)])
    rows[2, :3] = UNKNOWN  # samples outside shadow 2's split are fitted on by no one
    features = [np.arange(20, dtype=np.float64)[:, None] + 100 * k for k in range(4)]
    attack = LookupTable()
    fitted = fit_on_shadows(attack, np.full((20, 1), -1.0), features, rows, lira_calibration=False)
    assert len(attack.fitted_on) == 5  # one fit per left-out shadow, then the final one on all four
    for k, seen in enumerate(attack.fitted_on[:4]):
        own = set(features[k][rows[k] != UNKNOWN, 0].tolist())
        assert not seen & own and len(seen) == 3 * 20 - (3 if k != 2 else 0)  # the other shadows' known rows
    assert len(attack.fitted_on[4]) == 4 * 20 - 3
    record = fitted.record
    assert record["auc_on_shadows_in_sample"] == 1.0
    assert record["auc_on_shadows"] == 0.5 and record["auc_per_shadow"] == [0.5] * 4
    assert record["balanced_accuracy_on_shadows"] == 0.5  # the threshold's, measured where it was chosen
    assert "cross_fitted" in record and fitted.chosen == {"rows": 77}
    printed = format_metrics({"shadows": {**record, "models": [{}] * 4, "queries_per_sample": 4}})
    assert "AUC on them 0.5000 leaving each out, 1.0000 in-sample" in printed


def test_too_few_shadows_or_another_recipe_is_refused(world, tmp_path: Path):
    target, shadows, evalset, _, _ = world
    with pytest.raises(MiaError, match="needs at least 2 shadow models, got 1"):
        mia.run_attack(target, LossAttack(t=5), evalset=evalset, shadows=shadows[:1], **QUICK)
    other = DDPMScheduler(beta_schedule="scaled_linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod
    wrong = memoriser_of(shadows[1].split, torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "cosine", other)
    with pytest.raises(MiaError, match="shadow model cosine has another noise schedule"):
        mia.run_attack(target, LossAttack(t=5), evalset=evalset, shadows=[shadows[0], wrong], **QUICK)
    bigger = memoriser_of(shadows[1].split, torch.zeros(2, 1, 16, 16, dtype=torch.uint8), "big")
    with pytest.raises(MiaError, match=r"shadow model big takes inputs of shape \[1, 16, 16\]"):
        mia.run_attack(target, LossAttack(t=5), evalset=evalset, shadows=[shadows[0], bigger], **QUICK)
    with pytest.raises(MiaError, match=r"attack\.calibration=shadows is LiRA on shadow models"):
        mia.run_attack(target, LossAttack(t=5, calibration="shadows"), evalset=evalset, **QUICK)
    with pytest.raises(MiaError, match=r"protocol\.calibration=0\.2 would set target samples aside"):
        mia.run_attack(target, LossAttack(t=5), evalset=evalset, shadows=shadows,
                       protocol=mia.Protocol(calibration=0.2))
    with pytest.raises(MiaError, match="needs at least 2 shadow models, got 1"):
        run(compose_config("attack", ["target.path=x", "protocol=shadow", "protocol.shadows=[x]", "logger=none"],
                           tmp_path))
    with pytest.raises(MiaError, match=r"protocol\.shadows is set but the protocol is not protocol=shadow"):
        run(compose_config("attack", ["target.path=x", "protocol.shadows=[x,y]", "logger=none"], tmp_path))


def test_mia_train_shadows_and_mia_attack_protocol_shadow(tiny_target: Path, tmp_path: Path):
    """Two tiny shadows trained by mia-train on the tiny target's samples, then the CLI's protocol=shadow."""
    from train_targets.train import train

    for seed in (1, 2):
        train(compose_config("train", [*TINY_TRAIN, f"split.pool={tiny_target}/split.json", f"split.seed={seed}",
                                       f"seed={seed}", f"export_dir={tmp_path}/shadow{seed}/target"],
                             tmp_path / f"train{seed}"))
    shadow = Split.load(tmp_path / "shadow1" / "target" / "split.json")
    target = Split.load(tiny_target / "split.json")
    assert set(shadow.members) | set(shadow.nonmembers) == set(target.members) | set(target.nonmembers)
    metrics = run(compose_config("attack", [
        f"target.path={tiny_target}", "attack=loss", "protocol=shadow", f"protocol.shadows=[{tmp_path}/shadow*/target]",
        "logger=none", "metrics.bootstrap=0", "trainer=cpu", "trainer.enable_progress_bar=false"], tmp_path / "attack"))
    assert [Path(m["source"]).parent.name for m in metrics["shadows"]["models"]] == ["shadow1", "shadow2"]
    assert metrics["n_calibration"] == 0 and metrics["shadows"]["queries_per_sample"] == 2
    assert "2 shadow models" in format_metrics(metrics) and "no target label used" in format_metrics(metrics)
    # GSA's classifier fits on the shadows' gradient features: backward passes counted on the shadows as on the target.
    gsa = run(compose_config("attack", [
        f"target.path={tiny_target}", "attack=gsa1", "attack.k=2", "attack.n_estimators=5", "protocol=shadow",
        f"protocol.shadows=[{tmp_path}/shadow*/target]", "logger=none", "metrics.bootstrap=0", "trainer=cpu",
        "trainer.enable_progress_bar=false"], tmp_path / "gsa"))
    assert gsa["calibration"] and gsa["n_calibration"] == 0 and gsa["shadows"]["fitted_rows"] == 2 * 48
    assert gsa["gradient_passes_per_sample"] == 2 and gsa["shadows"]["queries_per_sample"] == 2 * 2
    assert gsa["shadows"]["gradient_passes_per_sample"] == 2 * 2
