"""Gradients of a denoising loss with respect to the denoiser's parameters, one sample at a time (for GSA).

Targets are built frozen (``requires_grad_(False)``) and attacks run under Lightning's predict loop with
``inference_mode`` on. A gradient attack therefore turns autograd on locally (``inference_mode(False)`` and
``enable_grad``), sets ``requires_grad`` on the chosen parameters for the time of the batch and restores each
flag after, and copies its inputs (x0, the conditions), which were made in inference mode and could not be
saved for a backward pass, into ordinary tensors first. The model is still queried only through
``target.predict_noise`` (its forwards counted as queries); the target counts the backward passes that reach
the denoiser's output apart (``gradient_passes``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.targets.guidance import Condition


def chosen_parameters(target: DiffusionTarget, patterns: Sequence[str] | None) -> list[tuple[str, nn.Parameter]]:
    """The denoiser's parameter tensors whose names match one of ``patterns`` (fnmatch globs; None = every one),
    in module order. Refuses a denoiser without parameters and a pattern that matches none."""
    named = list(target.denoiser.named_parameters())
    if not named:
        raise MiaError(f"attack=gsa differentiates the denoising loss with respect to the denoiser's parameters; "
                       f"{target.name}'s denoiser has none (a closed-form model): attack a trained network")
    if patterns is None:
        return named
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in named):
            raise MiaError(f"attack.layers: {pattern!r} matches none of the denoiser's {len(named)} parameter "
                           f"tensors (e.g. {named[0][0]!r}); give glob patterns over their names, or null for all")
    return [(name, p) for name, p in named if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)]


@contextlib.contextmanager
def autograd_on(parameters: Sequence[nn.Parameter]) -> Iterator[None]:
    """Autograd on, even inside ``inference_mode``, with ``parameters`` requiring grad; every flag restored after."""
    before = [p.requires_grad for p in parameters]
    with torch.inference_mode(False), torch.enable_grad():
        try:
            for p in parameters:
                p.requires_grad_(True)
            yield
        finally:
            for p, flag in zip(parameters, before, strict=True):
                p.requires_grad_(flag)


def ordinary(x: torch.Tensor) -> torch.Tensor:
    """A copy that autograd may save (a tensor made in inference mode may not be); call inside ``autograd_on``."""
    return x.detach().clone()


def sample_condition(cond: Any, row: int) -> Any:
    """Row ``row`` of a batch's conditions (None, a Condition or a tensor), as ordinary tensors."""
    if cond is None:
        return None
    if isinstance(cond, Condition):
        return dataclasses.replace(
            cond, value=ordinary(cond.value[row:row + 1]),
            null=None if cond.null is None else ordinary(cond.null),
            captions=None if cond.captions is None else cond.captions[row:row + 1])
    if isinstance(cond, torch.Tensor):
        return ordinary(cond[row:row + 1])
    raise MiaError(f"attack=gsa cannot split conditions of type {type(cond).__name__} by sample")


def gradient_norms(loss: torch.Tensor, parameters: Sequence[nn.Parameter]) -> torch.Tensor:
    """float32 [P]: the L2 (Frobenius) norm of ∂loss/∂p for each parameter tensor p (0 where p is unused).

    Refuses a loss that carries no gradient: the denoiser's forward broke autograd (a detach, a NumPy round
    trip, a ``no_grad`` inside), so there is nothing to differentiate.
    """
    if not loss.requires_grad:
        raise MiaError("attack=gsa needs a differentiable denoiser, but its output carries no gradient (its forward "
                       "detaches or leaves autograd); use an attack that only queries the model")
    grads = torch.autograd.grad(loss, list(parameters), allow_unused=True)
    if all(g is None for g in grads):
        raise MiaError("attack=gsa: none of the chosen parameters (attack.layers) reaches the denoiser's output; "
                       "choose layers the forward pass uses")
    norms = [torch.zeros((), dtype=torch.float64, device=loss.device) if g is None
             else torch.linalg.vector_norm(g.detach().to(torch.float64)) for g in grads]
    return torch.stack(norms).to(torch.float32)
