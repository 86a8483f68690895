"""Latent text-to-image pipelines (the ``StableDiffusionPipeline`` folder format) as targets.

x0 is the VAE latent times ``vae.config.scaling_factor`` (docs/method.md, "Notation"); the condition is the
CLIP text embedding of each sample's caption. ``encode`` (the VAE) and the text encoder run once per
sample per batch and are counted apart from the denoiser's queries.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mia.errors import MiaError
from mia.targets.base import DiffusionTarget, padded_passes, rows_per_pass
from mia.targets.guidance import Condition, guided
from mia.targets.identity import file_digest
from mia.targets.schedule import Schedule, read_schedule

log = logging.getLogger(__name__)

# Folder, the class model_index.json must name for it, the library that loads it.
COMPONENTS = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": (),  # any DDPM-family class (mia.targets.schedule)
}
LATENT_MODES = ("mean", "sample")
# Rows per VAE pass: the largest power of two up to 64 whose images hold at most 2^23 numbers (8 rows of
# 512x512x3, as Stable Diffusion's encoder's activations for a whole batch would not fit; 64 rows at 64x64 and
# below, where smaller passes cost time); the last pass padded, as their round-off depends on the pass's shape
# too (docs/method.md, "batch invariance"). The text encoder's passes are 64 captions at any image size.
MAX_ENCODE_ROWS = 64
ENCODE_VALUES = 1 << 23
TEXT_ROWS = 64
# The SampleNoise stream of the ``target.latent=sample`` draw: far from the small streams attacks use.
LATENT_STREAM = 1 << 40


def present(index: dict[str, Any], component: str) -> bool:
    """Whether ``model_index.json`` lists a component (absent ones are written as [null, null])."""
    entry = index.get(component)
    return isinstance(entry, list | tuple) and len(entry) == 2 and entry[1] is not None


def is_latent_pipeline(index: dict[str, Any]) -> bool:
    return present(index, "vae")


def _counter(target: LatentTextTarget, attribute: str):
    def count(module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = args[0] if args else next(iter(kwargs.values()))
        setattr(target, attribute, getattr(target, attribute) + int(first.shape[0]))
    return count


class LatentTextTarget(DiffusionTarget):
    """A ``UNet2DConditionModel`` on VAE latents, conditioned on CLIP text embeddings of the captions."""

    conditioning = "text"
    is_latent = True
    fingerprint: str | None = None  # sha256 over the folder's component files (folder_fingerprint), set by the loader

    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer: Any, schedule: Schedule,
                 latent: str = "mean", name: str = "target", identity: str = "") -> None:
        size = unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        super().__init__(unet, schedule.alphas_cumprod, (unet.config.in_channels, height, width), name, identity)
        self.beta_schedule = schedule.beta_schedule
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.latent = latent
        # The VAE halves the resolution once per encoder block after the first, as diffusers' pipelines compute it.
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.encoder_passes = 0
        self.decoder_passes = 0  # black-box attacks decode what they generate
        self.text_encoder_passes = 0
        self._null: torch.Tensor | None = None
        self._warned_truncation = False
        self.vae.encoder.register_forward_pre_hook(_counter(self, "encoder_passes"), with_kwargs=True)
        self.vae.decoder.register_forward_pre_hook(_counter(self, "decoder_passes"), with_kwargs=True)
        self.text_encoder.register_forward_pre_hook(_counter(self, "text_encoder_passes"), with_kwargs=True)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, height, width = self.sample_shape
        return self.vae.config.in_channels, height * self.factor, width * self.factor

    def image_shape_for(self, size: int | None) -> tuple[int, int, int]:
        if size is None:
            return self.image_shape
        if isinstance(size, bool) or not isinstance(size, int) or size < self.factor or size % self.factor:
            raise MiaError(f"data.image_size={size!r}: the VAE of {self.name} encodes images whose sides are "
                           f"multiples of {self.factor}; use e.g. data.image_size={self.image_shape[1]}")
        return self.vae.config.in_channels, size, size

    def passes(self) -> dict[str, int]:
        decoded = {"decoder_passes": self.decoder_passes} if self.decoder_passes else {}
        return {"encoder_passes": self.encoder_passes, "text_encoder_passes": self.text_encoder_passes, **decoded,
                **super().passes()}

    def encode(self, images: torch.Tensor, noise: Any = None) -> torch.Tensor:
        """VAE latents × scaling factor: the posterior mean, or a draw from the sample's seeded noise."""
        height, width = images.shape[-2:]
        if height % self.factor or width % self.factor:
            raise MiaError(f"images of {height}x{width} cannot be encoded by the VAE of {self.name} (sides must be "
                           f"multiples of {self.factor}); set data.image_size to such a size")
        if self.latent == "sample" and noise is None:
            raise ValueError("target.latent=sample draws from the per-sample noise; pass the batch's SampleNoise")
        weight = next(self.vae.parameters())
        size = encode_rows(images.shape[1:])
        means, stds = [], []
        for rows, real in padded_passes(len(images), size):
            posterior = self.vae.encode(images[rows.to(images.device)].to(weight)).latent_dist
            self.encoder_passes -= size - real  # the padding rows are not samples
            means.append(posterior.mean[:real].float())
            stds.append(posterior.std[:real].float())
        z = torch.cat(means)
        if self.latent == "sample":  # latent_dist.sample(), with the sample's own seeded draw
            z = z + torch.cat(stds) * noise.randn(z.shape[1:], stream=LATENT_STREAM, device=z.device)
        config = self.vae.config
        shift = getattr(config, "shift_factor", None)
        return (z - shift) * config.scaling_factor if shift is not None else z * config.scaling_factor

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Latents (× scaling factor) -> images in [-1, 1] through the VAE decoder, as the pipeline decodes."""
        config = self.vae.config
        shift = getattr(config, "shift_factor", None)
        z = x0 / config.scaling_factor + (shift if shift is not None else 0)
        weight = next(self.vae.parameters())
        size = encode_rows((self.vae.config.in_channels, z.shape[-2] * self.factor, z.shape[-1] * self.factor))
        images = [self.vae.decode(z[start:start + size].to(weight)).sample.float()
                  for start in range(0, len(z), size)]
        return torch.cat(images)

    def embed(self, captions: list[str]) -> torch.Tensor:
        """CLIP text embeddings [B, L, D] (one text-encoder pass per caption), as the SD pipeline makes them."""
        tokens = self.tokenizer(list(captions), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        if not self._warned_truncation:
            lengths = self.tokenizer(list(captions), truncation=False, verbose=False).input_ids
            longer = sum(len(ids) > self.tokenizer.model_max_length for ids in lengths)
            if longer:
                self._warned_truncation = True
                log.warning("captions longer than the text encoder's %d tokens are truncated, as the pipeline does "
                            "(%d in the first batch that has any)", self.tokenizer.model_max_length, longer)
        device = next(self.text_encoder.parameters()).device
        masked = getattr(self.text_encoder.config, "use_attention_mask", False)
        parts = []
        for rows, real in padded_passes(len(captions), TEXT_ROWS):
            mask = tokens.attention_mask[rows].to(device) if masked else None
            parts.append(self.text_encoder(tokens.input_ids[rows].to(device), attention_mask=mask)[0][:real])
            self.text_encoder_passes -= TEXT_ROWS - real  # the padding rows are not captions
        return torch.cat(parts)

    def null_embedding(self) -> torch.Tensor:
        """The empty prompt's embedding [1, L, D], encoded once per run."""
        device = next(self.text_encoder.parameters()).device
        if self._null is None or self._null.device != device:
            self._null = self.embed([""])
        return self._null

    def conditions(self, batch: dict[str, Any], guidance_scale: float = 1.0) -> Condition:
        self.check_guidance(guidance_scale)
        captions = batch.get("caption")
        if captions is None:
            raise MiaError(f"{self.name} is text-conditional but the evaluation set has no captions; give captioned "
                           "folders (metadata.jsonl with file_name and text) or data.caption=none")
        return self.text_condition(list(captions), guidance_scale)

    def text_condition(self, captions: list[str], guidance_scale: float = 1.0) -> Condition:
        """The condition of arbitrary captions (CLiD's degraded ones), with the same guidance."""
        null = self.null_embedding() if guidance_scale != 1 else None
        return Condition(self.embed(captions), null, guidance_scale, list(captions))

    def empty_condition(self, n: int, guidance_scale: float = 1.0) -> Condition:
        """The empty caption for ``n`` rows (its embedding is encoded once per run, not once per row)."""
        null = self.null_embedding()
        return Condition(null.expand(n, *null.shape[1:]), null if guidance_scale != 1 else None, guidance_scale,
                         [""] * n)

    def denoise(self, x_t: torch.Tensor, timesteps: torch.Tensor, cond: Condition) -> torch.Tensor:
        if not isinstance(cond, Condition):
            raise MiaError(f"{self.name} is text-conditional; the attack passed no condition")
        return guided(lambda x, t, value: self.denoiser(x, t, encoder_hidden_states=value.to(x.dtype)).sample,
                      x_t, timesteps, cond)


