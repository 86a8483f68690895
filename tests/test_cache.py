"""The prediction cache: keyed on the code that makes predictions, bounded in size, none without a target identity."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import signal
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

import mia.scoring.cache_key as cache_key
from mia.attacks import NoiseAggregation, SimA
from mia.data.images import to_model_range
from mia.errors import MiaError
from mia.scoring.cache import PredictionCache, evict
from mia.scoring.engine import ScoringSettings, predict
from mia.targets.base import DiffusionTarget
from mia.targets.memorizer import MemorizingDenoiser


def cpu_trainer(*callbacks: L.Callback) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_checkpointing=False, enable_model_summary=False, callbacks=list(callbacks))


def settings(cache: Path | None, **kwargs) -> ScoringSettings:
    return ScoringSettings(cpu_trainer, batch_size=8, cache_dir=str(cache) if cache else None, **kwargs)


@pytest.fixture
def small(digits_memorizer):
    target, evalset = digits_memorizer
    return target, evalset.first(6)  # 6 members, 6 non-members


def test_editing_a_source_on_the_prediction_path_misses_the_cache(small, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    target, evalset = small
    probe = tmp_path / "src" / "mia_probe_step.py"
    probe.parent.mkdir()
    probe.write_text("STEP = 1\n")
    monkeypatch.syspath_prepend(str(probe.parent))
    monkeypatch.setattr(cache_key, "FIXED_MODULES", (*cache_key.FIXED_MODULES, "mia_probe_step"))
    attack = NoiseAggregation(t=40, k=3)
    first = predict(attack, target, evalset, settings(tmp_path / "cache"))
    assert first.queries_this_run == 3 * 12
    assert predict(attack, target, evalset, settings(tmp_path / "cache")).queries_this_run == 0  # a hit
    probe.write_text("STEP = 2\n")  # the code on the prediction path changed: same size, other bytes
    again = predict(attack, target, evalset, settings(tmp_path / "cache"))
    assert again.queries_this_run == 3 * 12
    np.testing.assert_array_equal(again.features, first.features)


def test_the_key_names_the_prediction_code_and_the_libraries(small):
    target, evalset = small
    path = set(cache_key.prediction_path(NoiseAggregation(), target))
    assert {"mia.attacks.noise_aggregation", "mia.attacks.aggregation", "mia.attacks.base", "mia.attacks.moves",
            "mia.attacks.sample_noise", "mia.targets.base", "mia.targets.memorizer", "mia.targets.pipeline",
            "mia.data.images", "mia.data.evaluation_set", "mia.scoring.module", "mia.scoring.cache"} <= path
    assert not path & {"mia.evaluation.metrics", "mia.runs.attack", "mia.reporting.files", "mia.attacks.pia"}
    assert "mia.attacks.sima" in cache_key.prediction_path(SimA(), target)
    key = cache_key.cache_key(NoiseAggregation(), target, evalset, cpu_trainer(), "digest")
    for library in ("torch", "diffusers"):
        assert key["libraries"][library] == importlib.metadata.version(library)
    assert key["code"] == "digest" and key["target"] == target.identity and key["samples"] == evalset.digest
    # NA's statistic is computed from the predictions, so it is not part of their key; other attacks store scores.
    assert "statistic" not in key["settings"] and key["settings"] == NoiseAggregation().prediction_settings()
    assert cache_key.cache_key(SimA(), target, evalset, cpu_trainer(), "digest")["settings"]["t"] == SimA().t


def test_targets_without_identity_are_never_cached(small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture):
    memorizer, evalset = small
    monkeypatch.setattr(cache_key, "_said", set())
    images = to_model_range(evalset.stack())
    alphas = memorizer.alphas_cumprod

    def built_in_code(rows: slice) -> DiffusionTarget:  # no identity, as a target made in a script has
        return DiffusionTarget(MemorizingDenoiser(images[rows], alphas), alphas, tuple(images.shape[1:]))

    attack = NoiseAggregation(t=40, k=3)
    with caplog.at_level(logging.INFO, logger="mia.scoring.cache_key"):
        first = predict(attack, built_in_code(slice(0, 6)), evalset, settings(tmp_path / "cache"))
        second = predict(attack, built_in_code(slice(6, 12)), evalset, settings(tmp_path / "cache"))
    fresh = predict(attack, built_in_code(slice(6, 12)), evalset, settings(None))
    assert second.queries_this_run == 3 * 12
    np.testing.assert_array_equal(second.features, fresh.features)
    assert not np.array_equal(first.features, second.features)
    assert not (tmp_path / "cache").exists()
    assert sum("has no identity" in r.getMessage() for r in caplog.records) == 1  # said once


def _entry(root: Path, key: int, rows: int = 4) -> PredictionCache:
    cache = PredictionCache(root, {"k": key}, rows=rows, chunk_size=rows)
    cache.add(torch.arange(rows), torch.full((rows, 2000), float(key)), queries=rows)
    assert cache.finish()
    return cache


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(tmp_path: Path):
    a, b, c = (_entry(tmp_path, key) for key in (1, 2, 3))
    past = time.time() - 1000
    for age, entry in enumerate((a, b, c)):
        os.utime(entry.folder / "used", (past + age, past + age))
    PredictionCache(tmp_path, {"k": 1}, rows=4)  # reading a makes it the most recently used
    size = sum(p.stat().st_size for p in a.folder.rglob("*") if p.is_file())
    assert evict(tmp_path, 2.5 * size / 1e9, keep=c.folder) == [b.folder.name]
    assert a.folder.exists() and c.folder.exists()
    # The entry in use is never evicted, even when it alone is over the bound.
    assert evict(tmp_path, 1e-12, keep=a.folder) == [c.folder.name]
    assert torch.equal(PredictionCache(tmp_path, {"k": 1}, rows=4).read(torch.arange(4)), torch.full((4, 2000), 1.0))


def test_score_applies_max_gb_after_each_run(small, tmp_path: Path):
    target, evalset = small
    predict(NoiseAggregation(t=40, k=3), target, evalset, settings(tmp_path / "cache", max_gb=1e-9))
    kept = predict(SimA(), target, evalset, settings(tmp_path / "cache", max_gb=1e-9))
    [entry] = list((tmp_path / "cache").iterdir())  # only the entry of the latest run is left
    assert (entry / "meta.json").exists() and kept.queries_this_run == 12
    for bad in (0, -1.0, "big"):
        with pytest.raises(MiaError, match=r"cache\.max_gb must be a positive number"):
            predict(SimA(), target, evalset, settings(tmp_path / "cache", max_gb=bad))
    with pytest.raises(MiaError, match=r"cache\.chunk_size must be an integer ≥ 1"):
        predict(SimA(), target, evalset, settings(tmp_path / "cache", chunk_size=0))


def test_sigterm_stops_a_run_after_its_batch_and_a_rerun_computes_only_the_rest(small, tmp_path: Path):
    target, evalset = small  # 12 samples: 3 batches of 4

    class TermAfterFirstBatch(L.Callback):
        def on_predict_batch_end(self, trainer, *args, **kwargs) -> None:
            if not trainer.received_sigterm:
                # Lightning's own SIGTERM handler is installed for the run (else the signal would end pytest).
                assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
                os.kill(os.getpid(), signal.SIGTERM)  # delivered to this thread before the next hook runs

    def trainer(*callbacks: L.Callback) -> ScoringSettings:
        return ScoringSettings(lambda: cpu_trainer(*callbacks), batch_size=4, cache_dir=str(tmp_path / "cache"),
                               chunk_size=4)

    attack = NoiseAggregation(t=40, k=3)
    with pytest.raises(MiaError, match=r"stopped by SIGTERM; .* computes only the rest"):
        predict(attack, target, evalset, trainer(TermAfterFirstBatch()))
    resumed = predict(attack, target, evalset, trainer())
    assert resumed.queries_this_run == 3 * 8  # the first batch's 4 samples were kept
    whole = predict(attack, target, evalset, settings(None))
    np.testing.assert_array_equal(resumed.features, whole.features)
