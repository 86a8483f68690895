"""``mia.run_audit``: was this set of images used to train the target? (docs/method.md, "dataset inference").

The suspect and reference sets (mia.audit.sets) -> the blind control when they are two folders -> the
per-sample features (mia.audit.features, through the prediction cache) -> the test at every set size and its
false-alarm control (mia.audit.inference) -> an AuditResult with a verdict worded as the test supports it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mia.api import evaluation_set, trainer_factory
from mia.attacks.base import Attack
from mia.audit.features import collect_features
from mia.audit.inference import InferenceSettings, infer
from mia.audit.result import AuditResult
from mia.audit.sets import check_sets, sets_from_folders, sets_from_split
from mia.config import build, config_dir
from mia.controls.blind import blind_control as run_blind_control
from mia.data.evaluation_set import EvaluationSet
from mia.reporting.provenance import provenance
from mia.scoring.engine import ScoringSettings
from mia.targets.base import DiffusionTarget

log = logging.getLogger(__name__)


def default_features(kind: str = "denoiser") -> dict[str, Attack]:
    """The features conf/audit/features/<kind>.yaml names (mia-audit's ``features=``), built."""
    node = OmegaConf.load(Path(config_dir("audit")) / "features" / f"{kind}.yaml")
    return {name: build(attack, _convert_="all") for name, attack in node.items() if attack is not None}


def run_audit(target: DiffusionTarget, suspect: str | Path | None = None, reference: str | Path | None = None, *,
              evalset: EvaluationSet | None = None, suspect_from: str = "members", suspect_count: int | None = None,
              features: Mapping[str, Attack] | None = None, settings: InferenceSettings | None = None,
              scoring: ScoringSettings | None = None, blind_control: bool = True, **data: Any) -> AuditResult:
    """Was ``suspect`` used to train ``target``? Two folders (``suspect``, ``reference``), or the target's split
    (suspects: ``suspect_count`` of its ``suspect_from``, drawn by id; reference: its other non-members).

    ``evalset``: the two sets as one evaluation set already built (suspects labelled 1), else
    ``mia.evaluation_set(target, suspect, reference, **data)``; ``features``: the feature attacks (default:
    conf/audit/features/denoiser.yaml's; ``default_features("blackbox")``: attacks that only call the pipeline);
    ``settings``: the test's knobs; ``scoring``: as for ``mia.run_attack``.
    """
    settings = settings or InferenceSettings()
    check_sets(suspect, reference)
    if evalset is None:
        evalset = evaluation_set(target, suspect, reference, **data)
    scoring = scoring or ScoringSettings(trainer_factory())
    sets = (sets_from_folders(evalset, suspect, reference) if suspect
            else sets_from_split(evalset, suspect_from, suspect_count, settings.seed))
    blind = run_blind_control(evalset, seed=settings.seed) if suspect and blind_control else None
    features = collect_features(features if features is not None else default_features(), target, evalset, scoring)
    values = features.values
    log.info("audit of %d suspect against %d reference samples on %d features (%s)", len(sets.suspect),
             len(sets.reference), values.shape[1], ", ".join(features.columns))
    inference = infer(values[sets.suspect], values[sets.reference], settings)
    details: dict[str, Any] = {
        "target": target.source or target.name, "target_kind": target.kind, "target_checkpoint": target.checkpoint,
        **({"target_lora": target.lora} if target.lora else {}),
        **sets.record,
        "features": features.columns,
        **({"features_skipped": features.skipped} if features.skipped else {}),
        "queries_per_sample": features.queries_per_sample,
        "queries_this_run": features.queries_this_run,
        # The other networks' passes (VAE, text encoder) and the black-box features' generation calls.
        **{f"{name}_per_sample": count for name, count in features.passes_per_sample.items()},
        "settings": {"scorer": settings.scorer, "folds": settings.folds, "resamples": settings.resamples,
                     "permutations": settings.permutations, "alpha": settings.alpha,
                     "false_alarm_level": settings.false_alarm_level, "max_false_alarms": settings.max_false_alarms,
                     "seed": settings.seed, "model": "standardised logistic regression, classes balanced",
                     "tests": "one-sided permutation test of the difference of means (suspect > reference); "
                              "CDI's one-sided Welch t-test beside it",
                     "p_value": "twice the permutation test's median p over the resamplings (Meinshausen, Meier "
                                "and Bühlmann 2009)"},
        "evaluation_set": evalset.record,
        "provenance": provenance(features.device, target.identity, target.split if not suspect else None),
    }
    result = AuditResult.of(inference, settings, details, blind)
    log.info("audit: %s", result.verdict["text"])
    return result
