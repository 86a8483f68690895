"""What ``mia-attack`` runs: a composed config -> the library's calls -> the run's files, W&B run and log.

The flow: check the config, build the attack and the target (``hydra.utils.instantiate``), the evaluation
set, ``mia.api.run_attack``, then the report. Nothing here computes a score or a metric.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from mia.api import evaluation_set, run_attack
from mia.attacks.base import Attack
from mia.config import build, build_loggers
from mia.data.evaluation_set import EvaluationSet
from mia.errors import MiaError
from mia.evaluation.protocol import Protocol
from mia.evaluation.result import AttackResult
from mia.reporting.console import format_metrics
from mia.reporting.figures import plot_timestep_profile
from mia.reporting.files import OUTPUT_FILES, write_outputs
from mia.reporting.wandb_run import log_to_wandb
from mia.runs.checks import check_run
from mia.scoring.engine import ScoringSettings
from mia.scoring.profile import check_profiled, timestep_profile
from mia.scoring.ranks import is_rank_zero
from mia.targets.base import DiffusionTarget
from mia.targets.compiled import compile_target

log = logging.getLogger(__name__)


def scoring_settings(cfg: DictConfig) -> ScoringSettings:
    """How the attack's queries run: a fresh Trainer per predict loop, batches, the prediction cache."""
    return ScoringSettings(
        make_trainer=lambda: instantiate(cfg.trainer),
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        cache_dir=cfg.cache.dir if cfg.cache.enabled else None,
        chunk_size=cfg.cache.chunk_size,
        max_gb=cfg.cache.max_gb,
    )


def protocol_of(cfg: DictConfig) -> Protocol:
    return Protocol(calibration=cfg.protocol.calibration, seed=cfg.protocol.seed, bootstrap=cfg.metrics.bootstrap,
                    confidence=cfg.metrics.confidence, metrics_seed=cfg.metrics.seed)


def evaluation_set_of(cfg: DictConfig, target: DiffusionTarget) -> EvaluationSet:
    """The evaluation set ``data.*`` asks for: two folders, or the target's split."""
    data = cfg.data
    return evaluation_set(target, data.get("members"), data.get("nonmembers"), root=data.get("root"),
                          image_size=data.get("image_size"), max_members=data.get("max_members"),
                          max_nonmembers=data.get("max_nonmembers"), caption=data.get("caption"),
                          allow_unverified=data.get("allow_unverified") is True)


def shadow_paths(cfg: DictConfig) -> list[str] | None:
    """protocol=shadow's model folders (globs expanded), checked before anything is loaded; None: no shadows."""
    protocol = cfg.protocol
    paths = list(protocol.get("shadows") or [])
    if protocol.get("kind", "calibration") != "shadow":
        if paths:
            raise MiaError("protocol.shadows is set but the protocol is not protocol=shadow; add protocol=shadow")
        return None
    found: list[str] = []
    for entry in paths:
        if not isinstance(entry, str) or not entry:
            raise MiaError(f"protocol.shadows must list shadow model folders, got {entry!r}")
        matches = sorted(glob.glob(str(Path(entry).expanduser()))) if glob.has_magic(entry) else [entry]
        if not matches:
            raise MiaError(f"protocol.shadows: {entry} matches no folder; give the shadow models' target folders")
        found += [m for m in matches if m not in found]
    if len(found) < 2:
        raise MiaError(f"protocol=shadow needs at least 2 shadow models, got {len(found)}; train more with mia-train "
                       "split.pool=<target>/split.json split.seed=1,2,... and list them in protocol.shadows")
    if "path" not in cfg.target:
        raise MiaError("protocol=shadow loads each shadow as the target, by target.path; this target kind has no path")
    return found


def load_shadows(cfg: DictConfig, paths: list[str]) -> list[DiffusionTarget]:
    """Each shadow loaded as the target is (its loader and settings, with target.path = the shadow)."""
    extra = {"checkpoint": None} if "checkpoint" in cfg.target else {}  # a shadow's own final weights
    return [build(cfg.target, path=path, **extra) for path in paths]


def check_sections(cfg: DictConfig) -> None:
    """Each settings section must still be a section: ``data=cifar10`` is a training option, not an attack's."""
    for key in ("data", "metrics", "report", "cache", "protocol"):
        if not isinstance(cfg.get(key), DictConfig):
            hint = "; datasets are chosen at training (mia-train data=...)" if key == "data" else ""
            raise MiaError(f"{key} holds the attack's {key} settings ({key}.<key>=...), not a value{hint}")


