"""What ``mia-audit`` runs: a composed config -> mia.audit.run.run_audit -> audit.json, the figure, W&B, the verdict."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from mia.api import evaluation_set
from mia.audit.inference import InferenceSettings
from mia.audit.result import AUDIT_FILE, AuditResult
from mia.audit.run import run_audit
from mia.audit.sets import check_sets
from mia.checks import require_bool, require_integer, require_number
from mia.config import build, build_loggers
from mia.errors import MiaError
from mia.reporting.wandb_run import log_audit_to_wandb
from mia.runs.attack import compiled_targets, scoring_settings
from mia.runs.checks import check_attack_settings, check_cache_dir, check_device, check_knobs, check_target_settings
from mia.scoring.ranks import is_rank_zero

log = logging.getLogger(__name__)
FIGURE = "pvalue_vs_size.png"


def inference_settings(audit: DictConfig) -> InferenceSettings:
    """The test's knobs, each checked (one line naming the key)."""
    for key in ("folds", "resamples", "permutations"):
        require_integer(f"audit.{key}", audit[key], minimum=2 if key == "folds" else 1)
    require_integer("audit.seed", audit.seed, minimum=0)
    for key in ("alpha", "false_alarm_level", "max_false_alarms"):
        require_number(f"audit.{key}", audit[key], 0.0, 1.0, open_interval=True)
    require_bool("audit.blind_control", audit.blind_control)
    sizes = audit.get("sizes")
    if sizes is not None:
        for i, n in enumerate(sizes):
            require_integer(f"audit.sizes[{i}]", n, minimum=1)
    return InferenceSettings(scorer=audit.scorer, folds=audit.folds, resamples=audit.resamples,
                             permutations=audit.permutations, alpha=audit.alpha,
                             sizes=None if sizes is None else list(sizes),
                             false_alarm_level=audit.false_alarm_level, max_false_alarms=audit.max_false_alarms,
                             seed=audit.seed)


def check_audit(cfg: DictConfig) -> InferenceSettings:
    """Every knob before anything is read: the sets' options, the test's, each feature attack's keys."""
    for key in ("data", "audit", "cache"):
        if not isinstance(cfg.get(key), DictConfig):
            raise MiaError(f"{key} holds the audit's {key} settings ({key}.<key>=...), not a value")
    settings = inference_settings(cfg.audit)
    check_knobs(cfg)  # the data, cache and compile knobs it shares with mia-attack, by the same checks
    features = cfg.audit.get("features")
    if not isinstance(features, DictConfig) or not any(node is not None for node in features.values()):
        raise MiaError("audit.features names no feature attack; give at least one, e.g. "
                       "+audit.features.sima={_target_: mia.attacks.sima.SimA}")
    for name, node in features.items():
        if node is not None:
            check_attack_settings(node, f"audit.features.{name}")
    check_target_settings(cfg.target)
    check_device(cfg.trainer)
    check_cache_dir(cfg)
    return settings


def run(cfg: DictConfig) -> dict[str, Any]:
    """One audit from its composed config; returns audit.json's content."""
    settings = check_audit(cfg)
    features = {name: build(node, _convert_="all") for name, node in cfg.audit.features.items() if node is not None}
    data = cfg.data
    check_sets(data.get("suspect"), data.get("reference"))
    target = build(cfg.target)
    compiled, scoring = compiled_targets(cfg, target, None, scoring_settings(cfg))  # refused before any read
    evalset = evaluation_set(target, data.get("suspect"), data.get("reference"), root=data.get("root"),
                             image_size=data.get("image_size"), max_members=data.get("max_members"),
                             max_nonmembers=data.get("max_nonmembers"), caption=data.get("caption"),
                             allow_unverified=data.get("allow_unverified") is True)
    result = run_audit(target, data.get("suspect"), data.get("reference"), evalset=evalset,
                       suspect_from=data.suspect_from, suspect_count=data.get("suspect_count"), features=features,
                       settings=settings, scoring=scoring, blind_control=cfg.audit.blind_control)
    if compiled is not None:
        result.details["compile"] = compiled()
    record = result.to_dict()
    if not is_rank_zero():
        return record
    report(cfg, result)
    return record


def report(cfg: DictConfig, result: AuditResult) -> None:
    """audit.json, the p-value figure, the W&B run, and the verdict in the log."""
    out_dir = Path(cfg.paths.output_dir)
    result.save(out_dir)
    figure = out_dir / FIGURE
    result.plot().savefig(figure, dpi=120)
    for logger in build_loggers(cfg.get("logger")):
        if isinstance(logger, WandbLogger):
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            log_audit_to_wandb(logger, result.to_dict(), figure)
            logger.experiment.finish()
    rows = "\n".join(f"  n = {row['n']:<6} p = {row['p_value']:.3g}  (median {row['median_p']:.3g}, interquartile "
                     f"[{row['p_q25']:.3g}, {row['p_q75']:.3g}])" for row in result.sizes)
    control = result.control[-1]
    log.info("p-value against the set size (suspect vs reference):\n%s\n  control (reference vs reference, n = %d): "
             "%.0f%% of p-values below %s", rows, control["n"], 100 * control["fraction_below_level"],
             cfg.audit.false_alarm_level)
    log.info("verdict: %s", result.verdict["text"])
    log.info("files: %s (%s, %s)", out_dir, AUDIT_FILE, FIGURE)
