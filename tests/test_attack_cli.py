"""mia-attack end to end on a tiny trained target: the output contract, W&B, and bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import wandb
from conftest import compose_config, write_images
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score, roc_curve

from mia.errors import MiaError
from mia.runs.attack import run

QUICK = ["logger=none", "metrics.bootstrap=50", "trainer.enable_progress_bar=false"]


def attack(target: Path, out: Path, *overrides: str) -> dict:
    return run(compose_config("attack", [f"target.path={target}", *QUICK, *overrides], out))


def read_scores(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    return ([r["id"] for r in rows], np.array([int(r["label"]) for r in rows]),
            np.array([float(r["score"]) for r in rows]))


def test_na_run_writes_the_output_contract(tiny_target: Path, tmp_path: Path):
    metrics = attack(tiny_target, tmp_path, "attack=na", "attack.t=40")
    for name in ("metrics.json", "scores.csv", "roc.png", "scores_histogram.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("attack", "auc", "asr", "asr_calibrated", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr",
                "queries_per_sample", "n_members", "n_nonmembers", "seconds", "auc_ci", "tpr_at_1pct_fpr_ci"):
        assert key in saved, key
    assert saved["attack"] == "na" and saved["settings"]["t"] == 40
    assert saved["queries_per_sample"] == 5
    assert saved["n_members"] == 24 and saved["n_nonmembers"] == 24

    ids, labels, _ = read_scores(tmp_path / "scores.csv")
    split = json.loads((tiny_target / "split.json").read_text())
    assert ids == split["members"] + split["nonmembers"]
    assert labels.tolist() == [1] * 24 + [0] * 24
    # What made it: the split's fingerprint and seed, checked labels, no duplicates, the target's digest.
    assert saved["provenance"]["split"] == {"fingerprint": split["dataset"]["fingerprint"], "seed": 0}
    assert saved["evaluation_set"]["labels_verified"] is True and saved["evaluation_set"]["duplicates"]["left_out"] == 0
    assert len(saved["provenance"]["target_identity"]) == 64


def test_queries_are_counted_not_declared(tiny_target: Path, tmp_path: Path):
    assert attack(tiny_target, tmp_path, "attack=na", "attack.t=40", "attack.k=3")["queries_per_sample"] == 3


def test_metrics_json_equals_sklearn_on_scores_csv(tiny_target: Path, tmp_path: Path):
    metrics = attack(tiny_target, tmp_path, "attack=na", "attack.t=40")
    _, labels, scores = read_scores(tmp_path / "scores.csv")
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert metrics["tpr_at_1pct_fpr"] == tpr[fpr <= 0.01].max()
    assert metrics["tpr_at_0.1pct_fpr"] == tpr[fpr <= 0.001].max()
    best = max(((scores >= t) == labels).mean() for t in np.r_[np.unique(scores), np.inf])
    assert metrics["asr"] == pytest.approx(best, abs=1e-12)


def test_same_seed_same_scores_csv(tiny_target: Path, tmp_path: Path):
    attack(tiny_target, tmp_path / "a", "attack=na", "attack.t=40")
    attack(tiny_target, tmp_path / "b", "attack=na", "attack.t=40")
    assert (tmp_path / "a/scores.csv").read_bytes() == (tmp_path / "b/scores.csv").read_bytes()
    # Another batching draws the same noise per sample; only float32 rounding in the UNet differs.
    attack(tiny_target, tmp_path / "c", "attack=na", "attack.t=40", "data.batch_size=7")
    first, third = read_scores(tmp_path / "a/scores.csv")[2], read_scores(tmp_path / "c/scores.csv")[2]
    np.testing.assert_allclose(first, third, rtol=1e-5)


def test_offline_wandb_run_holds_the_roc(tiny_target: Path, tmp_path: Path):
    attack(tiny_target, tmp_path, "attack=na", "attack.t=40", "logger=wandb", "report.top_k=3")
    wandb.teardown()  # run.finish() can return before W&B's service has written the record log read below
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = runs[0] / "files" / "media"
    roc_tables = list((media / "table").glob("roc_table_*.table.json"))
    assert roc_tables
    roc = json.loads(roc_tables[0].read_text())
    assert roc["columns"] == ["fpr", "tpr"] and roc["data"][0] == [0.0, 0.0] and roc["data"][-1] == [1.0, 1.0]
    samples = json.loads(next((media / "table").glob("extreme_samples_*.table.json")).read_text())
    assert len(samples["data"]) == 6 and samples["columns"][-1] == "image"
    assert list((media / "images").glob("roc_loglog_*.png"))
    # The run's config says what made it; offline, W&B keeps the config in the run's record log, where
    # each config item is stored as its key and a JSON text.
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"provenance" in log and b"target_identity" in log and b"libraries" in log


def test_memorizer_kind_attacks_the_closed_form_model(tiny_target: Path, tmp_path: Path):
    metrics = attack(tiny_target, tmp_path, "attack=sima", "target=memorizer")
    assert metrics["target_kind"] == "memorizer" and metrics["auc"] > 0.9


def test_limits_take_the_first_samples_of_the_split(tiny_target: Path, tmp_path: Path):
    metrics = attack(tiny_target, tmp_path, "attack=sima", "data.max_members=5", "data.max_nonmembers=7")
    assert metrics["n_members"] == 5 and metrics["n_nonmembers"] == 7


def test_folders_as_the_evaluation_set(tiny_target: Path, tmp_path: Path):
    pipeline = tmp_path / "pipeline"
    shutil.copytree(tiny_target, pipeline, ignore=shutil.ignore_patterns("split.json"))
    write_images(tmp_path / "in", 4, (20, 20), seed=0)
    write_images(tmp_path / "out", 5, (20, 20), seed=1)
    metrics = attack(pipeline, tmp_path / "run", "attack=sima", f"data.members={tmp_path}/in",
                     f"data.nonmembers={tmp_path}/out")
    assert metrics["n_members"] == 4 and metrics["n_nonmembers"] == 5
    assert read_scores(tmp_path / "run/scores.csv")[0][0] == "members/0000.png"


def _break_weights(target: Path, dest: Path) -> Path:
    shutil.copytree(target, dest)
    weights = dest / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    name = next(k for k in state if k.endswith("conv_out.bias"))
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, weights)
    return dest


@pytest.mark.parametrize(
    ("setup", "overrides", "message"),
    [
        (lambda t, tmp: tmp, [], "is not a target folder"),
        (lambda t, tmp: tmp / "missing", [], "does not exist"),
        (lambda t, tmp: shutil.copytree(t, tmp / "p", ignore=shutil.ignore_patterns("split.json")), [],
         "has no split.json"),
        (lambda t, tmp: t, ["data.image_size=8", "data.members={tmp}", "data.nonmembers={tmp}"], "no image files"),
        (lambda t, tmp: _break_weights(t, tmp / "nan"), [], "NaN or infinite"),
        (lambda t, tmp: t, ["attack.statistic=hull"], "attack.statistic must be one of"),
        (lambda t, tmp: t, ["attack.t=20"], "leaves the target's timesteps"),
        (lambda t, tmp: t, ["data.root={tmp}"], "data.root does not apply to the digits dataset"),
        (lambda t, tmp: t, ["target=memorizer", "data.members={tmp}", "data.nonmembers={tmp}"],
         "cannot be evaluated on"),
        (lambda t, tmp: t, ["trainer.precision=bf16-true"], "attacks run in 32-true"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(tiny_target, tmp_path, setup, overrides, message):
    target = setup(tiny_target, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(MiaError, match=message):
        attack(target, out, *(o.format(tmp=tmp_path) for o in overrides))
    assert not (out / "metrics.json").exists() and not (out / "scores.csv").exists()


def test_images_that_do_not_fit_the_model_are_refused(tiny_target: Path, tmp_path: Path):
    pipeline = tmp_path / "pipeline"
    shutil.copytree(tiny_target, pipeline, ignore=shutil.ignore_patterns("split.json"))
    write_images(tmp_path / "in", 2, (16, 16), seed=0)
    write_images(tmp_path / "out", 2, (16, 16), seed=1)
    with pytest.raises(MiaError, match=r"the evaluation images are 1x16x16 .* the model takes 1x8x8"):
        attack(pipeline, tmp_path / "run", f"data.members={tmp_path}/in", f"data.nonmembers={tmp_path}/out",
               "data.image_size=16")
    # A target whose split.json records other channels than the model takes.
    relabelled = tmp_path / "rgb"
    shutil.copytree(tiny_target, relabelled)
    split = json.loads((relabelled / "split.json").read_text())
    split["dataset"]["channels"] = 3
    (relabelled / "split.json").write_text(json.dumps(split))
    with pytest.raises(MiaError, match=r"3x8x8 .* the model takes 1x8x8"):
        attack(relabelled, tmp_path / "run2")


@pytest.mark.slow  # mia-attack processes, ~17 s; in-process twins in test_bad_inputs.py (`make test-slow`)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.run(
        [sys.executable, "-m", "mia", f"target.path={tmp_path}", "logger=none", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert process.returncode == 2
    assert process.stderr.strip().splitlines()[-1].startswith("mia-attack: error: ")
    assert "is not a target folder" in process.stderr and "Traceback" not in process.stderr


def test_a_changed_or_moved_dataset_is_caught_by_the_fingerprint(tmp_path: Path):
    from conftest import TINY_TRAIN

    from train_targets.train import train

    for name in ("a", "b"):
        write_images(tmp_path / "data" / name, 6, (8, 8), seed=ord(name))
    train(compose_config("train", [*TINY_TRAIN, "data=folder", f"data.root={tmp_path}/data", "data.image_size=8",
                                   "data.channels=1", "split.members=6", "split.nonmembers=6"], tmp_path / "t"))
    target = tmp_path / "t" / "target"
    assert attack(target, tmp_path / "ok", "attack=sima")["n_members"] == 6

    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    assert attack(target, tmp_path / "moved_ok", "attack=sima", f"data.root={tmp_path}/moved")["n_members"] == 6

    write_images(tmp_path / "data" / "a", 1, (8, 8), seed=123)  # one member or non-member changes
    with pytest.raises(MiaError, match="fingerprint mismatch"):
        attack(target, tmp_path / "changed", "attack=sima")
    (tmp_path / "other").mkdir()
    write_images(tmp_path / "other" / "x", 3, (8, 8), seed=5)
    with pytest.raises(MiaError, match="are not in the dataset"):
        attack(target, tmp_path / "other_run", "attack=sima", f"data.root={tmp_path}/other")


def test_a_training_checkpoint_can_be_attacked(tiny_target: Path, tmp_path: Path):
    checkpoint = tiny_target.parent / "checkpoints" / "last.ckpt"
    exported = attack(tiny_target, tmp_path / "exported", "attack=sima")
    from_checkpoint = attack(tiny_target, tmp_path / "ckpt", "attack=sima", f"target.checkpoint={checkpoint}")
    # The last checkpoint holds the final EMA weights, which are what was exported.
    assert from_checkpoint["auc"] == exported["auc"]
    np.testing.assert_allclose(read_scores(tmp_path / "ckpt/scores.csv")[2],
                               read_scores(tmp_path / "exported/scores.csv")[2], rtol=1e-6)
    with pytest.raises(MiaError, match="does not exist"):
        attack(tiny_target, tmp_path / "nope", "attack=sima", f"target.checkpoint={tmp_path}/nope.ckpt")
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(MiaError, match="is not a mia-train checkpoint"):
        attack(tiny_target, tmp_path / "bad", "attack=sima", f"target.checkpoint={tmp_path}/bad.ckpt")


def test_split_records_of_mia_0_1_still_load_and_foreign_code_is_refused(tiny_target: Path, tmp_path: Path):
    old = tmp_path / "old"
    shutil.copytree(tiny_target, old)
    record = json.loads((old / "split.json").read_text())
    record["dataset"] = {"_target_": "mia.data.pools.DigitsPool", **record["dataset"]}  # as mia 0.1 wrote it
    (old / "split.json").write_text(json.dumps(record))
    assert attack(old, tmp_path / "run", "attack=sima")["n_members"] == 24
    record["dataset"]["_target_"] = "os.system"  # a downloaded folder naming code to run
    (old / "split.json").write_text(json.dumps(record))
    with pytest.raises(MiaError, match="named by code"):
        attack(old, tmp_path / "refused", "attack=sima")
