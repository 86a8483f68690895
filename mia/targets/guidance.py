"""A conditional target's condition for one batch, and classifier-free guidance applied inside ``denoise``.

Guidance lives in the target's noise prediction, so every attack gets it without knowing of it:
``ε̃ = ε_θ(x, t, ∅) + w·(ε_θ(x, t, c) − ε_θ(x, t, ∅))``. At w = 1 (the default, as the literature attacks)
that is the conditional prediction alone, one query; at w > 1 the conditional and unconditional passes
run as one batch of 2B, so the query counter sees (and reports) two queries per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Condition:
    """What the denoiser is conditioned on, row by row, and how strongly."""

    value: torch.Tensor  # text embeddings [B, L, D] or class labels [B]
    null: torch.Tensor | None  # the unconditional counterpart, one row [1, ...] (None: the model has none)
    guidance_scale: float = 1.0
    captions: list[str] | None = None  # the texts behind ``value`` (text-conditional targets)

    def __len__(self) -> int:
        return len(self.value)

    def rows(self, index: torch.Tensor) -> Condition:
        """The rows ``index`` (repeats allowed) of this condition, with the same null and scale."""
        captions = None if self.captions is None else [self.captions[i] for i in index.tolist()]
        return Condition(self.value[index.to(self.value.device)], self.null, self.guidance_scale, captions)


def guided(forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
           timesteps: torch.Tensor, cond: Condition) -> torch.Tensor:
    """ε with classifier-free guidance; ``forward(x, timesteps, value)`` is one counted denoiser pass."""
    if len(cond) != len(x):
        raise ValueError(f"{len(cond)} conditions for a batch of {len(x)}")
    if cond.guidance_scale == 1:
        return forward(x, timesteps, cond.value)
    null = cond.null.to(cond.value.device).expand(len(x), *cond.value.shape[1:])
    both = forward(torch.cat([x, x]), torch.cat([timesteps, timesteps]), torch.cat([null, cond.value]))
    unconditional, conditional = both.chunk(2)
    return unconditional + cond.guidance_scale * (conditional - unconditional)
