"""Tuning by successive halving: the grid's choice, at most the cost the rungs allow, only calibration samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config

import mia
import mia.tuning.halving as halving
from mia.api import trainer_factory
from mia.attacks.loss import LossAttack
from mia.errors import MiaError
from mia.runs.attack import run
from mia.scoring.engine import ScoringSettings
from mia.tuning.halving import kept_count, rung_sizes

# t = 10 separates the memoriser's members perfectly (AUC 1.0); 300 reaches ~0.93, the others ~0.5.
# It is not first in grid order, so the choice is the criterion's, not the tie rule's.
LOSS_GRID = {"t": [990, 600, 300, 10, 900, 800]}


def test_rungs_double_up_to_the_whole_set_and_keep_a_fraction():
    assert rung_sizes(144, 144, 16) == [(18, 18), (36, 36), (72, 72), (144, 144)]
    assert rung_sizes(100, 60, 8) == [(13, 8), (25, 15), (50, 30), (100, 60)]  # the smaller class sets the rungs
    assert rung_sizes(10, 10, 16) == [(10, 10)]  # too few samples to halve: the grid itself
    assert [kept_count(n, 1 / 3) for n in (54, 18, 6, 2, 1)] == [18, 6, 2, 1, 1]
    assert kept_count(7, 0.5) == 4


def _tuned(digits_memorizer, search: str, **options):
    target, evalset = digits_memorizer
    scoring = ScoringSettings(trainer_factory(accelerator="cpu"), batch_size=100)
    return mia.run_attack(target, LossAttack(), evalset=evalset, scoring=scoring, blind_control=False,
                          protocol=mia.Protocol(calibration=0.5, bootstrap=0),
                          tune={"grid": LOSS_GRID, "criterion": "auc", "search": search, **options})


def test_halving_picks_the_grids_clear_winner_at_the_cost_its_rungs_allow(digits_memorizer, monkeypatch):
    seen: list[list[str]] = []
    predict = halving.predict

    def recording(attack, target, part, settings):
        seen.append(list(part.ids))
        return predict(attack, target, part, settings)

    monkeypatch.setattr(halving, "predict", recording)
    grid = _tuned(digits_memorizer, "grid").metrics["tuning"]
    result = _tuned(digits_memorizer, "halving", min_samples=8)
    tuning = result.metrics["tuning"]
    assert grid["chosen"] == tuning["chosen"] == {"t": 10}
    # Only calibration samples were queried while choosing, and a kept setting never re-queries a sample.
    calibration = {result.ids[i] for i in np.flatnonzero(result.calibration)}
    assert len(calibration) == 200 and set().union(*map(set, seen)) == calibration
    # 100 members and 100 non-members: rungs of 13+13, 25+25, 50+50, 100+100 samples; 6 -> 2 -> 1 -> 1 settings.
    assert [r["samples"] for r in tuning["rungs"]] == [26, 50, 100, 200]
    assert [r["settings"] for r in tuning["rungs"]] == [6, 2, 1, 1]
    added = [26, 24, 50, 100]  # the samples each rung adds; one query each (loss, one draw) per setting alive
    assert [r["queries"] for r in tuning["rungs"]] == [s * a for s, a in zip([6, 2, 1, 1], added, strict=True)]
    assert tuning["calibration_queries"] == 6 * 26 + 2 * 24 + 50 + 100 == 354
    assert tuning["grid_calibration_queries"] == grid["calibration_queries"] == 6 * 200
    assert tuning["calibration_queries"] <= grid["calibration_queries"] / 3
    assert tuning["calibration_value"] == grid["calibration_value"] == 1.0
    # The winner's calibration scores are the grid's (per-sample noise: the same samples, the same scores).
    np.testing.assert_array_equal(result.scores, _tuned(digits_memorizer, "grid").scores)


def test_halving_is_seeded_and_deterministic(digits_memorizer):
    first = _tuned(digits_memorizer, "halving", min_samples=8, seed=3).metrics["tuning"]
    again = _tuned(digits_memorizer, "halving", min_samples=8, seed=3).metrics["tuning"]
    other = _tuned(digits_memorizer, "halving", min_samples=8, seed=4).metrics["tuning"]
    assert first == again
    assert first["grid"] != other["grid"]  # another seed draws other first rungs, so other early values
    assert other["chosen"] == first["chosen"]


@pytest.mark.parametrize(("options", "message"), [
    ({"search": "random"}, "tune.search must be one of grid, halving"),
    ({"search": "halving", "keep": 1.0}, "tune.keep must be a fraction in"),
    ({"search": "halving", "min_samples": 0}, "tune.min_samples"),
    ({"search": "halving", "rungs": 3}, "tune.rungs is not a setting of tuning"),
])
def test_bad_halving_settings_are_refused_in_one_line(digits_memorizer, options, message):
    target, evalset = digits_memorizer
    with pytest.raises(MiaError, match=message):
        mia.run_attack(target, LossAttack(), evalset=evalset.first(20), blind_control=False,
                       protocol=mia.Protocol(calibration=0.5, bootstrap=0), tune={"grid": LOSS_GRID, **options})


def test_halving_from_the_command_line_counts_shared_predictions_once(tiny_target: Path, tmp_path: Path):
    # NA's statistic shares predictions: 4 groups (t x noise_scale) of 2 settings, k = 5 queries a sample.
    overrides = [f"target.path={tiny_target}", "logger=none", "metrics.bootstrap=0",
                 "trainer.enable_progress_bar=false", f"cache.dir={tmp_path}/cache", "attack=na", "tune=na_grid",
                 "tune.search=halving",
                 "tune.min_samples=3", "protocol.calibration=0.5", "tune.grid.t=[40,60]",
                 "~tune.grid.injection.absolute", "tune.grid.injection.schedule.noise_scale=[0.1,1.0]",
                 "tune.grid.statistic=[pairwise_l2,centroid]",
                 "tune.grid.direction=[down]"]
    metrics = run(compose_config("attack", overrides, tmp_path))
    tuning = metrics["tuning"]
    assert tuning["search"] == "halving" and metrics["n_calibration"] == 24
    assert tuning["grid_calibration_queries"] == 4 * 5 * 24  # what tune.search=grid spends here
    # 12 members and 12 non-members: rungs of 3+3, 6+6, 12+12; 8 -> 3 -> 1 settings, at most 4 groups alive.
    assert [r["samples"] for r in tuning["rungs"]] == [6, 12, 24]
    bound = 5 * (4 * 6 + min(4, 3) * 6 + 1 * 12)
    assert tuning["calibration_queries"] == sum(r["queries"] for r in tuning["rungs"]) <= bound
    assert json.loads((tmp_path / "metrics.json").read_text())["tuning"]["rungs"] == tuning["rungs"]
