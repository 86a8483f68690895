"""EMA weights through Lightning's weight-averaging callback, with the usual warm-up of the decay."""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from mia.checks import require_number

log = logging.getLogger(__name__)


def _ema_multi_avg_fn(decay: float):
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # Warm-up: early averages follow the weights closely, so short runs still export trained weights.
        n = float(num_averaged)
        rate = min(decay, (1.0 + n) / (10.0 + n))
        # A frozen parameter is shared with the module (EMA.setup), so its "average" is itself: nothing to do.
        floats = [(a, c) for a, c in zip(averaged, current, strict=True)
                  if a.is_floating_point() and a.data_ptr() != c.data_ptr()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - rate)

    return update


class EMA(WeightAveraging):
    """Exponential moving average of the module's weights, updated after every optimizer step.

    Lightning swaps the averaged weights in for validation (so the probe and the sample grids see them),
    saves both in checkpoints (so resume keeps the average) and copies the average into the module when
    training ends. The average lives on the training device, and the module always ends fit holding it,
    which is what gets exported.

    Only what trains is averaged: a parameter that does not (``requires_grad`` off: a LoRA's frozen base, a
    frozen text encoder) is the module's own tensor in the average too, not a copy, so a fine-tune's base is
    held once in memory and written once per checkpoint. Its average would be itself anyway.
    """

    def __init__(self, decay: float = 0.999, device: str | None = None) -> None:
        require_number("callbacks.ema.decay", decay, 0.0, 1.0, open_interval=True)  # one line, not a traceback
        super().__init__(device=device, multi_avg_fn=_ema_multi_avg_fn(decay))
        self.decay = decay
        self._average_in = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning calls this before the strategy moves the module to its device, so WeightAveraging's
        # default (the module's device at this moment) is the CPU: the average would stay there and every
        # update would copy all weights across. The strategy's root device is where training runs.
        super().setup(trainer, pl_module, stage)
        if self._average_model is not None and self._device is None:
            shared = share_frozen(self._average_model.module, pl_module)
            self._average_model.to(trainer.strategy.root_device)
            log.info("EMA of the weights kept on %s (%d frozen parameters shared, not copied)",
                     trainer.strategy.root_device, shared)
        self._average_in = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._average_in = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resuming at or past max_steps (or max_steps=0) skips the fit loop and with it on_train_end: the
        # module would still hold the checkpoint's raw weights. The export is the average either way.
        if self._average_model is not None and not self._average_in:
            self._copy_average_to_current(pl_module)
            self._average_in = True


def share_frozen(average: torch.nn.Module, module: torch.nn.Module) -> int:
    """Put each of ``module``'s frozen parameters in its deep copy ``average`` in place of the copy; returns how many.

    Only when the average lives where the module does (moving one moves the other): EMA(device=None).
    """
    shared = 0
    for (name, copy), (own_name, own) in zip(average.named_modules(), module.named_modules(), strict=True):
        assert name == own_name, f"the EMA copy's modules differ from the module's ({name} vs {own_name})"
        for key, parameter in own.named_parameters(recurse=False):
            if not parameter.requires_grad:
                copy._parameters[key] = parameter  # the same Parameter object: no second copy of the weights
                shared += 1
    return shared
