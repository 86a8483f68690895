"""Class-conditional pixel models (``UNet2DModel`` with learned class embeddings) as targets.

The condition of a sample is its class label, which the evaluation set must carry (``class_label``:
mia.data.conditions reads it from the folders' metadata ``label`` column or from integer class-folder
names). Classifier-free guidance needs the label the model was trained with for "no class": diffusers has
no convention for it, so the user names it (``target.null_class``); without it guidance is refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mia.checks import require_integer
from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.targets.guidance import Condition, guided


def is_class_conditional(config: Any) -> bool:
    """Whether a UNet2DModel config embeds a class label."""
    embeds = getattr(config, "num_class_embeds", None), getattr(config, "class_embed_type", None)
    return any(value is not None for value in embeds)


class ClassConditionalTarget(DiffusionTarget):
    """A UNet2DModel whose denoiser takes ``class_labels``; the batch's ``class_label`` is its condition."""

    conditioning = "class"

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, sample_shape: tuple[int, int, int],
                 null_class: int | None = None, name: str = "target", identity: str = "") -> None:
        config = unet.config
        if getattr(config, "class_embed_type", None) is not None:
            raise MiaError(f"{name} embeds classes as '{config.class_embed_type}'; mia attacks class-conditional "
                           "models with learned class embeddings (num_class_embeds) only")
        classes = int(config.num_class_embeds)
        require_integer("target.null_class", null_class, minimum=0, maximum=classes - 1, optional=True)
        super().__init__(unet, alphas_cumprod, sample_shape, name, identity + f":null_class={null_class}")
        self.num_classes = classes
        self.null_class = null_class

    def check_guidance(self, guidance_scale: float) -> None:
        super().check_guidance(guidance_scale)
        if guidance_scale != 1 and self.null_class is None:
            raise MiaError(f"attack.guidance_scale={guidance_scale} needs the label {self.name} was trained with for "
                           "'no class'; set target.null_class=<that label>, or leave attack.guidance_scale=1")

    def conditions(self, batch: dict[str, Any], guidance_scale: float = 1.0) -> Condition:
        self.check_guidance(guidance_scale)
        labels = batch.get("class_label")
        if labels is None:
            raise MiaError(f"{self.name} is class-conditional but the evaluation set has no class labels; give "
                           "folders with a metadata.jsonl 'label' column or <folder>/<label>/<image> subfolders")
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.alphas_cumprod.device)
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            raise MiaError(f"class label {int(labels[bad][0])} is outside {self.name}'s classes "
                           f"0..{self.num_classes - 1}; check the evaluation set's labels")
        null = None if self.null_class is None else torch.tensor([self.null_class], device=labels.device)
        return Condition(labels, null, guidance_scale)

    def denoise(self, x_t: torch.Tensor, timesteps: torch.Tensor, cond: Condition) -> torch.Tensor:
        if not isinstance(cond, Condition):
            raise MiaError(f"{self.name} is class-conditional; the attack passed no condition")
        return guided(lambda x, t, labels: self.denoiser(x, t, class_labels=labels).sample, x_t, timesteps, cond)
