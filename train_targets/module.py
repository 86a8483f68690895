"""The DDPM target as a LightningModule: diffusers' UNet2DModel trained with DDPMScheduler's forward process."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from torchvision.utils import make_grid, save_image

from mia.data.images import to_model_range
from mia.errors import MiaError

if TYPE_CHECKING:
    from train_targets.privacy import PrivateTraining


class DDPMTarget(L.LightningModule):
    """ε-prediction DDPM: ``loss = ‖ε_θ(√ᾱ_t·x0 + √(1−ᾱ_t)·ε, t) − ε‖²`` with t uniform over the schedule."""

    def __init__(
        self,
        unet: dict[str, Any],
        scheduler: dict[str, Any],
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 100,
        hflip: bool = True,
        sample_count: int = 16,
        sample_steps: int = 50,
        sample_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.unet = UNet2DModel(**unet)
        self.noise_scheduler = DDPMScheduler(**scheduler)
        # DP-SGD (training.dp): set by mia-train before fit; None trains as usual. Not a hyperparameter: the
        # checkpoint keeps its accounting under "privacy" (on_save_checkpoint).
        self.privacy: PrivateTraining | None = None

    @property
    def denoiser(self) -> UNet2DModel:
        """The network an attack will query (what the parameter count counts)."""
        return self.unet

    def check_fits(self, channels: int, image_size: int) -> None:
        """Refuse data the UNet cannot take, before training starts."""
        unet = self.unet.config
        if unet.in_channels != channels or unet.out_channels != channels or unet.sample_size != image_size:
            raise MiaError(
                f"the model takes {unet.in_channels}x{unet.sample_size}x{unet.sample_size} images but the data are "
                f"{channels}x{image_size}x{image_size}; set target.unet.* to match data.channels and data.image_size"
            )

    def pipeline(self) -> DDPMPipeline:
        """The diffusers pipeline that gets exported (the EMA weights, once training has ended with EMA on)."""
        return DDPMPipeline(unet=self.unet, scheduler=self.noise_scheduler)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t).sample

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        x0 = to_model_range(batch[0])
        self._empty_batch = len(x0) == 0
        if self._empty_batch:
            # Poisson sampling (DP-SGD) can draw no member at all; diffusers' attention cannot run on a batch
            # of 0. No forward, no backward: the optimizer step still runs (on_before_optimizer_step gives it
            # empty per-sample gradients), so the noise is added and the accountant counts the step, as the
            # guarantee assumes.
            return None
        if self.hparams.hflip:
            flip = torch.rand(len(x0), device=x0.device) < 0.5
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        # One timestep and one noise per member, and a mean over the batch of each member's own loss: the
        # per-sample loss DP-SGD clips the gradient of (Opacus' loss_reduction="mean").
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(x0),), device=x0.device)
        loss = F.mse_loss(self(self.noise_scheduler.add_noise(x0, noise, t), t), noise)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        images, labels, noise, t = batch
        x0 = to_model_range(images)
        per_sample = (self(self.noise_scheduler.add_noise(x0, noise, t), t) - noise).pow(2).flatten(1).mean(1)
        members = labels == 1
        # Weighted by the number of samples of each class in the batch, so the epoch means are exact.
        for name, rows in (("val/loss_members", members), ("val/loss_nonmembers", ~members)):
            if rows.any():
                self.log(name, per_sample[rows].mean(), batch_size=int(rows.sum()), sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        # Drawn here, not at the epoch's end: callbacks' hooks run before the module's, and weight averaging
        # swaps the EMA weights in at the start of validation and out again at its end. One grid per run
        # under DDP: rank zero draws it.
        if self.hparams.sample_count > 0 and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self._log_samples()

    def on_validation_epoch_end(self) -> None:
        metrics = self.trainer.callback_metrics
        if "val/loss_members" in metrics and "val/loss_nonmembers" in metrics:
            gap = metrics["val/loss_nonmembers"] - metrics["val/loss_members"]
            self.log("val/loss_gap", gap, prog_bar=True)

    @torch.no_grad()
    def sample(self, n: int, steps: int, seed: int = 0) -> torch.Tensor:
        """n images in [-1, 1] from a deterministic DDIM sampler with ``steps`` steps (previews only)."""
        sampler = DDIMScheduler.from_config(self.noise_scheduler.config)
        sampler.set_timesteps(steps)
        cfg = self.unet.config
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=generator).to(self.device)
        for t in sampler.timesteps:
            x = sampler.step(self.unet(x, t.to(self.device)).sample, t, x).prev_sample
        return x.clamp(-1, 1)

    def sample_grid(self) -> torch.Tensor:
        """The preview grid of ``sample_count`` samples, in [0, 1]."""
        images = (self.sample(self.hparams.sample_count, self.hparams.sample_steps) + 1) / 2
        # Small images (8x8 digits) are enlarged, without smoothing, so the grid can be looked at.
        scale = max(1, 64 // images.shape[-1])
        return make_grid(F.interpolate(images, scale_factor=scale, mode="nearest"), nrow=4, pad_value=0.5)

    def _log_samples(self) -> None:
        grid = self.sample_grid()
        step = self.global_step
        if self.hparams.sample_dir:
            path = Path(self.hparams.sample_dir) / f"samples_step{step:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(grid, path)
        for logger in self.loggers:
            if hasattr(logger, "log_image"):  # W&B; the CSV logger keeps scalars only
                logger.log_image(key="samples", images=[grid.float().cpu()], step=step)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(
            self.unet.parameters(),
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
            betas=tuple(self.hparams.betas),
        )
        if self.privacy is not None:
            # Opacus needs the training loader for the sampling rate; the data module builds the same one
            # Lightning trains on (Poisson-sampled under DP).
            optimizer = self.privacy.make_private(self.unet, optimizer, self.trainer.datamodule.train_dataloader())
        warmup = max(1, int(self.hparams.warmup_steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.privacy is not None and getattr(self, "_empty_batch", False):
            self.privacy.empty_step(self.unet)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.privacy is not None:  # the accountant's history: a resumed run's ε counts every step
            checkpoint["privacy"] = self.privacy.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("privacy")
        if self.privacy is None and saved is not None:
            raise MiaError("the checkpoint was trained with DP-SGD (training.dp); resume it with training.dp.enabled="
                           "true, or train a non-private target from the start")
        if self.privacy is not None:
            if saved is None:
                raise MiaError("the checkpoint was trained without DP-SGD, so its steps are not private; train with "
                               "training.dp.enabled=true from the start instead of resuming it")
            self.privacy.load_state_dict(saved)
