"""`mia-attack`: run a membership-inference attack against a target and report it.

The flow: target -> evaluation set -> scoring -> metrics -> report, one call into each layer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from mia.attacks.base import Attack
from mia.attacks.noise_aggregation import NoiseAggregation
from mia.cli.config import ATTACK_CONFIG_DIR, build, build_loggers
from mia.cli.console import quiet_libraries
from mia.data.evaluation_set import EvaluationSet, evaluation_set_for
from mia.errors import MiaError, run_or_exit
from mia.evaluation.calibration import calibration_fraction
from mia.evaluation.metrics import roc_curve
from mia.evaluation.protocol import Outcome, Protocol, apply
from mia.evaluation.result import AttackResult
from mia.reporting.console import format_metrics
from mia.reporting.figures import plot_timestep_profile
from mia.reporting.files import OUTPUT_FILES, write_outputs
from mia.reporting.wandb_run import log_to_wandb
from mia.scoring.engine import Scores, ScoringSettings, score
from mia.scoring.profile import timestep_profile
from mia.targets.base import DiffusionTarget
from mia.targets.loading import load_target

log = logging.getLogger(__name__)


def scoring_settings(cfg: DictConfig) -> ScoringSettings:
    return ScoringSettings(
        make_trainer=lambda: instantiate(cfg.trainer),
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        cache_dir=cfg.cache.dir if cfg.cache.enabled else None,
    )


def _tidy(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def protocol_of(cfg: DictConfig, attack: Attack) -> Protocol:
    return Protocol(
        calibration=calibration_fraction(cfg.protocol.calibration, attack.fitted),
        seed=cfg.protocol.seed,
        bootstrap=cfg.metrics.bootstrap,
        confidence=cfg.metrics.confidence,
        metrics_seed=cfg.metrics.seed,
    )


def summarize(cfg: DictConfig, attack: Attack, evalset: EvaluationSet, scores: Scores,
              outcome: Outcome) -> dict[str, Any]:
    """``metrics.json``: what was attacked and how, the protocol's metrics, and the counted cost."""
    n = len(evalset)
    return {
        "attack": attack.name,
        "settings": attack.settings(),
        "target": str(Path(cfg.target.path).expanduser().resolve()),
        "target_kind": cfg.target.kind,
        "target_checkpoint": cfg.target.checkpoint,
        **outcome.metrics,
        **({"calibration": outcome.chosen} if outcome.chosen else {}),
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
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            log_to_wandb(logger, result, roc, evalset, figures, cfg.report.top_k)
            wandb_dirs.append(Path(logger.experiment.dir).parent)
            logger.experiment.finish()
    log.info("results of %s on %s:\n%s", result.attack, cfg.target.path, format_metrics(result.metrics))
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
    attack: Attack = build(cfg.attack, _convert_="all")
    if cfg.report.profile and not isinstance(attack, NoiseAggregation):
        raise MiaError(f"report.profile is for the NA attack; {attack.name} has no aggregation statistic")
    target, split = load_target(cfg.target, cfg.data)
    target.check_guidance(attack.guidance_scale)
    attack.check(target)  # settings that do not fit the target stop the run before any image is read
    evalset = evaluation_set_for(cfg.data, target.image_shape_for(cfg.data.get("image_size")), split,
                                 str(cfg.target.path), target.conditioning, stream=target.is_latent)
    log.info("attack %s on %s: %d members, %d non-members", attack.name, cfg.target.path,
             evalset.n_members, len(evalset) - evalset.n_members)
    protocol = protocol_of(cfg, attack)
    settings = scoring_settings(cfg)
    scores = score(attack, target, evalset, settings)
    labels = evalset.labels.numpy()
    outcome = apply(attack, scores.values, evalset.ids, labels, protocol)
    metrics = {**summarize(cfg, attack, evalset, scores, outcome), **other_passes(target, len(evalset))}
    result = AttackResult(attack.name, evalset.ids, labels, outcome.scores, metrics, outcome.calibration)
    figures = {}
    if cfg.report.profile:
        profile = timestep_profile(attack, target, evalset, cfg.report.profile_timesteps,
                                   cfg.report.profile_max_samples, settings)
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
