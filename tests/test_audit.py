"""Dataset inference (mia-audit): the test's statistics, its false-alarm control, the verdicts, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config, write_images
from scipy.stats import ttest_ind

from mia.audit.inference import InferenceSettings, infer, one_test, permutation_greater, set_sizes, welch_greater
from mia.errors import MiaError
from mia.runs.attack import run as attack
from mia.runs.audit import run as audit

QUICK = ["logger=none", "trainer.enable_progress_bar=false", "trainer=cpu", "audit.resamples=20",
         "audit.permutations=200"]
FEW = ["~audit.features.loss_t50", "~audit.features.loss_t300", "~audit.features.pian", "~audit.features.secmi"]


def test_the_tests_are_scipys_welch_and_a_one_sided_permutation_test():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 1, 40), rng.normal(0, 2, 60)
    assert welch_greater(a, b) == pytest.approx(ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
    assert welch_greater(b + 5, a) < 1e-6 and welch_greater(a, b + 5) > 1 - 1e-6
    assert permutation_greater(b + 5, a, 200, rng) == pytest.approx(1 / 201)  # no permutation beats it
    assert 0.2 < permutation_greater(a, a.copy(), 200, rng) <= 1.0


def test_shifted_suspects_are_found_and_the_control_stays_calibrated():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(300, 11))
    suspect = rng.normal(size=(60, 11)) + np.r_[1.5, np.zeros(10)]  # one informative feature of eleven
    result = infer(suspect, reference, InferenceSettings(resamples=30, permutations=200, sizes=[10, 30]))
    assert [s.n for s in result.sizes] == [10, 30, 60] and [s.n for s in result.control] == [10, 30, 60]
    records = [s.record(0.01) for s in result.sizes]
    # 60 suspects: the shift is found; 200 permutations cannot say less than p = 2 × 1/201
    assert records[-1]["p_value"] == 2 / 201 and records[-1]["median_p_welch"] < 1e-3
    assert records[-1]["reference"] == 300
    assert records[0]["p_value"] > records[-1]["p_value"]  # and more surely with more
    control = np.concatenate([s.welch for s in result.control])
    assert np.mean(control < 0.05) <= 0.10 and np.median(control) > 0.3  # spread over [0, 1], few false alarms


def test_the_split_scorer_is_calibrated_where_cross_fitting_is_not():
    """On pure noise (11 features, 30 suspects), the share of p-values below 0.05 with each scorer."""
    rng = np.random.default_rng(0)
    shares = {}
    for scorer in ("split", "crossfit"):
        settings = InferenceSettings(scorer=scorer, permutations=20)
        p = [one_test(rng.normal(size=(30, 11)), rng.normal(size=(30, 11)), settings, rng)[0] for _ in range(200)]
        shares[scorer] = np.mean(np.array(p) < 0.05)
    assert shares["split"] <= 0.08 < shares["crossfit"], shares  # docs/method.md quotes both


def test_sizes_run_up_to_every_suspect():
    assert set_sizes(None, 32) == [10, 20, 32] and set_sizes([5, 50], 32) == [5, 32] and set_sizes(None, 7) == [7]


def test_a_memorised_suspect_set_is_found_and_an_unused_one_is_not(tiny_target: Path, tmp_path: Path):
    base = [f"target.path={tiny_target}", "target=memorizer", *QUICK, *FEW]
    used = audit(compose_config("audit", [*base, "data.suspect_count=12"], tmp_path / "used"))
    assert used["verdict"]["claim"] == "evidence" and used["verdict"]["median_p"] < 0.01
    assert used["suspect"]["members_among_them"] == 12 and used["reference"]["count"] == 24
    assert used["verdict"]["control_false_alarms"] <= 0.10
    assert (tmp_path / "used" / "audit.json").is_file() and (tmp_path / "used" / "pvalue_vs_size.png").is_file()
    unused = audit(compose_config("audit", [*base, "data.suspect_from=nonmembers", "data.suspect_count=12"],
                                  tmp_path / "unused"))
    assert unused["verdict"]["claim"] == "no evidence" and unused["suspect"]["members_among_them"] == 0
    assert unused["reference"]["count"] == 12  # the non-members that are not suspects
    saved = json.loads((tmp_path / "used" / "audit.json").read_text())
    assert saved["verdict"] == used["verdict"] and saved["features"] == used["features"]


def test_features_come_through_the_cache_of_an_earlier_attack(tiny_target: Path, tmp_path: Path):
    cache = f"cache.dir={tmp_path}/cache"
    attack(compose_config("attack", [f"target.path={tiny_target}", "attack=sima", "attack.t=100", "logger=none",
                                     "trainer.enable_progress_bar=false", "trainer=cpu", cache], tmp_path / "a"))
    only_sima = ["~audit.features." + name for name in ("loss_t50", "loss_t100", "loss_t200", "loss_t300", "pia",
                                                         "pian", "secmi", "na", "na_magnitude")]
    record = audit(compose_config("audit", [f"target.path={tiny_target}", *QUICK, *only_sima, cache,
                                            "data.suspect_count=6"], tmp_path / "audit"))
    assert record["features"] == ["sima"] and record["queries_per_sample"] == 1 and record["queries_this_run"] == 0


def test_a_black_box_audit_calls_only_the_pipeline_and_counts_its_generations(tiny_target: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch):
    from mia.targets.base import DiffusionTarget

    def refused(*args, **kwargs):
        raise AssertionError("a black-box feature called predict_noise")

    monkeypatch.setattr(DiffusionTarget, "predict_noise", refused)
    record = audit(compose_config("audit", [f"target.path={tiny_target}", *QUICK, "features=blackbox",
                                            "audit.features.rediffuse.n=2", "data.suspect_count=6"],
                                  tmp_path / "audit"))
    assert record["features"] == ["rediffuse"] and "text-conditional" in record["features_skipped"]["reconstruction"]
    assert record["generation_calls_per_sample"] == 2  # n variations per sample, each one call
    assert record["queries_per_sample"] == 2 * 2  # int(10 steps x strength 0.2) = 2 denoiser steps per variation
    assert record["verdict"]["claim"] in ("evidence", "no evidence", "none")


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.suspect_count=3"], "the suspect set holds 3 samples, fewer than the 4 the scorer needs"),
    (["data.suspect_count=12", "data.max_nonmembers=6"], "the reference set holds 6 samples"),
    (["data.suspect_count=100"], "data.suspect_count=100 asks for more suspects than the split's 24 members"),
    (["data.suspect_from=everyone"], "data.suspect_from must be members or nonmembers"),
    (["audit.alpha=1.5"], "audit.alpha must be a finite number in (0.0, 1.0)"),
    (["audit.folds=1"], "audit.folds must be an integer ≥ 2"),
    (["audit.scorer=magic"], "audit.scorer must be one of split, crossfit"),
    (["+audit.features.sima.tee=3"], "audit.features.sima.tee is not a setting of the sima attack"),
])
def test_bad_audits_are_one_line(tiny_target: Path, tmp_path: Path, overrides, message):
    with pytest.raises(MiaError, match=re.escape(message)):
        audit(compose_config("audit", [f"target.path={tiny_target}", *QUICK, *overrides], tmp_path))


def test_an_overlap_of_the_two_folders_or_one_folder_alone_is_refused(tiny_target: Path, tmp_path: Path):
    write_images(tmp_path / "suspect", 6, (8, 8), seed=0)
    write_images(tmp_path / "reference", 12, (8, 8), seed=0)  # the same first six images, and six more
    folders = [f"data.suspect={tmp_path}/suspect", f"data.reference={tmp_path}/reference"]
    with pytest.raises(MiaError, match=r"reference images are pixel copies of suspect images"):
        audit(compose_config("audit", [f"target.path={tiny_target}", *QUICK, *folders, "data.image_size=8"],
                             tmp_path / "run"))
    with pytest.raises(MiaError, match=r"give both data\.suspect and data\.reference"):
        audit(compose_config("audit", [f"target.path={tiny_target}", *QUICK, folders[0]], tmp_path / "run"))
