"""The parts of a latent text-to-image model: built from sizes, or loaded from a Stable-Diffusion-style folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase

from mia.errors import MiaError
from train_targets.tokenizer import clip_tokenizer

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class Parts:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: PreTrainedTokenizerBase
    scheduler: DDPMScheduler  # the training forward process (any DDPM-family config gives the same ᾱ)


def vae_factor(vae: AutoencoderKL) -> int:
    """How much the VAE downsamples each side (2 per encoder block after the first)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def build_parts(
    image_size: int, channels: int, unet: dict[str, Any], vae: dict[str, Any], text_encoder: dict[str, Any],
    scheduler: dict[str, Any], tokenizer_max_length: int, autoencoder: AutoencoderKL | None = None,
) -> Parts:
    """New, randomly initialised parts (but ``autoencoder`` when given); the keys that follow from the data or
    from each other are filled in."""
    tokenizer = clip_tokenizer(tokenizer_max_length)
    if autoencoder is None:
        autoencoder = AutoencoderKL(**{"in_channels": channels, "out_channels": channels, "sample_size": image_size,
                                       **vae})
    text_config = {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": tokenizer_max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **text_encoder,
    }
    encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    latent_channels = autoencoder.config.latent_channels
    unet_config = {
        # A size that does not divide is caught by check_fits, with a message, not here.
        "sample_size": max(1, image_size // vae_factor(autoencoder)),
        "in_channels": latent_channels,
        "out_channels": latent_channels,
        "cross_attention_dim": encoder.config.hidden_size,
        **unet,
    }
    return Parts(UNet2DConditionModel(**unet_config), autoencoder, encoder, tokenizer, DDPMScheduler(**scheduler))


def _folder(folder: str, needed: tuple[str, ...]) -> Path:
    path = Path(folder).expanduser()
    missing = [name for name in needed if not (path / name).is_dir()]
    if missing:
        raise MiaError(
            f"{path} lacks {', '.join(f'{m}/' for m in missing)}; give a Stable-Diffusion-style folder "
            "(unet/, vae/, text_encoder/, tokenizer/, scheduler/), e.g. a mia-train text-to-image export"
        )
    return path


def load_parts(folder: str) -> Parts:
    """Every part of a ``StableDiffusionPipeline`` folder (local files only; nothing is downloaded)."""
    path = _folder(folder, COMPONENTS)
    try:
        return Parts(
            unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True),
            vae=AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True),
            text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True),
            tokenizer=AutoTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True),
            scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True),
        )
    except (OSError, ValueError, TypeError) as err:
        raise MiaError(f"cannot load the text-to-image model in {path}: {err}") from err


def load_vae(folder: str) -> AutoencoderKL:
    """The ``vae/`` of a previous text-to-image export (or of any SD-style folder)."""
    path = _folder(folder, ("vae",))
    try:
        return AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise MiaError(f"cannot load the VAE in {path}/vae: {err}") from err


def check_parts(
    unet_model: UNet2DConditionModel, vae_model: AutoencoderKL, text_encoder: CLIPTextModel,
    tokenizer: PreTrainedTokenizerBase, channels: int, image_size: int,
) -> None:
    """Refuse data the parts cannot take and parts that do not fit each other, before any training."""
    vae, unet, encoder = vae_model.config, unet_model.config, text_encoder.config
    factor = vae_factor(vae_model)
    if vae.in_channels != channels or vae.out_channels != channels:
        raise MiaError(f"the VAE takes {vae.in_channels}-channel images but the data have {channels}; "
                       "set data.channels to match")
    if image_size % factor:
        raise MiaError(
            f"the VAE downsamples by {factor}, so it cannot encode {image_size}x{image_size} images; "
            f"set data.image_size to a multiple of {factor}"
        )
    latent_size = image_size // factor
    if unet.sample_size != latent_size:
        raise MiaError(
            f"the UNet takes {unet.sample_size}x{unet.sample_size} latents ({unet.sample_size * factor} px images) "
            f"but the data give {latent_size}x{latent_size}; set data.image_size={unet.sample_size * factor}"
        )
    if unet.in_channels != vae.latent_channels or unet.out_channels != vae.latent_channels:
        raise MiaError(f"the UNet takes {unet.in_channels} channels but the VAE makes {vae.latent_channels}")
    if latent_size % 2 ** (len(unet.block_out_channels) - 1):
        raise MiaError(f"{latent_size}x{latent_size} latents cannot be halved {len(unet.block_out_channels) - 1} "
                       "times by the UNet; use fewer UNet blocks or larger images")
    if unet.cross_attention_dim != encoder.hidden_size:
        raise MiaError(f"the UNet attends to {unet.cross_attention_dim}-wide text features but the text encoder "
                       f"makes {encoder.hidden_size}; set target.unet.cross_attention_dim to match")
    if tokenizer.model_max_length > encoder.max_position_embeddings:
        raise MiaError(f"the tokenizer pads to {tokenizer.model_max_length} tokens but the text encoder "
                       f"takes at most {encoder.max_position_embeddings}")
    if vae.latent_channels * latent_size**2 > channels * image_size**2:
        # The probe draws its latent noise from the data module's pixel-shaped noise.
        raise MiaError("the latents are larger than the images; use a VAE that downsamples")
