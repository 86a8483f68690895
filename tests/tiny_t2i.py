"""Tiny Stable-Diffusion-style pipelines and captioned image folders, built in code (as diffusers' own tests do).

The pipeline: a UNet2DConditionModel with two small blocks and 16-dim cross-attention, a 4-channel
AutoencoderKL (downsampling 2: 16 px images, 8x8 latents), a 2-layer CLIPTextModel and a CLIPTokenizer
over a character vocabulary written here (offline), and SD's scaled_linear schedule.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SIZE = 16
WORDS = ["dog", "cat", "red", "ball", "runs", "on", "the", "grass", "a", "small", "boy", "sits", "near", "water"]


def tiny_tokenizer(folder: Path, max_length: int = 48):
    """A CLIPTokenizer over single characters (every lowercase word tokenises), made offline."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits + ".,":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


def build_tiny_sd(folder: Path, scheduler: str = "PNDMScheduler", seed: int = 0) -> Path:
    """Save a tiny StableDiffusionPipeline folder at ``folder``."""
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        sample_size=IMAGE_SIZE,
    )
    tokenizer = tiny_tokenizer(folder.parent / f"{folder.name}-vocab")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=48, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=16,
    ))
    schedule = getattr(diffusers, scheduler)(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=schedule, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return folder


def write_captioned(folder: Path, count: int, seed: int, size: int = IMAGE_SIZE, csv: bool = False) -> dict[str, str]:
    """``count`` random images with captions in metadata.jsonl (or .csv); returns {file name: caption}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    captions = {}
    for i in range(count):
        name = f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)
        captions[name] = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 7))))
    if csv:
        lines = ["file_name,text", *(f"{name},{text}" for name, text in captions.items())]
        (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    else:
        (folder / "metadata.jsonl").write_text(
            "".join(json.dumps({"file_name": n, "text": t}) + "\n" for n, t in captions.items()))
    return captions


def build_tiny_pixel(folder: Path, num_class_embeds: int | None = None, ve: bool = False) -> Path:
    """A tiny pixel pipeline (8 px RGB): DDPM, class-conditional with ``num_class_embeds``, or variance-exploding."""
    from diffusers import DDPMPipeline, DDPMScheduler, ScoreSdeVePipeline, ScoreSdeVeScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=num_class_embeds)
    if ve:
        ScoreSdeVePipeline(unet=unet, scheduler=ScoreSdeVeScheduler()).save_pretrained(folder)
    else:
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    return folder


def write_labelled(folder: Path, labels: list[int], seed: int, size: int = 8) -> None:
    """Images in ``folder/<label>/``, one per entry of ``labels``."""
    rng = np.random.default_rng(seed)
    for i, label in enumerate(labels):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / str(label) / f"{i:03d}.png")