def report(cfg: DictConfig, result: AttackResult, evalset: EvaluationSet, extra_figures: dict[str, Path]) -> None:
    """The run's files, its W&B run, and the results table in the log."""
    out_dir = Path(cfg.paths.output_dir)
    figures = {**write_outputs(result, out_dir), **extra_figures}
    wandb_dirs = []
    for logger in build_loggers(cfg.get("logger")):
        if isinstance(logger, WandbLogger):
            logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True),
                                    "provenance": result.metrics.get("provenance")})
            log_to_wandb(logger, result, result.roc(), evalset, figures, cfg.report.top_k)
            wandb_dirs.append(Path(logger.experiment.dir).parent)
            logger.experiment.finish()
    log.info("results of %s on %s:\n%s", result.attack, result.metrics["target"], format_metrics(result.metrics))
    log.info("files: %s (%s)", out_dir, ", ".join(OUTPUT_FILES))
    for run_dir in wandb_dirs:
        log.info("W&B run (offline): %s; upload with `make sync` or `wandb sync %s`", run_dir, run_dir)


def compiled_targets(cfg: DictConfig, target: DiffusionTarget, reference: DiffusionTarget | None,
                     settings: ScoringSettings) -> tuple[Callable[[], dict[str, Any]] | None, ScoringSettings]:
    """``compile=true``: the target (and reference) compiled in place, and the cache folder their predictions go to.

    Refused before any image is read where it cannot apply. Compiled predictions equal eager ones within a
    tolerance, not bitwise, so they are cached apart from eager entries, per compile setting.
    """
    if not cfg.get("compile"):
        return None, settings
    options = {"mode": cfg.compile_mode, "freeze": cfg.compile_freeze, "channels_last": cfg.compile_channels_last}
    compiled = compile_target(target, **options)
    if reference is not None:
        compile_target(reference, **options)
    if settings.cache_dir is not None:
        kind = "_".join([cfg.compile_mode, *(["frozen"] if options["freeze"] else []),
                         *(["nhwc"] if options["channels_last"] else [])])
        settings = dataclasses.replace(settings, cache_dir=f"{settings.cache_dir}/compiled_{kind}")
    return compiled, settings


def run(cfg: DictConfig) -> dict[str, Any]:
    """One attack run from its composed config; returns metrics.json's content."""
    check_sections(cfg)
    check_run(cfg)  # every knob, the attack's and the target's keys, the device, the cache folder: before any read
    shadows_at = shadow_paths(cfg)
    attack: Attack = build(cfg.attack, _convert_="all")
    if cfg.report.profile:
        check_profiled(attack)
    target: DiffusionTarget = build(cfg.target)
    # An attack that does not apply to the target (NotApplicable: a sweep skips it) is told before its guidance,
    # which may only fit the targets it applies to (the reconstruction attack's 7.5).
    attack.check(target)  # settings that do not fit the target stop the run before any image is read
    target.check_guidance(attack.guidance_scale)
    reference = build(cfg.reference) if cfg.get("reference") and cfg.reference.get("path") else None
    shadows = None if shadows_at is None else load_shadows(cfg, shadows_at)
    settings = scoring_settings(cfg)
    compiled, settings = compiled_targets(cfg, target, reference, settings)
    evalset = evaluation_set_of(cfg, target)
    tune = OmegaConf.to_container(cfg.tune, resolve=True) if cfg.get("tune") else None
    result = run_attack(target, attack, evalset=evalset, protocol=protocol_of(cfg), tune=tune, scoring=settings,
                        reference=reference, blind_control=cfg.protocol.get("blind_control", True), shadows=shadows)
    if compiled is not None:
        result.metrics["compile"] = compiled()
    figures = {}
    if cfg.report.profile:  # of the setting that ran (a tuning's winner); every rank takes part in its loops
        chosen = result.metrics.get("tuning", {}).get("chosen") or {}
        profile = timestep_profile(dataclasses.replace(attack, **chosen), target, evalset,
                                   cfg.report.profile_timesteps, cfg.report.profile_max_samples, settings)
    if not is_rank_zero():  # another rank of a multi-device run: rank zero writes files and W&B
        return result.metrics
    if cfg.report.profile:
        out_dir = Path(cfg.paths.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        profile.save_csv(out_dir / "timestep_profile.csv")
        figures["timestep_profile"] = out_dir / "timestep_profile.png"
        plot_timestep_profile(profile).savefig(figures["timestep_profile"], dpi=120)
    report(cfg, result, evalset, figures)
    return result.metrics

