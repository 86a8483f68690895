"""The DDPM target as a LightningModule: diffusers' UNet2DModel trained with DDPMScheduler's forward process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from mia.data.images import to_model_range
from mia.errors import MiaError
from train_targets.denoising import DenoisingTarget

if TYPE_CHECKING:
    from train_targets.privacy import PrivateTraining


class DDPMTarget(DenoisingTarget):
    """Pixel ε-prediction DDPM, unconditional: x0 is the image; trained as usual or with DP-SGD (``privacy``)."""

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

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, condition: None = None) -> torch.Tensor:
        return self.unet(x_t, t).sample

    def encode(self, images: torch.Tensor, sample: bool) -> torch.Tensor:
        """uint8 images -> x0 in [-1, 1]: the pixels themselves."""
        return to_model_range(images)

    def trained_parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.unet.parameters()

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        self._empty_batch = len(batch[0]) == 0
        if self._empty_batch:
            # Poisson sampling (DP-SGD) can draw no member at all; diffusers' attention cannot run on a batch
            # of 0. No forward, no backward: the optimizer step still runs (on_before_optimizer_step gives it
            # empty per-sample gradients), so the noise is added and the accountant counts the step, as the
            # guarantee assumes.
            return None
        return super().training_step(batch, batch_idx)

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

    def preview(self) -> tuple[torch.Tensor, None]:
        return (self.sample(self.hparams.sample_count, self.hparams.sample_steps) + 1) / 2, None

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        if self.privacy is None:
            return optimizer
        # Opacus needs the training loader for the sampling rate; the data module builds the same one
        # Lightning trains on (Poisson-sampled under DP).
        return self.privacy.make_private(self.unet, optimizer, self.trainer.datamodule.train_dataloader())

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
