"""`mia-attack`: run a membership-inference attack against a target and report it.

The flow: target -> evaluation set -> scoring -> metrics -> report, one call into each layer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from mia.attacks.base import Attack
from mia.attacks.noise_aggregation import NoiseAggregation
from mia.cli.checks import check_run
from mia.cli.config import ATTACK_CONFIG_DIR, build, build_loggers
from mia.cli.console import quiet_libraries
from mia.data.evaluation_set import EvaluationSet, evaluation_set_for
from mia.errors import MiaError, run_or_exit
from mia.evaluation.calibration import calibration_fraction
from mia.evaluation.metrics import roc_curve
from mia.evaluation.protocol import Outcome, Protocol, apply, roles
from mia.evaluation.result import AttackResult
from mia.reporting.console import format_metrics
from mia.reporting.figures import plot_timestep_profile
from mia.reporting.files import OUTPUT_FILES, write_outputs
from mia.reporting.provenance import provenance
from mia.reporting.wandb_run import log_to_wandb
from mia.scoring.engine import Scores, ScoringSettings, score
from mia.scoring.profile import timestep_profile
from mia.targets.base import DiffusionTarget
from mia.targets.loading import describe_target, load_target
from mia.tuning.grid import Tuning, tune

log = logging.getLogger(__name__)


def scoring_settings(cfg: DictConfig) -> ScoringSettings:
    return ScoringSettings(
        make_trainer=lambda: instantiate(cfg.trainer),
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        cache_dir=cfg.cache.dir if cfg.cache.enabled else None,
        chunk_size=cfg.cache.chunk_size,
        max_gb=cfg.cache.max_gb,
    )


def _tidy(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def protocol_of(cfg: DictConfig, attack: Attack) -> Protocol:
    return Protocol(
        calibration=calibration_fraction(cfg.protocol.calibration, attack.fitted or bool(cfg.get("tune"))),
        seed=cfg.protocol.seed,
        bootstrap=cfg.metrics.bootstrap,
        confidence=cfg.metrics.confidence,
        metrics_seed=cfg.metrics.seed,
    )


def summarize(cfg: DictConfig, attack: Attack, scored_samples: int, scores: Scores, outcome: Outcome,
              tuning: Tuning | None) -> dict[str, Any]:
    """``metrics.json``: what was attacked and how, the protocol's metrics, and the counted cost.

    The cost per sample is the chosen setting's over the samples it scored; a tuning's grid is reported
    apart (``tuning.calibration_queries``).
    """
    n = scored_samples
    return {
        "attack": attack.name,
        "settings": attack.settings(),
        "target": describe_target(cfg.target),
        "target_kind": cfg.target.kind,
        "target_checkpoint": cfg.target.get("checkpoint"),
        **outcome.metrics,
        **({"calibration": outcome.chosen} if outcome.chosen else {}),
        **({"tuning": tuning.record()} if tuning is not None else {}),
        "queries_per_sample": _tidy(scores.queries / n),
        "queries_per_sample_this_run": _tidy(scores.queries_this_run / n),
        "seconds": round(scores.seconds, 3),
        "seconds_per_1000": round(1000 * scores.seconds / n, 3),
        "device": scores.device,
    }


def other_passes(target: DiffusionTarget, n: int) -> dict[str, Any]:
    """The target's conditioning and its VAE / text-encoder passes this run, apart from the denoiser's queries."""
    passes = {f"{name}_per_sample": _tidy(count / n) for name, count in target.passes().items()}
    return {"conditioning": target.conditioning or "none", **passes}


def report(cfg: DictConfig, result: AttackResult, evalset: EvaluationSet, extra_figures: dict[str, Path]) -> None:
    """The run's files, its W&B run, and the results table in the log."""
    out_dir = Path(cfg.paths.output_dir)
    roc = roc_curve(*result.evaluation_part())
    figures = {**write_outputs(result, roc, out_dir), **extra_figures}
    wandb_dirs = []
    for logger in build_loggers(cfg.get("logger")):
        if isinstance(logger, WandbLogger):
            logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True),
                                    "provenance": result.metrics.get("provenance")})
            log_to_wandb(logger, result, roc, evalset, figures, cfg.report.top_k)
            wandb_dirs.append(Path(logger.experiment.dir).parent)
            logger.experiment.finish()
    log.info("results of %s on %s:\n%s", result.attack, describe_target(cfg.target), format_metrics(result.metrics))
    log.info("files: %s (%s)", out_dir, ", ".join(OUTPUT_FILES))
    for run_dir in wandb_dirs:
        log.info("W&B run (offline): %s; upload with `make sync` or `wandb sync %s`", run_dir, run_dir)


