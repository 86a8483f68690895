"""A LoRA fine-tune of a Stable Diffusion folder, trained on the members and exported as the adapter people share.

The recipe is diffusers' ``examples/text_to_image/train_text_to_image_lora.py`` (docs/method.md, "LoRA
fine-tunes"): the base's UNet, VAE and text encoder are frozen, and peft LoRA layers go on the UNet's
attention projections through diffusers' own ``unet.add_adapter(LoraConfig(...))`` (rank 4, α = rank,
Gaussian init so the adapter starts as a no-op; AdamW at 1e-4 with weight decay 1e-2 and a constant
schedule). The loss, the probe and the previews are the text-to-image target's (train_targets/text_to_image.py).
``train_text_encoder`` adds adapters on the CLIP attention projections too, as the DreamBooth LoRA script does.

The export is ``pytorch_lora_weights.safetensors`` (``StableDiffusionPipeline.save_lora_weights``, with the
adapter configs as metadata so that α ≠ rank survives loading), ``split.json`` and ``training.json`` naming the
base by path and by content fingerprint. Checkpoints hold what trains (the adapters, their EMA, the optimizer)
and the base's fingerprint, not the base: resuming loads the base from ``target.base`` and refuses another one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig

from mia.errors import MiaError
from mia.targets.latent import check_components, folder_fingerprint, is_latent_pipeline
from mia.targets.pipeline import read_model_index
from train_targets.text_to_image import TextToImageTarget

log = logging.getLogger(__name__)

UNET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")  # train_text_to_image_lora.py's target_modules
TEXT_ENCODER_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")  # train_dreambooth_lora.py's, for CLIP


def check_settings(rank: Any, alpha: Any, dropout: Any, target_modules: Any, text_encoder_target_modules: Any) -> None:
    """Refuse LoRA settings that cannot make an adapter, before the base is read."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise MiaError(f"target.rank must be a whole number ≥ 1 (the adapter's rank r), got {rank!r}")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0):
        raise MiaError(f"target.alpha must be a number > 0 (the adapter's scale is α/r), or null for α = rank; "
                       f"got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise MiaError(f"target.dropout must be in [0, 1), got {dropout!r}")
    named = (("target_modules", target_modules), ("text_encoder_target_modules", text_encoder_target_modules))
    for key, modules in named:
        if isinstance(modules, str) or not modules or not all(isinstance(m, str) and m for m in modules):
            raise MiaError(f"target.{key} must be a list of module names (e.g. [{', '.join(UNET_MODULES)}]), "
                           f"got {modules!r}")


def check_base(base: Any) -> Path:
    """The base must be a StableDiffusionPipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    if not base:
        raise MiaError("target.base is not set; pass target.base=<a StableDiffusionPipeline folder>, e.g. the export "
                       "of mia-train experiment=text_to_image_demo")
    path = Path(str(base)).expanduser()
    index = read_model_index(path)  # refuses a missing folder and one without model_index.json
    if not is_latent_pipeline(index):
        raise MiaError(f"target.base={path} is not a Stable Diffusion folder (it has no vae/); a LoRA fine-tune "
                       "trains on top of a StableDiffusionPipeline folder")
    check_components(path, index)
    return path.resolve()


def _added_parameters(module: torch.nn.Module) -> list[str]:
    """The names of the parameters that train (the adapters'; the base is frozen)."""
    return [name for name, p in module.named_parameters() if p.requires_grad]


class LoRATarget(TextToImageTarget):
    """Frozen Stable Diffusion base + trained LoRA adapters on the UNet (and optionally the text encoder)."""

    def __init__(
        self,
        base: str,
        image_size: int,
        channels: int,
        rank: int = 4,
        alpha: float | None = None,
        dropout: float = 0.0,
        target_modules: Sequence[str] = UNET_MODULES,
        train_text_encoder: bool = False,
        text_encoder_target_modules: Sequence[str] = TEXT_ENCODER_MODULES,
        caption_dropout: float = 0.0,
        lr: float = 1e-4,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        hflip: bool = False,
        sample_count: int = 4,
        sample_steps: int = 25,
        sample_guidance: float = 3.0,
        sample_dir: str | None = None,
    ) -> None:
        check_settings(rank, alpha, dropout, target_modules, text_encoder_target_modules)
        path = check_base(base)
        fingerprint = folder_fingerprint(path)  # before training, so an edited base cannot pass for this one
        super().__init__(image_size, channels, unet={}, vae={}, text_encoder={}, scheduler={}, init_from=str(path),
                         train_text_encoder=False, caption_dropout=caption_dropout, lr=lr, weight_decay=weight_decay,
                         betas=betas, warmup_steps=warmup_steps, hflip=hflip, sample_count=sample_count,
                         sample_steps=sample_steps, sample_guidance=sample_guidance, sample_dir=sample_dir)
        self.base = {"path": str(path), "fingerprint": fingerprint}
        self.unet.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self._attach("target_modules", "UNet", lambda: self.unet.add_adapter(self._config(list(target_modules))))
        if train_text_encoder:
            self._attach("text_encoder_target_modules", "text encoder",
                         lambda: self._add_text_encoder_adapter(self._config(list(text_encoder_target_modules))))
        # from_pretrained leaves the parts in eval mode and Lightning keeps a module's mode; the script trains
        # with unet.train() (and text_encoder.train() when it has adapters), so lora_dropout is live in training.
        self.unet.train()
        self.text_encoder.train(train_text_encoder)
        log.info("LoRA on %s: rank %d, α %s, %d trained parameters (base frozen)", path, rank, self.alpha,
                 self.parameter_count())

    @property
    def alpha(self) -> float:
        """α, the adapter's scale numerator (scaling = α / r); null in the config = the rank, as diffusers' script."""
        return self.hparams.rank if self.hparams.alpha is None else self.hparams.alpha

    def _config(self, modules: list[str]) -> LoraConfig:
        # train_text_to_image_lora.py's LoraConfig, with α and dropout as settings.
        return LoraConfig(r=self.hparams.rank, lora_alpha=self.alpha, lora_dropout=self.hparams.dropout,
                          init_lora_weights="gaussian", target_modules=modules)

    @staticmethod
    def _attach(key: str, part: str, add: Any) -> None:
        try:
            add()
        except ValueError as err:  # peft: "Target modules {...} not found in the base model"
            raise MiaError(f"target.{key} name no module of the base's {part} ({str(err).splitlines()[0]}); use "
                           "names of its attention projections") from err

    def _add_text_encoder_adapter(self, config: LoraConfig) -> None:
        # transformers' own text_encoder.add_adapter asks for peft ≥ 0.22 (transformers 5); peft's
        # inject_adapter_in_model is what it calls, and peft_config is where diffusers' helpers read the config.
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, self.text_encoder, adapter_name="default")
        self.text_encoder.peft_config = {"default": config}

    # --- what trains, what is recorded -------------------------------------------------------------------

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_count(self) -> int:
        """The adapters' parameters: what learns the members."""
        return sum(p.numel() for p in self.trained_parameters())

    def training_record(self) -> dict[str, Any]:
        return {"lora": {
            "base": self.base,
            "rank": self.hparams.rank,
            "alpha": self.alpha,
            "dropout": self.hparams.dropout,
            "target_modules": list(self.hparams.target_modules),
            "text_encoder_target_modules": list(self.hparams.text_encoder_target_modules)
            if self.hparams.train_text_encoder else None,
            "trained_parameters": self.parameter_count(),
            "weights": "pytorch_lora_weights.safetensors",
        }}

    def export(self) -> LoRAExport:
        """The adapter (EMA weights once training has ended with EMA on), written as diffusers writes it."""
        return LoRAExport(self.unet, self.text_encoder if self.hparams.train_text_encoder else None)

    # --- checkpoints: what trains, and the base's fingerprint ---------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Runs after the callbacks (EMA has put the average under state_dict, the raw weights under
        # current_model_state): the frozen base is left out of both, and named by its fingerprint instead.
        trained = set(_added_parameters(self))
        for key in ("state_dict", "current_model_state"):
            if key in checkpoint:
                checkpoint[key] = {name: value for name, value in checkpoint[key].items() if name in trained}
        checkpoint["lora_base"] = dict(self.base)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("lora_base")
        if not isinstance(saved, dict):
            raise MiaError("the checkpoint was not written by a LoRA target (it records no base model); resume it with "
                           "the target= it was trained with")
        if saved.get("fingerprint") != self.base["fingerprint"]:
            raise MiaError(f"the checkpoint trained an adapter on another base model ({saved.get('path')}) than "
                           f"target.base={self.base['path']} (the fingerprints differ); pass target.base=<that base>")
        own = self.state_dict()
        trained = set(_added_parameters(self))
        for key in ("state_dict", "current_model_state"):
            if key not in checkpoint:
                continue
            adapter = checkpoint[key]
            shapes_differ = any(name not in own or own[name].shape != value.shape for name, value in adapter.items())
            if set(adapter) != trained or shapes_differ:
                raise MiaError("the checkpoint's adapter is not the one configured (another target.rank, "
                               "target_modules or train_text_encoder); resume with the settings it was trained with")
            # The frozen base, as loaded from target.base (fingerprint checked above), completes the weights.
            checkpoint[key] = {**{name: value for name, value in own.items() if name not in trained}, **adapter}


@dataclass
class LoRAExport:
    """What the LoRA target exports: ``save_pretrained(folder)`` writes ``pytorch_lora_weights.safetensors``."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module | None

    def save_pretrained(self, folder: str | Path) -> None:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        def layers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
            state = get_peft_model_state_dict(module)
            return convert_state_dict_to_diffusers({k: v.detach().float().cpu() for k, v in state.items()})

        text = self.text_encoder
        # The configs as metadata: a peft-format file without them is reloaded by diffusers with α = r.
        StableDiffusionPipeline.save_lora_weights(
            folder,
            unet_lora_layers=layers(self.unet),
            text_encoder_lora_layers=None if text is None else layers(text),
            unet_lora_adapter_metadata=self.unet.peft_config["default"].to_dict(),
            text_encoder_lora_adapter_metadata=None if text is None else text.peft_config["default"].to_dict(),
            safe_serialization=True,
        )
