"""The reference-model control: the same attack, on the same samples, against a model that did not train on them.

A reference model (the base model of a fine-tune, or a target trained on a disjoint split of the same pool)
shows what an attack's scores say about the samples themselves rather than about membership: its AUC on the
same samples is the part that is not membership. ``score_target − score_reference`` per sample is the
offline reference calibration known from LiRA and RMIA on classifiers (``attack.calibration=reference``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mia.attacks.base import Attack
from mia.data.evaluation_set import EvaluationSet
from mia.errors import MiaError
from mia.evaluation.protocol import Outcome, Protocol, apply
from mia.scoring.engine import Predictions, ScoringSettings, predict
from mia.targets.base import DiffusionTarget


def check_comparable(target: DiffusionTarget, reference: DiffusionTarget, where: str | None = None) -> None:
    """The reference (or a shadow model, named by ``where``) must take what the target takes: the same schedule,
    input shape and conditioning."""
    where = where or f"the reference model {reference.source or reference.name}"
    if reference.sample_shape != target.sample_shape or reference.image_shape != target.image_shape:
        raise MiaError(f"{where} takes inputs of shape {list(reference.sample_shape)} (images "
                       f"{list(reference.image_shape)}) but the target takes {list(target.sample_shape)} (images "
                       f"{list(target.image_shape)}); give a model of the target's kind and size")
    same_schedule = len(reference.alphas_cumprod) == len(target.alphas_cumprod) and torch.allclose(
        reference.alphas_cumprod.cpu(), target.alphas_cumprod.cpu(), rtol=1e-6, atol=1e-9)
    if not same_schedule:
        raise MiaError(f"{where} has another noise schedule than the target ({len(reference.alphas_cumprod)} vs "
                       f"{len(target.alphas_cumprod)} steps, or other ᾱ); the same attack would ask the two models "
                       "different questions. Give a model trained with the target's schedule")
    if reference.conditioning != target.conditioning or reference.is_latent != target.is_latent:
        raise MiaError(f"{where} is {reference.conditioning or 'unconditional'}"
                       f"{' (latent)' if reference.is_latent else ''} but the target is "
                       f"{target.conditioning or 'unconditional'}{' (latent)' if target.is_latent else ''}")


def reference_outcome(attack: Attack, reference: DiffusionTarget, evalset: EvaluationSet, mask: np.ndarray | None,
                      protocol: Protocol, scoring: ScoringSettings) -> tuple[Outcome, Predictions]:
    """The attack (a fresh copy of the setting that ran, fitted anew) on the reference, every sample."""
    fresh = dataclasses.replace(attack)  # nothing fitted on the target carries over
    predicted = predict(fresh, reference, evalset, scoring)
    return apply(fresh, predicted.features, evalset.labels.numpy(), mask, protocol), predicted