def check_sections(cfg: DictConfig) -> None:
    """Each settings section must still be a section: ``data=cifar10`` is a training option, not an attack's."""
    for key in ("data", "metrics", "report", "cache", "protocol"):
        if not isinstance(cfg.get(key), DictConfig):
            hint = "; datasets are chosen at training (mia-train data=...)" if key == "data" else ""
            raise MiaError(f"{key} holds the attack's {key} settings ({key}.<key>=...), not a value{hint}")


def run(cfg: DictConfig) -> dict[str, Any]:
    check_sections(cfg)
    check_run(cfg)  # every knob, the attack's keys, the device, the cache folder: before anything is read
    attack: Attack = build(cfg.attack, _convert_="all")
    if cfg.report.profile and not isinstance(attack, NoiseAggregation):
        raise MiaError(f"report.profile is for the NA attack; {attack.name} has no aggregation statistic")
    target, split = load_target(cfg.target, cfg.data)
    target.check_guidance(attack.guidance_scale)
    attack.check(target)  # settings that do not fit the target stop the run before any image is read
    evalset = evaluation_set_for(cfg.data, target.image_shape_for(cfg.data.get("image_size")), split,
                                 describe_target(cfg.target), target.conditioning, stream=target.is_latent)
    log.info("attack %s on %s: %d members, %d non-members", attack.name, describe_target(cfg.target),
             evalset.n_members, len(evalset) - evalset.n_members)
    protocol = protocol_of(cfg, attack)
    settings = scoring_settings(cfg)
    labels = evalset.labels.numpy()
    mask = roles(evalset.ids, labels, protocol)
    tuning = None
    if cfg.get("tune"):
        # Chosen on the calibration samples alone; the winner then scores the evaluation samples once.
        grid = OmegaConf.to_container(cfg.tune.grid, resolve=True) if cfg.tune.get("grid") else {}
        tuning = tune(attack, grid, cfg.tune.get("criterion"), target, evalset.subset(np.flatnonzero(mask)), settings)
        attack = tuning.attack
        scores = score(attack, target, evalset.subset(np.flatnonzero(~mask)), settings)
        values = np.empty(len(evalset))
        values[mask], values[~mask] = tuning.calibration_scores, scores.values
        scored_samples = int((~mask).sum())
    else:
        scores = score(attack, target, evalset, settings)
        values, scored_samples = scores.values, len(evalset)
    outcome = apply(attack, values, labels, mask, protocol)
    result = AttackResult(attack.name, evalset.ids, labels, outcome.scores,
                          {**summarize(cfg, attack, scored_samples, scores, outcome, tuning),
                           **other_passes(target, scored_samples)}, outcome.calibration)
    used_split = split if evalset.record.get("labels") == "split.json" else None
    result.metrics.update(evaluation_set=evalset.record,
                          provenance=provenance(scores.device, target.identity, used_split))
    figures = {}
    if cfg.report.profile:
        profile = timestep_profile(attack, target, evalset, cfg.report.profile_timesteps,
                                   cfg.report.profile_max_samples, settings)
    if not scores.main:  # another rank of a multi-device run (it took part in every predict loop above)
        return result.metrics
    if cfg.report.profile:
        out_dir = Path(cfg.paths.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        profile.save_csv(out_dir / "timestep_profile.csv")
        figures["timestep_profile"] = out_dir / "timestep_profile.png"
        plot_timestep_profile(profile).savefig(figures["timestep_profile"], dpi=120)
    report(cfg, result, evalset, figures)
    return result.metrics


@hydra.main(version_base="1.3", config_path=ATTACK_CONFIG_DIR, config_name="attack")
def main(cfg: DictConfig) -> float:
    quiet_libraries()
    metrics = run_or_exit("mia-attack", run, cfg)
    return metrics["auc"]  # what a Hydra sweeper optimises


if __name__ == "__main__":
    main()
