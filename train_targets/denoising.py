"""The steps every ε-prediction training target shares, as one LightningModule base class.

A target subclasses ``DenoisingTarget`` and says only what differs: how a batch's images become x0
(``encode``: pixels, VAE latents), what the denoiser is conditioned on (``condition``: nothing, captions),
the network (``forward``), what trains (``trained_parameters``), how previews are sampled (``preview``),
what is exported (``pipeline``, or ``export`` when that is not a whole pipeline) and what data it fits
(``check_fits``). The training step, the member/non-member probe, the loss gap, the preview grids and the
optimizer live here once, so every target draws its randomness in the same order and logs the same keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, SchedulerMixin
from torchvision.utils import make_grid, save_image

log = logging.getLogger(__name__)


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """Each image flipped left-right with probability 1/2 (one uniform draw per image, on its device)."""
    flip = torch.rand(len(images), device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def probe_noise(noise: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The probe's fixed pixel-shaped noise in x0's shape: itself for pixel models; for latents its first
    C·h·w values per sample, as standard-normal as the whole (member j and non-member j still share it)."""
    if noise.shape == x0.shape:
        return noise
    return noise.flatten(1)[:, : x0[0].numel()].reshape(x0.shape)


def preview_grid(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as one grid, 4 a row; small ones (8x8 digits) enlarged without smoothing, to be looked at."""
    scale = max(1, 64 // images.shape[-1])
    return make_grid(F.interpolate(images, scale_factor=scale, mode="nearest"), nrow=4, pad_value=0.5)


class DenoisingTarget(L.LightningModule):
    """ε-prediction: ``loss = ‖ε_θ(√ᾱ_t·x0 + √(1−ᾱ_t)·ε, t, c) − ε‖²`` with t uniform over the schedule.

    A subclass sets ``self.unet`` (the denoiser) and ``self.noise_scheduler`` (diffusers' DDPM-family
    scheduler) and saves the hyperparameters read here: ``lr``, ``weight_decay``, ``betas``,
    ``warmup_steps``, ``hflip``, ``sample_count``, ``sample_dir``. Training batches are ``(images, ...)``,
    probe batches ``(images, labels, noise, t, ...)``, images uint8; anything after is the subclass's
    (e.g. captions, read by ``condition``).
    """

    unet: torch.nn.Module
    noise_scheduler: SchedulerMixin
    compile_mode: str | None = None  # compile=true: the torch.compile mode the denoiser trains under (train.py)

    def on_fit_start(self) -> None:
        # After the callbacks' setup, so the EMA's deep copy of the weights is made from the eager module (not
        # configure_model: Lightning's weight averaging warns on any model that overrides it). nn.Module.compile
        # works in place, so state_dict keys, checkpoints and the export are unchanged. Shapes are static first;
        # a batch of another size (an epoch's last, a preview) recompiles once, with a dynamic batch size.
        if self.compile_mode is not None:
            self.denoiser.compile(mode=None if self.compile_mode == "default" else self.compile_mode)

    # --- what a target says ----------------------------------------------------------------------------

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, condition: Any = None) -> torch.Tensor:
        """ε_θ(x_t, t, condition)."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor, sample: bool) -> torch.Tensor:
        """uint8 images -> x0; ``sample``: a random draw where the encoder has one (training), else its mean (probe)."""
        raise NotImplementedError

    def condition(self, batch: tuple, training: bool) -> Any:
        """What the denoiser is conditioned on for this batch (None: unconditional). Drawn after ``encode``."""
        return None

    def trained_parameters(self) -> Iterable[torch.nn.Parameter]:
        """The parameters the optimizer updates."""
        raise NotImplementedError

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer before the warm-up is put on it (e.g. made private for DP-SGD); as is by default."""
        return optimizer

    def preview(self) -> tuple[torch.Tensor, list[str] | None]:
        """``sample_count`` preview images in [0, 1], and the captions they were drawn for (None if none)."""
        raise NotImplementedError

    def pipeline(self) -> DiffusionPipeline:
        """The diffusers pipeline that gets exported."""
        raise NotImplementedError

    def export(self) -> Any:
        """What mia-train writes to the target folder: an object with ``save_pretrained(folder)`` (the pipeline)."""
        return self.pipeline()

    def parameter_count(self) -> int:
        """training.json's ``parameters``: those that learn the members (the denoiser's, by default)."""
        return sum(p.numel() for p in self.denoiser.parameters())

    def also_trained_on(self) -> dict[str, list[str]]:
        """Pool samples outside the split that a part of the model trained on, by part (split.json records them)."""
        return {}

    def started_from(self) -> dict[str, str]:
        """Folders whose weights this model starts from, by part ("base": all of them, "autoencoder"): what those
        trained on is carried into split.json too (train_targets.inherited). None for a model built fresh."""
        return {}

    def training_record(self) -> dict[str, Any]:
        """What the target adds to training.json (e.g. a LoRA's base and rank); nothing by default."""
        return {}

    def check_fits(self, channels: int, image_size: int) -> None:
        """Refuse data the model cannot take (a MiaError), before training starts."""
        raise NotImplementedError

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network an attack will query (what the parameter count counts)."""
        return self.unet

    # --- the shared steps ------------------------------------------------------------------------------

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor | None:
        images = batch[0]
        # The draws, in this order: flips, the encoder's sample, the condition's (e.g. caption dropout), the
        # noise, the timesteps. Flipping before encoding flips what the model sees, latents included.
        if self.hparams.hflip:
            images = random_hflip(images)
        x0 = self.encode(images, sample=True)
        condition = self.condition(batch, training=True)
        # One timestep and one noise per member, and a mean over the batch of each member's own loss: the
        # per-sample loss DP-SGD clips the gradient of (Opacus' loss_reduction="mean").
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(x0),), device=x0.device)
        loss = F.mse_loss(self(self.noise_scheduler.add_noise(x0, noise, t), t, condition), noise)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        images, labels, pixel_noise, t = batch[:4]
        x0 = self.encode(images, sample=False)
        noise = probe_noise(pixel_noise, x0)
        prediction = self(self.noise_scheduler.add_noise(x0, noise, t), t, self.condition(batch, training=False))
        per_sample = (prediction - noise).pow(2).flatten(1).mean(1)
        members = labels == 1
        # Weighted by the number of samples of each class in the batch, so the epoch means are exact.
        for name, rows in (("val/loss_members", members), ("val/loss_nonmembers", ~members)):
            if rows.any():
                self.log(name, per_sample[rows].mean(), batch_size=int(rows.sum()), sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        # Drawn here, not at the epoch's end: callbacks' hooks run before the module's, and weight averaging
        # swaps the EMA weights in at the start of validation and out again at its end, so the grid shows the
        # weights that are exported. One grid per run under DDP: rank zero draws it.
        if self.previews_due() and self.trainer.is_global_zero:
            self.log_samples()

    def on_validation_epoch_end(self) -> None:
        metrics = self.trainer.callback_metrics
        if "val/loss_members" in metrics and "val/loss_nonmembers" in metrics:
            self.log("val/loss_gap", metrics["val/loss_nonmembers"] - metrics["val/loss_members"], prog_bar=True)

    def previews_due(self) -> bool:
        """Whether this validation draws a preview grid (never in the sanity check)."""
        return self.hparams.sample_count > 0 and not self.trainer.sanity_checking

    def sample_grid(self) -> torch.Tensor:
        """The preview grid of ``sample_count`` samples, in [0, 1]."""
        return preview_grid(self.preview()[0])

    def log_samples(self) -> None:
        """Draw the preview grid; save it under ``sample_dir`` and hand it to loggers that take images (W&B)."""
        images, captions = self.preview()
        grid = preview_grid(images)
        step = self.global_step
        if self.hparams.sample_dir:
            path = Path(self.hparams.sample_dir) / f"samples_step{step:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(grid, path)
        caption = {} if captions is None else {"caption": ["; ".join(captions)]}
        for logger in self.loggers:
            if hasattr(logger, "log_image"):  # W&B; the CSV logger keeps scalars only
                logger.log_image(key="samples", images=[grid.float().cpu()], step=step, **caption)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.trained_parameters(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay, betas=tuple(self.hparams.betas))
        optimizer = self.wrap_optimizer(optimizer)
        warmup = max(1, int(self.hparams.warmup_steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
