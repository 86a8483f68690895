"""EMA weights through Lightning's weight-averaging callback, with the usual warm-up of the decay."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging

from mia.checks import require_number


def _ema_multi_avg_fn(decay: float):
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # Warm-up: early averages follow the weights closely, so short runs still export trained weights.
        n = float(num_averaged)
        rate = min(decay, (1.0 + n) / (10.0 + n))
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - rate)

    return update


class EMA(WeightAveraging):
    """Exponential moving average of the module's weights, updated after every optimizer step.

    Lightning swaps the averaged weights in for validation, saves both in checkpoints (so resume keeps the
    average) and copies the average into the module when training ends, which is what gets exported.
    """

    def __init__(self, decay: float = 0.999) -> None:
        require_number("callbacks.ema.decay", decay, 0.0, 1.0, open_interval=True)  # one line, not a traceback
        super().__init__(multi_avg_fn=_ema_multi_avg_fn(decay))
        self.decay = decay