def encode_rows(image_shape: tuple[int, ...]) -> int:
    """Rows per VAE pass for images of ``image_shape`` (C, H, W): see ENCODE_VALUES."""
    return rows_per_pass(image_shape, ENCODE_VALUES, MAX_ENCODE_ROWS)


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else err.__class__.__name__


def check_components(path: Path, index: dict[str, Any]) -> None:
    """Refuse a folder that is not in the StableDiffusionPipeline format (a component missing, or of another class)."""
    if present(index, "text_encoder_2"):
        raise MiaError(f"{path} has two text encoders (a Stable Diffusion XL pipeline); mia attacks the "
                       "StableDiffusionPipeline format (one CLIP text encoder)")
    for component, classes in COMPONENTS.items():
        if not present(index, component):
            raise MiaError(f"{path} has no {component} (model_index.json lists none); a latent text-to-image "
                           f"pipeline needs {', '.join(COMPONENTS)}")
        if not (path / component).is_dir():
            raise MiaError(f"{path}/{component}/ is missing although model_index.json lists it; copy the whole "
                           "pipeline folder")
        named = index[component][1]
        if classes and named not in classes:
            raise MiaError(f"{path}'s {component} is a {named}; mia attacks latent pipelines with a "
                           f"{' or '.join(classes)} there (the StableDiffusionPipeline format)")


