"""`mia-attack`: run a membership-inference attack against a target and report it."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from mia import __version__
from mia.attacks import NoiseAggregation
from mia.attacks.base import Attack
from mia.cache import PredictionCache
from mia.config import CONFIG_DIR, build, build_loggers
from mia.data.evaluation import EvaluationSet, from_folders, from_split
from mia.data.images import to_model_range
from mia.errors import MiaError, run_or_exit
from mia.memorizer import memorizing_target
from mia.metrics import evaluate, roc_curve
from mia.module import AttackModule
from mia.plots import plot_timestep_profile
from mia.profile import build_profile
from mia.report import format_metrics, log_to_wandb, write_outputs
from mia.result import AttackResult
from mia.targets import DiffusionTarget, load_checkpoint_target, load_pipeline_target, load_split

log = logging.getLogger(__name__)


def build_evaluation_set(cfg: DictConfig, target: DiffusionTarget, split) -> EvaluationSet:
    """From two folders when given, else from the target's split.json; checked against the model's input."""
    data = cfg.data
    channels, height, width = target.sample_shape
    if data.members or data.nonmembers:
        if not (data.members and data.nonmembers):
            raise MiaError("give both data.members and data.nonmembers (folders of images), or neither")
        evalset = from_folders(data.members, data.nonmembers, data.image_size or height, channels)
    elif split is not None:
        evalset = from_split(split, data.root, data.max_members, data.max_nonmembers)
    else:
        raise MiaError(
            f"{cfg.target.path} has no split.json, so members cannot be told from non-members; "
            "give data.members=<folder> and data.nonmembers=<folder>"
        )
    shape = tuple(evalset.images.shape[1:])
    if shape != (channels, height, width):
        raise MiaError(
            f"the evaluation images are {shape[0]}x{shape[1]}x{shape[2]} (channels x height x width) but the model "
            f"takes {channels}x{height}x{width}; use images that match (data.image_size resizes folder images)"
        )
    return evalset


def build_target(cfg: DictConfig) -> tuple[DiffusionTarget, Any]:
    if OmegaConf.is_missing(cfg.target, "path") or not cfg.target.path:
        raise MiaError("target.path is not set; pass target.path=<folder exported by mia-train>")
    target = load_pipeline_target(cfg.target.path)
    split = load_split(cfg.target.path)
    if cfg.target.checkpoint:
        target = load_checkpoint_target(cfg.target.checkpoint)
    if cfg.target.kind == "memorizer":
        if cfg.data.members or cfg.data.nonmembers:
            raise MiaError("target.kind=memorizer memorises the split's members; it cannot be evaluated on "
                           "data.members / data.nonmembers folders, whose labels it does not know")
        if split is None:
            raise MiaError("target.kind=memorizer memorises a split's members; the target has no split.json")
        members = from_split(split, cfg.data.root, max_nonmembers=1)
        target = memorizing_target(to_model_range(members.images[: members.n_members]), target.alphas_cumprod)
    elif cfg.target.kind != "pipeline":
        raise MiaError(f"target.kind must be pipeline or memorizer, got {cfg.target.kind!r}")
    return target, split


def score(cfg: DictConfig, attack: Attack, target: DiffusionTarget, evalset: EvaluationSet) -> tuple:
    """Scores aligned with the evaluation set, the counted queries, the seconds taken and the device."""
    trainer: L.Trainer = instantiate(cfg.trainer)
    if str(trainer.precision) not in ("32-true", "64-true"):
        raise MiaError(
            f"trainer.precision={trainer.precision} would round ᾱ and the noise predictions the scores compare; "
            "attacks run in 32-true or 64-true"
        )
    # TF32 matmuls and convolutions on NVIDIA GPUs carry ~1e-3 relative error, enough to blur how tightly
    # members' predictions cluster; attacks want true float32 on every device.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cache = None
    if cfg.cache.enabled and attack.cacheable:
        key = {
            "format": f"mia-{__version__}",  # a change to how predictions are made must miss old caches
            "attack": attack.name,
            **attack.prediction_settings(),
            "target": target.identity,
            "samples": evalset.digest,
            "device": trainer.strategy.root_device.type,
            "precision": str(trainer.precision),
        }
        cache = PredictionCache(cfg.cache.dir, key)
        if cache.complete:
            log.info("reusing cached predictions from %s: no model queries", cache.folder)
    module = AttackModule(target, attack, cache, n_samples=len(evalset))
    loader = DataLoader(evalset, batch_size=cfg.data.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    started = time.perf_counter()
    batches = trainer.predict(module, dataloaders=loader)
    seconds = time.perf_counter() - started
    scores = np.full(len(evalset), np.nan)
    scores[torch.cat([b["index"] for b in batches]).numpy()] = torch.cat([b["score"] for b in batches]).numpy()
    queries = int(sum(int(b["queries"]) for b in batches))
    if np.isnan(scores).any():
        raise MiaError("the attack produced NaN scores; the target's predictions are broken")
    # The attack's cost is what the predictions took when they were made, counted then or now.
    cost = queries
    if cache is not None:
        cost = cache.queries if cache.complete else queries
        cache.finish(queries)
    return scores, {"queries": cost, "queries_this_run": queries}, seconds, str(trainer.strategy.root_device)


def timestep_profile(cfg: DictConfig, attack: Attack, target: DiffusionTarget, evalset: EvaluationSet):
    """NA at every start timestep of ``report.profile_timesteps`` on up to ``profile_max_samples`` per class."""
    subset = evalset.first(cfg.report.profile_max_samples)
    scores_by_t, queries = {}, 0
    for t in cfg.report.profile_timesteps:
        at_t = dataclasses.replace(attack, t=int(t))
        if not at_t.fits(target):
            log.warning("timestep profile: skipping t=%s, whose path %s leaves the schedule", t, at_t.timesteps())
            continue
        scores_by_t[int(t)], counted, _, _ = score(cfg, at_t, target, subset)
        queries += counted["queries"]
    if not scores_by_t:
        raise MiaError("report.profile_timesteps holds no timestep whose NA path fits the schedule")
    return build_profile(scores_by_t, subset.labels.numpy(), attack.statistic, attack.delta, queries / len(subset))


def _tidy(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def run(cfg: DictConfig) -> dict[str, Any]:
    attack: Attack = build(cfg.attack, _convert_="all")
    if cfg.report.profile and not isinstance(attack, NoiseAggregation):
        raise MiaError(f"report.profile is for the NA attack; {attack.name} has no aggregation statistic")
    target, split = build_target(cfg)
    evalset = build_evaluation_set(cfg, target, split)
    log.info("attack %s on %s: %d members, %d non-members", attack.name, cfg.target.path,
             evalset.n_members, len(evalset) - evalset.n_members)
    scores, queries, seconds, device = score(cfg, attack, target, evalset)

    labels = evalset.labels.numpy()
    per_sample = {key: value / len(evalset) for key, value in queries.items()}
    metrics = {
        "attack": attack.name,
        "settings": attack.settings(),
        "target": str(Path(cfg.target.path).expanduser().resolve()),
        "target_kind": cfg.target.kind,
        "target_checkpoint": cfg.target.checkpoint,
        **evaluate(scores, labels, cfg.metrics.bootstrap, cfg.metrics.confidence, cfg.metrics.seed),
        "queries_per_sample": _tidy(per_sample["queries"]),
        "queries_per_sample_this_run": _tidy(per_sample["queries_this_run"]),
        "seconds": round(seconds, 3),
        "seconds_per_1000": round(1000 * seconds / len(evalset), 3),
        "device": device,
    }
    result = AttackResult(attack.name, evalset.ids, labels, scores, metrics)
    profile = timestep_profile(cfg, attack, target, evalset) if cfg.report.profile else None
    out_dir = Path(cfg.paths.output_dir)
    roc = roc_curve(scores, labels)
    figures = write_outputs(result, roc, out_dir)
    if profile is not None:
        profile.save_csv(out_dir / "timestep_profile.csv")
        figures["timestep_profile"] = out_dir / "timestep_profile.png"
        plot_timestep_profile(profile).savefig(figures["timestep_profile"], dpi=120)
    wandb_dirs = []
    for logger in build_loggers(cfg.get("logger")):
        if isinstance(logger, WandbLogger):
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            log_to_wandb(logger, result, roc, evalset.images, figures, cfg.report.top_k)
            wandb_dirs.append(Path(logger.experiment.dir).parent)
            logger.experiment.finish()
    log.info("results of %s on %s:\n%s", attack.name, cfg.target.path, format_metrics(metrics))
    log.info("files: %s (metrics.json, scores.csv, roc.png, scores_histogram.png)", out_dir)
    for run_dir in wandb_dirs:
        log.info("W&B run (offline): %s; upload with `make sync` or `wandb sync %s`", run_dir, run_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="attack")
def main(cfg: DictConfig) -> float:
    metrics = run_or_exit("mia-attack", run, cfg)
    return metrics["auc"]  # what a Hydra sweeper optimises


if __name__ == "__main__":
    main()
