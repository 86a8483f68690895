"""A latent text-to-image target as a LightningModule, exported as a ``StableDiffusionPipeline`` folder.

The recipe is Stable Diffusion's: a KL autoencoder maps images to 4-channel latents (scaled by
``vae.config.scaling_factor``), a CLIP text encoder embeds the caption, and a ``UNet2DConditionModel``
learns ``ε_θ(z_t, t, text)`` with ``loss = ‖ε_θ(√ᾱ_t·z0 + √(1−ᾱ_t)·ε, t, c) − ε‖²``. Captions are replaced
by "" with probability ``caption_dropout``, so the null condition is trained too (classifier-free
guidance, CLiD's ∅ caption).

The VAE is frozen while the denoiser trains: it is trained first (train_targets/autoencoder.py), taken
from a previous export (``vae_from``), or comes with the folder being fine-tuned (``init_from``). It is
held outside the module's parameters (``Frozen``), so the EMA callback averages only what trains (UNet,
text encoder) and the exported VAE is exactly the one the UNet's latents came from; checkpoints carry it
under ``autoencoder``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
from transformers import PreTrainedTokenizerBase

from mia.data.images import to_model_range
from mia.errors import MiaError
from train_targets.autoencoder import (
    AutoencoderTraining,
    images_outside_split,
    latent_scaling_factor,
    outside_split,
    train_autoencoder,
)
from train_targets.denoising import DenoisingTarget
from train_targets.text_to_image_parts import build_parts, check_parts, load_parts, load_vae

log = logging.getLogger(__name__)


def autoencoder_from(config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> AutoencoderKL:
    """The frozen autoencoder a checkpoint saved, its config as it was (the measured scaling factor included)."""
    # A config lists the keys left at their defaults when the model was built (_use_default_values), and
    # from_config resets those to the defaults: the scaling factor registered after measuring it would be lost.
    vae = AutoencoderKL.from_config({k: v for k, v in config.items() if k != "_use_default_values"})
    vae.load_state_dict(state_dict)
    return vae.eval().requires_grad_(False)


class Frozen:
    """The parts that are not optimised here: the VAE and the tokenizer.

    Not a submodule, so the EMA callback never averages the VAE (its copy of the module shares this holder
    rather than copying it) and the exported VAE is exactly the one that made the UNet's latents.
    Checkpoints carry the VAE through on_save_checkpoint; the module moves it to its device in on_fit_start.
    """

    def __init__(self, vae: AutoencoderKL, tokenizer: PreTrainedTokenizerBase) -> None:
        self.vae = vae
        self.tokenizer = tokenizer

    def __deepcopy__(self, memo: dict) -> Frozen:
        return self


class TextToImageTarget(DenoisingTarget):
    """Latent ε-prediction diffusion conditioned on captions: VAE + CLIP text encoder + conditional UNet."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        unet: dict[str, Any],
        vae: dict[str, Any],
        text_encoder: dict[str, Any],
        scheduler: dict[str, Any],
        tokenizer_max_length: int = 77,
        init_from: str | None = None,
        vae_from: str | None = None,
        autoencoder: dict[str, Any] | None = None,
        train_text_encoder: bool = True,
        caption_dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 100,
        hflip: bool = False,
        sample_count: int = 4,
        sample_steps: int = 25,
        sample_guidance: float = 3.0,
        sample_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0.0 <= caption_dropout < 1.0:
            raise MiaError(f"target.caption_dropout must be in [0, 1), got {caption_dropout!r}")
        if init_from:
            parts = load_parts(init_from)
            log.info("fine-tuning the text-to-image model in %s (its sizes replace target.unet/vae/...)", init_from)
        else:
            given = load_vae(vae_from) if vae_from else None
            parts = build_parts(image_size, channels, unet, vae, text_encoder, scheduler, tokenizer_max_length, given)
        self.vae_ready = bool(init_from or vae_from)  # else it is trained first, in on_fit_start
        self.autoencoder_ids: list[str] | None = None  # the pool images it is trained on here, once it is
        self.unet = parts.unet
        self.text_encoder = parts.text_encoder
        self.text_encoder.requires_grad_(train_text_encoder)
        self.frozen = Frozen(parts.vae.eval().requires_grad_(False), parts.tokenizer)
        self.noise_scheduler = parts.scheduler
        self.autoencoder_training = AutoencoderTraining(**(autoencoder or {}))
        self._token_cache: dict[str, torch.Tensor] = {}

    @property
    def vae(self) -> AutoencoderKL:
        return self.frozen.vae

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.frozen.tokenizer

    def check_fits(self, channels: int, image_size: int) -> None:
        """Refuse data the VAE cannot encode and parts that do not fit together, before training starts."""
        check_parts(self.unet, self.vae, self.text_encoder, self.tokenizer, channels, image_size)

    def check_data(self, datamodule: Any) -> None:
        """The data must have captions, and (when the VAE is trained here) images outside the split."""
        if getattr(datamodule, "captions", None) is None:
            raise MiaError(
                "a text-to-image target trains on captioned data; use data=flickr8k or data=captioned_folder "
                "(images with metadata.jsonl/csv)"
            )
        if not self.vae_ready:
            outside_split(datamodule.pool, datamodule.prepare())

    def pipeline(self) -> StableDiffusionPipeline:
        """The exported pipeline (EMA weights once training has ended with EMA on); samples with DDIM."""
        # SD's sampler settings; the betas (and so ᾱ) are the training schedule's.
        sampler = DDIMScheduler.from_config(self.noise_scheduler.config, clip_sample=False, set_alpha_to_one=False)
        pipeline = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=sampler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    # --- the frozen autoencoder --------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        super().on_fit_start()  # compile=true
        self.vae.to(self.device)
        if self.vae_ready:
            return
        datamodule = self.trainer.datamodule
        settings = self.autoencoder_training
        images, self.autoencoder_ids = images_outside_split(datamodule.pool, datamodule.prepare(), settings.images,
                                                            settings.seed)
        log.info("training the autoencoder on %d pool images outside the split for %d steps",
                 len(images), settings.steps)
        train_autoencoder(self.vae, images, settings, self.device, self.loggers)
        scaling = latent_scaling_factor(self.vae, images, self.device, settings.seed)
        # Under DDP every rank trained the same VAE from the same seed; rank 0's is made everyone's.
        weights = {k: v.cpu() for k, v in self.vae.state_dict().items()}
        weights, scaling = self.trainer.strategy.broadcast((weights, scaling), src=0)
        self.vae.load_state_dict(weights)
        self.vae.register_to_config(scaling_factor=scaling)
        self.vae_ready = True
        log.info("autoencoder ready (latent scaling factor %.4f)", self.vae.config.scaling_factor)

    def also_trained_on(self) -> dict[str, list[str]]:
        # An autoencoder from another folder (vae_from, init_from) was trained there: started_from names it.
        return {"autoencoder": self.autoencoder_ids} if self.autoencoder_ids else {}

    def started_from(self) -> dict[str, str]:
        if self.hparams.init_from:  # a fine-tune (a LoRA's base too): every part came from that folder
            return {"base": str(self.hparams.init_from)}
        return {"autoencoder": str(self.hparams.vae_from)} if self.hparams.vae_from else {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["autoencoder"] = {"config": dict(self.vae.config), "state_dict": self.vae.state_dict(),
                                     "ready": self.vae_ready, "trained_on": self.autoencoder_ids}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("autoencoder")
        if saved is None:
            raise MiaError("the checkpoint holds no autoencoder; it was not written by a text-to-image target")
        self.frozen.vae = autoencoder_from(saved["config"], saved["state_dict"])
        self.vae_ready = saved["ready"]
        self.autoencoder_ids = saved.get("trained_on")  # None: a checkpoint from before the ids were kept

    # --- training ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool) -> torch.Tensor:
        """uint8 images -> scaled latents (a posterior sample for training, its mean for the probe)."""
        posterior = self.vae.encode(to_model_range(images)).latent_dist
        return (posterior.sample() if sample else posterior.mode()) * self.vae.config.scaling_factor

    def text_features(self, captions: list[str]) -> torch.Tensor:
        """The text encoder's last hidden states, as Stable Diffusion's UNet takes them; token ids are cached."""
        new = sorted({c for c in captions if c not in self._token_cache})
        if new:
            ids = self.tokenizer(new, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self._token_cache.update(zip(new, ids, strict=True))
        ids = torch.stack([self._token_cache[c] for c in captions]).to(self.device)
        return self.text_encoder(ids)[0]

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, captions: list[str]) -> torch.Tensor:
        return self.unet(z_t, t, encoder_hidden_states=self.text_features(captions)).sample

    def condition(self, batch: tuple, training: bool) -> list[str]:
        """The batch's captions (its last item); in training, each replaced by "" with ``caption_dropout``."""
        captions = list(batch[-1])
        if not training:
            return captions
        # Classifier-free guidance training: some captions become the null ("") condition.
        drop = torch.rand(len(captions)) < self.hparams.caption_dropout
        return ["" if dropped else caption for caption, dropped in zip(captions, drop.tolist(), strict=True)]

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        parameters = [*self.unet.parameters()]
        if self.hparams.train_text_encoder:
            parameters += [*self.text_encoder.parameters()]
        return parameters

    @torch.no_grad()
    def sample(self, prompts: list[str], steps: int, guidance_scale: float, seed: int = 0) -> torch.Tensor:
        """Images in [0, 1] for ``prompts`` from the pipeline (DDIM, classifier-free guidance; previews only)."""
        generator = torch.Generator(self.device).manual_seed(seed)
        return self.pipeline()(prompts, num_inference_steps=steps, guidance_scale=guidance_scale,
                               generator=generator, output_type="pt").images

    def preview(self) -> tuple[torch.Tensor, list[str]]:
        """Previews for the first members' captions."""
        captions = self.trainer.datamodule.captions[0][: self.hparams.sample_count]
        return self.sample(captions, self.hparams.sample_steps, self.hparams.sample_guidance).float(), captions