def load_latent_target(path: str | Path, index: dict[str, Any], latent: str = "mean") -> LatentTextTarget:
    """A StableDiffusionPipeline-format folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) as a target."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path).expanduser()
    if latent not in LATENT_MODES:
        raise MiaError(f"target.latent must be mean or sample, got {latent!r}")
    check_components(path, index)
    schedule = read_schedule(path, index)
    loaders = {"unet": UNet2DConditionModel.from_pretrained, "vae": AutoencoderKL.from_pretrained,
               "text_encoder": CLIPTextModel.from_pretrained, "tokenizer": CLIPTokenizer.from_pretrained}
    parts = {}
    for component, load in loaders.items():
        try:
            parts[component] = load(path, subfolder=component)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise MiaError(f"cannot load the {component} of {path}: {_one_line(err)}") from err
    unet, vae, text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
    if unet.config.in_channels != vae.config.latent_channels:
        raise MiaError(f"{path}: the UNet takes {unet.config.in_channels} channels but the VAE's latents have "
                       f"{vae.config.latent_channels}; the folder mixes components of different models")
    if getattr(unet.config, "addition_embed_type", None) is not None:
        raise MiaError(f"{path}'s UNet takes extra '{unet.config.addition_embed_type}' embeddings besides the text "
                       "(an SDXL-style UNet); mia attacks UNets conditioned on the text embeddings alone")
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise MiaError(f"{path}: the UNet attends to {unet.config.cross_attention_dim}-dim text embeddings but the "
                       f"text encoder makes {text_encoder.config.hidden_size}-dim ones; the components do not match")
    digest = file_digest(*component_files(path))
    target = LatentTextTarget(unet, vae, text_encoder, parts["tokenizer"], schedule, latent, name=path.name,
                              identity=f"{digest}:latent={latent}")
    target.fingerprint = f"sha256:{digest}"
    return target


def component_files(path: Path) -> list[Path]:
    """Every file of the folder's components (unet/, vae/, text_encoder/, tokenizer/, scheduler/), in order."""
    return sorted(p for c in COMPONENTS for p in (path / c).rglob("*") if p.is_file())


def folder_fingerprint(path: str | Path) -> str:
    """``sha256:<hex>`` over the bytes of a Stable Diffusion folder's components: the weights and configs that make
    its predictions (the loader's identity digest), not split.json or training.json beside them."""
    return f"sha256:{file_digest(*component_files(Path(path).expanduser()))}"
