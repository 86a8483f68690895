"""Multiruns: the summary callback, the prediction cache, the timestep profile, launchers and presets."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mia.config import config_dir
from mia.reporting.sweep import write_summary
from mia.runs.attack import run
from mia.scoring.cache import PredictionCache

QUICK = ["logger=none", "metrics.bootstrap=20", "trainer.enable_progress_bar=false"]


def attack(target: Path, out: Path, *overrides: str) -> dict:
    return run(compose_config("attack", [f"target.path={target}", *QUICK, *overrides], out))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "mia", "-m", *QUICK, f"paths.log_dir={tmp_path}/runs",
               f"hydra.sweep.dir={tmp_path}/sweep", *overrides]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_a_two_knob_sweep_ends_in_a_summary_and_heatmaps_and_outlives_failing_jobs(tiny_target: Path,
                                                                                   tmp_path: Path):
    # t = 1000 is outside the target's schedule: those two jobs fail, the other six run.
    process = multirun(tmp_path, f"target.path={tiny_target}", "attack=na", "attack.t=40,60,80,1000",
                       "attack.noise_scale=0.1,1.0")
    assert process.returncode == 1, process.stderr[-3000:]  # some jobs failed
    assert process.stderr.strip().splitlines()[-1].startswith("mia-attack: error: 2 of 8 jobs failed")
    assert "Traceback" not in process.stderr
    sweep = tmp_path / "sweep"
    rows = read_rows(sweep / "summary.csv")
    assert len(rows) == 8
    failed = [r for r in rows if r["status"] != "ok"]
    assert [r["attack.t"] for r in failed] == ["1000", "1000"] and all(r["auc"] == "" for r in failed)
    assert all("leaves the target's timesteps" in r["status"] for r in failed)
    assert all((sweep / r["job"] / "error.txt").read_text().strip() == r["status"] for r in failed)
    rows = [r for r in rows if r["status"] == "ok"]
    assert {(r["attack.t"], r["attack.noise_scale"]) for r in rows} == {
        (t, s) for t in ("40", "60", "80") for s in ("0.1", "1.0")}
    for row in rows:
        job = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert float(row["auc"]) == job["auc"] and int(row["queries_per_sample"]) == 5
    for name in ("heatmap_auc.png", "heatmap_tpr_at_1pct_fpr.png", "roc_overlay.png"):
        assert (sweep / name).stat().st_size > 0
    assert "best AUC" in process.stderr + process.stdout


def test_the_summary_callback_records_failures_only_in_multiruns(tmp_path: Path):
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    from mia.errors import MiaError
    from mia.reporting.sweep import SweepSummary

    def ended(mode: RunMode, error: Exception, keep_going: bool = True) -> JobReturn:
        out = tmp_path / mode.name / type(error).__name__
        out.mkdir(parents=True)
        config = OmegaConf.create({"hydra": {"mode": mode, "runtime": {"output_dir": str(out)}, "job": {"num": 0}}})
        job = JobReturn(status=JobStatus.FAILED, _return_value=error)
        SweepSummary(keep_going).on_job_end(config, job)
        return job

    job = ended(RunMode.MULTIRUN, MiaError("attack.t = 1000 is outside\nthe schedule"))
    assert job.status == JobStatus.COMPLETED and job.return_value is None  # the sweeper goes on
    assert (tmp_path / "MULTIRUN/MiaError/error.txt").read_text() == "attack.t = 1000 is outside the schedule\n"
    bug = ended(RunMode.MULTIRUN, ZeroDivisionError("division by zero"), keep_going=False)
    assert bug.status == JobStatus.FAILED  # Hydra's own behaviour, on request
    assert (tmp_path / "MULTIRUN/ZeroDivisionError/error.txt").read_text() == "ZeroDivisionError: division by zero\n"
    single = ended(RunMode.RUN, ZeroDivisionError("x"))
    assert single.status == JobStatus.FAILED and not (tmp_path / "RUN/ZeroDivisionError/error.txt").exists()


@pytest.mark.slow  # twelve attack jobs in a separate process, ~45 s (`make test-slow`)
def test_comparing_every_attack_on_a_pixel_target_skips_clid(tiny_target: Path, tmp_path: Path):
    process = multirun(tmp_path, f"target.path={tiny_target}", "experiment=compare_attacks")
    assert process.returncode == 0, process.stderr[-3000:]  # skipped is no failure
    rows = read_rows(tmp_path / "sweep" / "summary.csv")
    assert [r["attack"] for r in rows] == ["na", "loss", "pia", "pian", "secmi", "sima", "secmi_nn", "learned",
                                           "clid_th", "clid_vec", "rediffuse", "reconstruction"]
    ran, skipped = [*rows[:8], rows[10]], [*rows[8:10], rows[11]]
    assert [int(r["queries_per_sample"]) for r in ran] == [5, 1, 2, 2, 12, 1, 12, 5, 20]
    for row in ran:
        assert row["status"] == "ok"
        for key in ("auc", "asr", "asr_calibrated", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "seconds"):
            assert row[key] != "", key
        assert json.loads(row["settings"])
    for row in skipped:
        assert row["status"].startswith("skipped: ") and "text-conditional" in row["status"]
    assert "failed" not in process.stderr
    assert (tmp_path / "sweep" / "roc_overlay.png").stat().st_size > 0


def test_summary_of_a_one_knob_sweep_draws_lines(tiny_target: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    for job, t in enumerate((40, 80)):
        out = sweep / str(job)
        attack(tiny_target, out, "attack=na", f"attack.t={t}")
        (out / ".hydra").mkdir()
        (out / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml([f"attack.t={t}", "attack=na"]))
    written = write_summary(sweep)
    assert written["sweep_plot"].name == "sweep_attack.t.png" and written["sweep_plot"].exists()
    assert [r["attack.t"] for r in read_rows(written["summary"])] == ["40", "80"]
    assert "heatmap_auc" not in written


def test_a_statistic_sweep_reuses_the_cached_predictions(tiny_target: Path, tmp_path: Path):
    cache = [f"cache.dir={tmp_path}/cache"]
    first = attack(tiny_target, tmp_path / "l2", "attack=na", *cache)
    assert first["queries_per_sample"] == 5 and first["queries_per_sample_this_run"] == 5
    for statistic in ("centroid", "density", "pairwise_l1"):
        again = attack(tiny_target, tmp_path / statistic, "attack=na", f"attack.statistic={statistic}", *cache)
        assert again["queries_per_sample_this_run"] == 0  # hit: the counter saw no forward pass
        assert again["queries_per_sample"] == 5  # the cost of the predictions, counted when they were made
        attack(tiny_target, tmp_path / f"{statistic}_fresh", "attack=na", f"attack.statistic={statistic}",
                       "cache.enabled=false")
        cached_scores = np.loadtxt(tmp_path / statistic / "scores.csv", delimiter=",", skiprows=1, usecols=2)
        fresh_scores = np.loadtxt(tmp_path / f"{statistic}_fresh" / "scores.csv", delimiter=",", skiprows=1,
                                  usecols=2)
        np.testing.assert_array_equal(cached_scores, fresh_scores)
    # Anything that changes the predictions misses the cache.
    for change in ("attack.t=60", "attack.seed=1", "attack.noise_scale=0.5", "data.max_members=10"):
        miss = attack(tiny_target, tmp_path / change.replace("=", "_"), "attack=na", change, *cache)
        assert miss["queries_per_sample_this_run"] == 5, change


def test_timestep_profile_is_drawn_and_logged(tiny_target: Path, tmp_path: Path):
    metrics = attack(tiny_target, tmp_path, "attack=na", "report.profile=true", "report.profile_timesteps=[30,40,60]",
                     "report.profile_max_samples=8", "logger=wandb", f"cache.dir={tmp_path}/cache")
    rows = read_rows(tmp_path / "timestep_profile.csv")
    assert [r["t"] for r in rows] == ["40", "60"]  # t = 30 leaves the schedule with k = 5, m = 10
    assert all(0.0 <= float(r["auc"]) <= 1.0 for r in rows)
    assert (tmp_path / "timestep_profile.png").stat().st_size > 0
    media = next((tmp_path / "wandb").glob("offline-run-*")) / "files" / "media" / "images"
    assert list(media.glob("timestep_profile_*.png"))
    assert metrics["queries_per_sample"] == 5  # the profile's queries are not the attack's


@pytest.mark.parametrize(("launcher", "target"), [
    ("basic", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
    ("parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
])
def test_launcher_configs_compose(launcher: str, target: str):
    with initialize_config_dir(config_dir=config_dir("attack"), version_base="1.3"):
        cfg = compose("attack", overrides=["target.path=x", f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target


@pytest.mark.parametrize("preset", ["sweep_na_t_noise", "sweep_na_k_m", "sweep_na_statistic", "compare_attacks"])
def test_sweep_presets_compose(preset: str):
    with initialize_config_dir(config_dir=config_dir("attack"), version_base="1.3"):
        cfg = compose("attack", overrides=["target.path=x", f"experiment={preset}"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.params


def test_two_writers_with_one_key_cannot_corrupt_the_cache(tmp_path: Path):
    import torch

    first, second = (PredictionCache(tmp_path, {"k": 1}, rows=4, chunk_size=2) for _ in range(2))
    ones, rows = torch.ones(4, 2, 3), torch.arange(4)
    first.add(rows[:2], ones[:2], queries=4)  # a chunk of two rows
    second.add(rows[:2], 2 * ones[:2], queries=4)  # a parallel job with the same key, meanwhile
    first.add(rows[2:], ones[2:], queries=4)
    assert first.finish()
    second.add(rows[2:], 2 * ones[2:], queries=4)  # already complete: not written again
    second.flush()
    assert second.finish()
    reader = PredictionCache(tmp_path, {"k": 1}, rows=4)
    assert reader.complete and reader.queries == 8
    stored = reader.read(rows)
    assert all(torch.equal(row, ones[0]) or torch.equal(row, 2 * ones[0]) for row in stored)  # whole rows
    assert torch.equal(reader.read(torch.tensor([3, 2])), ones[2:])
    assert not list(reader.folder.rglob("*.partial"))
    unfinished = PredictionCache(tmp_path, {"k": 2}, rows=4, chunk_size=2)
    unfinished.add(rows[:2], ones[:2], queries=4)
    assert not unfinished.finish()  # stopped early: nothing is published, the chunk stays for a rerun
    again = PredictionCache(tmp_path, {"k": 2}, rows=4)
    assert not again.complete and again.available(rows).tolist() == [True, True, False, False]


def test_wandb_runs_of_one_sweep_share_a_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from lightning.pytorch.loggers import WandbLogger

    import mia.config as cli

    def wandb_init(*overrides: str) -> dict:
        cfg = compose_config("attack", ["target.path=x", "logger=wandb", *overrides], tmp_path)
        return next(lg for lg in cli.build_loggers(cfg.logger) if isinstance(lg, WandbLogger))._wandb_init

    assert wandb_init().get("group") is None  # a single run stands alone
    monkeypatch.setattr(cli, "sweep_name", lambda: "2026-11-29_12-00-00")
    assert wandb_init()["group"] == "2026-11-29_12-00-00"  # every job of a multirun: the sweep's name
    assert wandb_init("logger.wandb.group=mine")["group"] == "mine"  # unless the user names one


def test_job_folders_come_in_job_order_and_only_with_a_marker(tmp_path: Path):
    from mia.reporting.jobs import job_folders

    for job in ("10", "2", "0"):
        (tmp_path / job).mkdir()
        (tmp_path / job / "metrics.json").write_text("{}")
    (tmp_path / "11").mkdir()
    (tmp_path / "11" / "error.txt").write_text("failed\n")
    (tmp_path / "12").mkdir()  # a job that left nothing: not listed
    assert [f.name for f in job_folders(tmp_path)] == ["0", "2", "10"]
    assert [f.name for f in job_folders(tmp_path, ("metrics.json", "error.txt"))] == ["0", "2", "10", "11"]
