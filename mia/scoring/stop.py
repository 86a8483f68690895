"""Stop a prediction run on SIGTERM (what Slurm and `kill` send): Lightning notes the signal but its predict loop,
unlike its fit and evaluation loops, never acts on it, so a long attack would run on until SIGKILL."""

from __future__ import annotations

import lightning as L

from mia.errors import MiaError


class StopOnSigterm(L.Callback):
    """After each batch, stop with one line when the process received SIGTERM (``trainer.received_sigterm``)."""

    def on_predict_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.received_sigterm:
            raise MiaError("stopped by SIGTERM; the predictions made so far are kept in the prediction cache "
                           "(when it is on): the same command again computes only the rest")
