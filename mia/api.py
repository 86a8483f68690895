"""mia as a library: load a target, run attacks on it, read and plot the results (docs/api.md).

The commands are built on these calls: ``mia-attack`` composes a config, builds the target and the attack
from it, calls ``run_attack`` and writes the result's files and W&B run (``mia.runs.attack``).

    target = mia.load_target("runs/demo/target")
    result = mia.run_attack(target, NoiseAggregation(t=40, noise_scale=0.1))
    result.metrics["auc"], result.plot_roc()
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from omegaconf import OmegaConf

from mia.attacks.base import Attack
from mia.config import build, config_dir, options
from mia.controls.blind import blind_control as run_blind_control
from mia.controls.reference import check_comparable, reference_outcome
from mia.data.evaluation_set import EvaluationSet, evaluation_set_for
from mia.errors import MiaError
from mia.evaluation.calibration import calibration_fraction
from mia.evaluation.protocol import Outcome, Protocol, apply, measure, roles
from mia.evaluation.result import AttackResult
from mia.evaluation.shadows import at_threshold, check_shadows, fit_on_shadows, memberships, shadow_models_record
from mia.reporting.provenance import provenance
from mia.scoring.engine import Predictions, ScoringSettings, predict
from mia.targets.base import DiffusionTarget
from mia.targets.folder import load_folder
from mia.tuning.grid import Tuning
from mia.tuning.search import tune_on_calibration

log = logging.getLogger(__name__)
# Counts reported only when the run made any (the black-box attacks' generations and decodes).
OPTIONAL_PASSES = frozenset({"generation_calls", "decoder_passes"})


def load_target(path: str | Path, checkpoint: str | Path | None = None, latent: str = "mean",
                null_class: int | None = None) -> DiffusionTarget:
    """A diffusers pipeline folder (mia-train's export or any other) with its split.json, as ``target=pipeline``.

    Other kinds have their own loaders: ``mia.targets.module.load_module`` (any nn.Module),
    ``mia.targets.memorizer.load_memorizer``.
    """
    return load_folder(str(path), None if checkpoint is None else str(checkpoint), latent, null_class)


def make_attack(attack: Attack | str, **settings: Any) -> Attack:
    """An attack: given as an instance, or by its option name (``"na"``) with its config's defaults and ``settings``."""
    if isinstance(attack, Attack):
        return dataclasses.replace(attack, **settings) if settings else attack
    if attack not in options("attack"):
        raise MiaError(f"there is no attack {attack!r}; choose one of {', '.join(options('attack'))}")
    node = OmegaConf.load(Path(config_dir("attack")) / "attack" / f"{attack}.yaml")
    return build(node, **settings, _convert_="all")


def evaluation_set(target: DiffusionTarget, members: str | Path | None = None, nonmembers: str | Path | None = None,
                   *, root: str | None = None, image_size: int | None = None, max_members: int | None = None,
                   max_nonmembers: int | None = None, caption: str | None = None,
                   allow_unverified: bool = False) -> EvaluationSet:
    """The samples to attack: two image folders when given, else the target's split (its dataset re-read and checked).

    ``root``: where the split's dataset lives now; ``image_size``: folder images are resized to it;
    ``max_members``/``max_nonmembers``: the first N of the split; ``caption``: text-to-image targets' captions
    (None = the data's own, ``"none"`` = the empty prompt, or a column of the folders' caption files).
    """
    if (members or nonmembers) and target.split_only:
        raise MiaError(target.split_only)
    data = {"root": root, "members": None if members is None else str(members),
            "nonmembers": None if nonmembers is None else str(nonmembers), "image_size": image_size,
            "max_members": max_members, "max_nonmembers": max_nonmembers, "caption": caption,
            "allow_unverified": allow_unverified}
    return evaluation_set_for(data, target.image_shape_for(image_size), target.split, target.source or target.name,
                              target.conditioning, stream=target.is_latent)


def trainer_factory(accelerator: str = "auto", devices: int = 1, progress_bar: bool = False,
                    **options: Any) -> Callable[[], L.Trainer]:
    """A fresh Lightning predict Trainer per scoring call, in full precision (as conf/query/trainer/predict.yaml)."""
    def make() -> L.Trainer:
        return L.Trainer(accelerator=accelerator, devices=devices, precision="32-true", logger=False,
                         enable_checkpointing=False, enable_model_summary=False, inference_mode=True,
                         enable_progress_bar=progress_bar, **options)

    return make


def run_attack(target: DiffusionTarget, attack: Attack | str, members: str | Path | None = None,
               nonmembers: str | Path | None = None, *, evalset: EvaluationSet | None = None,
               protocol: Protocol | None = None, tune: Mapping[str, Any] | None = None,
               scoring: ScoringSettings | None = None, reference: DiffusionTarget | None = None,
               blind_control: bool = True, shadows: Sequence[DiffusionTarget] | None = None,
               **data: Any) -> AttackResult:
    """Attack ``target`` and measure the attack by the protocol (docs/method.md, "the protocol").

    The samples: ``evalset``, else ``evaluation_set(target, members, nonmembers, **data)``. ``protocol``: the
    calibration part and the metrics' settings (its ``calibration`` None = 0.2 when anything is fitted, else
    0). ``tune``: ``{"grid": {knob: [values]}, "criterion": "auc"}`` chooses the knobs on the calibration part
    first (``"search": "halving"``: by successive halving, mia.tuning.halving). ``scoring``: batch size, device
    (a Trainer factory) and the prediction cache (none by default).
    ``reference``: a model that did not train on the samples; the attack runs on it too (its AUC, and the
    calibrated score target − reference, which ``attack.calibration=reference`` reports as the main one).
    ``blind_control``: on two folders, check first that they cannot be told apart without the model.
    ``shadows``: the shadow protocol (docs/method.md, "Shadow models"): whatever is fitted is fitted on these
    models' own splits, no target label is used, and every sample is an evaluation row.
    """
    attack = make_attack(attack)
    # An attack that does not apply to the target (NotApplicable: a sweep skips it) is told before its guidance,
    # which may only fit the targets it applies to (the reconstruction attack's 7.5).
    attack.check(target)  # settings that do not fit the target stop the run before any image is read
    target.check_guidance(attack.guidance_scale)
    if shadows is not None:
        _check_shadow_run(attack, target, shadows, protocol, tune, reference)
    elif attack.calibration == "shadows":
        raise MiaError("attack.calibration=shadows is LiRA on shadow models; give them with protocol=shadow "
                       "'protocol.shadows=[<shadow folders>]' (docs/method.md, \"Shadow models\")")
    if reference is not None:
        check_comparable(target, reference)
        attack.check(reference)
    elif attack.calibration == "reference":
        raise MiaError("attack.calibration=reference subtracts a reference model's scores; give one with "
                       "reference.path=<a model that did not train on the samples>")
    if evalset is None:
        evalset = evaluation_set(target, members, nonmembers, **data)
    elif members or nonmembers or data:
        raise MiaError("give the samples once: evalset=, or members/nonmembers and their options")
    protocol = protocol or Protocol(calibration=None)
    fitted = (attack.learns_from_labels or bool(tune)) and shadows is None  # under shadows: nothing on the target
    protocol = dataclasses.replace(protocol, calibration=calibration_fraction(protocol.calibration, fitted))
    scoring = scoring or ScoringSettings(trainer_factory())
    log.info("attack %s on %s: %d members, %d non-members", attack.name, target.source or target.name,
             evalset.n_members, len(evalset) - evalset.n_members)
    labels = evalset.labels.numpy()
    mask = roles(evalset.ids, labels, protocol)
    tuning = None
    controls: dict[str, Any] = {}
    if shadows is not None:
        predicted = predict(attack, target, evalset, scoring)
        outcome, controls["shadows"] = _on_shadows(attack, predicted, shadows, evalset, protocol, scoring)
        scored_samples = len(evalset)
    elif tune:
        # Chosen on the calibration samples alone; the winner then scores the evaluation samples once.
        tuning = tune_on_calibration(attack, tune, target, evalset.subset(np.flatnonzero(mask)), scoring)
        attack = tuning.attack
        predicted = predict(attack, target, evalset.subset(np.flatnonzero(~mask)), scoring)
        scores = np.empty(len(evalset))
        scores[mask], scores[~mask] = tuning.calibration_scores, attack.score(_tensor(predicted.features)).numpy()
        outcome = Outcome(scores, mask, measure(attack.name, scores, labels, mask, protocol))
        scored_samples = int((~mask).sum())
    else:
        predicted = predict(attack, target, evalset, scoring)
        outcome = apply(attack, predicted.features, labels, mask, protocol)
        scored_samples = len(evalset)
    cost = _cost(predicted, scored_samples)
    if reference is not None:
        outcome, controls, cost = _with_reference(attack, outcome, cost, reference, evalset, protocol, scoring)
    if blind_control and evalset.record.get("labels", "").startswith("folders"):
        controls["blind_control"] = run_blind_control(evalset, seed=protocol.seed, confidence=protocol.confidence)
    warnings = [c["warning"] for c in (controls.get("blind_control", {}), outcome.chosen) if c.get("warning")]
    metrics = {
        **_what_was_attacked(attack, target),
        **outcome.metrics,
        **({"calibration": outcome.chosen} if outcome.chosen else {}),
        **({"tuning": tuning.record()} if tuning is not None else {}),
        **cost,
        # The chosen setting's passes when tuned, as its queries: the grid's are its own cost.
        **_other_passes(target, predicted, scored_samples),
        **controls,
        **({"warnings": warnings} if warnings else {}),
        "evaluation_set": evalset.record,
        "provenance": provenance(predicted.device, target.identity,
                                 target.split if evalset.record.get("labels") == "split.json" else None),
    }
    return AttackResult(attack.name, evalset.ids, labels, outcome.scores, metrics, mask)


def _check_shadow_run(attack: Attack, target: DiffusionTarget, shadows: Sequence[DiffusionTarget],
                      protocol: Protocol | None, tune: Mapping[str, Any] | None,
                      reference: DiffusionTarget | None) -> None:
    """What the shadow protocol cannot be combined with, refused before any sample is read."""
    if protocol is not None and protocol.calibration:
        raise MiaError(f"protocol=shadow fits on the shadow models and evaluates every target sample; "
                       f"protocol.calibration={protocol.calibration} would set target samples aside: leave it null")
    if tune:
        raise MiaError("tune= chooses knobs on the target's calibration part, which protocol=shadow does not have; "
                       "run without tune= (or tune under protocol=calibration)")
    if reference is not None or attack.calibration == "reference":
        raise MiaError("protocol=shadow and a reference model do not combine; use attack.calibration=shadows "
                       "(LiRA on the shadows) or drop protocol=shadow")
    check_shadows(target, shadows)
    for shadow in shadows:
        attack.check(shadow)


def _on_shadows(attack: Attack, predicted: Predictions, shadows: Sequence[DiffusionTarget], evalset: EvaluationSet,
                protocol: Protocol, scoring: ScoringSettings) -> tuple[Outcome, dict[str, Any]]:
    """The attack on every shadow, fitted there (their labels), applied to the target's features."""
    rows = memberships(shadows, evalset.ids)
    on_shadows = [predict(attack, shadow, evalset, scoring) for shadow in shadows]
    fitted = fit_on_shadows(attack, predicted.features, [p.features for p in on_shadows], rows,
                            lira_calibration=attack.calibration == "shadows")
    labels = evalset.labels.numpy()  # read only now, to measure what was fitted without them
    metrics = measure(attack.name, fitted.scores, labels, None, protocol)
    shadow_passes: Counter[str] = Counter()  # the shadows' other passes (GSA's backward passes, a latent VAE)
    for p in on_shadows:
        shadow_passes.update(p.passes)
    record = {**fitted.record, "models": shadow_models_record(shadows, rows),
              "queries_per_sample": _tidy(sum(p.queries for p in on_shadows) / len(evalset)),
              "queries_per_sample_this_run": _tidy(sum(p.queries_this_run for p in on_shadows) / len(evalset)),
              **{f"{name}_per_sample": _tidy(count / len(evalset)) for name, count in shadow_passes.items()},
              "seconds": round(sum(p.seconds for p in on_shadows), 3)}
    if "threshold" in fitted.record:
        record["target_at_threshold"] = at_threshold(fitted.scores, labels, fitted.record["threshold"])
    return Outcome(fitted.scores, None, metrics, fitted.chosen), record


def _with_reference(attack: Attack, outcome: Outcome, cost: dict[str, Any], reference: DiffusionTarget,
                    evalset: EvaluationSet, protocol: Protocol,
                    scoring: ScoringSettings) -> tuple[Outcome, dict[str, Any], dict[str, Any]]:
    """The reference model's own scores and the calibrated ones; which is the run's main score, and its cost."""
    on_reference, predicted = reference_outcome(attack, reference, evalset, outcome.calibration, protocol, scoring)
    labels = evalset.labels.numpy()
    calibrated_scores = outcome.scores - on_reference.scores
    calibrated = Outcome(calibrated_scores, outcome.calibration,
                         measure(attack.name, calibrated_scores, labels, outcome.calibration, protocol), outcome.chosen)
    reference_queries = _tidy(predicted.queries / len(evalset))
    controls = {"reference_model": {"source": reference.source or reference.name, "kind": reference.kind,
                                    **on_reference.metrics, "queries_per_sample": reference_queries,
                                    **({"calibration": on_reference.chosen} if on_reference.chosen else {})}}
    if attack.calibration == "reference":  # the score that needs both models: both models' queries
        controls["uncalibrated"] = outcome.metrics
        return calibrated, controls, {**cost, "queries_per_sample": _tidy(cost["queries_per_sample"]
                                                                          + reference_queries)}
    controls["reference_calibrated"] = calibrated.metrics
    return outcome, controls, cost


def plot_roc(*results: AttackResult, title: str = "ROC") -> Any:
    """The ROC curves of several results on one figure (linear and log-log axes), each on its evaluation rows."""
    from mia.reporting.figures import plot_roc as draw

    return draw([(f"{r.attack} (AUC {r.metrics.get('auc', float('nan')):.3f})", r.roc()) for r in results], title)


def compare(results: Sequence[AttackResult], keys: Sequence[str] = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr",
                                                                   "asr_calibrated", "queries_per_sample")) -> str:
    """A small table of several results side by side (one row per attack)."""
    rows = [["attack", *keys]] + [[r.attack, *(_cell(r.metrics.get(k)) for k in keys)] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _tensor(features: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(features)


def _tidy(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _what_was_attacked(attack: Attack, target: DiffusionTarget) -> dict[str, Any]:
    return {"attack": attack.name, "settings": attack.settings(), "target": target.source or target.name,
            "target_kind": target.kind, "target_checkpoint": target.checkpoint,
            **({"target_lora": target.lora} if target.lora else {})}


def _cost(predicted: Predictions, n: int) -> dict[str, Any]:
    """The chosen setting's cost over the samples it scored; a tuning's grid is reported apart."""
    return {
        "queries_per_sample": _tidy(predicted.queries / n),
        "queries_per_sample_this_run": _tidy(predicted.queries_this_run / n),
        "seconds": round(predicted.seconds, 3),
        "seconds_per_1000": round(1000 * predicted.seconds / n, 3),
        "device": predicted.device,
    }


def _other_passes(target: DiffusionTarget, predicted: Predictions, n: int) -> dict[str, Any]:
    """The target's conditioning and the VAE / text-encoder / backward passes (and generation calls) its
    predictions took, apart from the denoiser's queries: made by this run on every device, or read from the cache."""
    names = dict.fromkeys([*target.passes(), *predicted.passes])  # the target's kinds of pass, made now or not
    passes = {f"{name}_per_sample": _tidy(predicted.passes.get(name, 0) / n)
              for name in names if predicted.passes.get(name, 0) or name not in OPTIONAL_PASSES}
    return {"conditioning": target.conditioning or "none", **passes}


__all__ = ["AttackResult", "Protocol", "ScoringSettings", "Tuning", "compare", "evaluation_set", "load_target",
           "make_attack", "plot_roc", "run_attack", "trainer_factory"]
