"""How close an image made by the model is to the sample: the comparisons of the black-box attacks.

All take images in [-1, 1] (or x0-space samples) as [B, ...] and return float64 [B], higher = more alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from mia.errors import MiaError

log = logging.getLogger(__name__)

SSIM_KERNEL = 11  # torchmetrics' default Gaussian window (σ = 1.5), as in Wang et al. 2004


def negative_squared_l2(made: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``−‖made − original‖²`` per sample (summed over every element)."""
    return -(made.double() - original.double()).flatten(1).pow(2).sum(1)


def ssim(made: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """SSIM per sample of images in [-1, 1] (data range 2), torchmetrics' Gaussian-window definition."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(made.double().clamp(-1, 1), original.double().clamp(-1, 1),
                                               data_range=2.0, kernel_size=SSIM_KERNEL, reduction="none")


def check_ssim_size(image_shape: tuple[int, int, int], key: str) -> None:
    """SSIM's window needs images at least as large as itself."""
    if min(image_shape[1:]) < SSIM_KERNEL:
        raise MiaError(f"{key}=ssim needs images of at least {SSIM_KERNEL}x{SSIM_KERNEL} (its window); the target's "
                       f"are {image_shape[1]}x{image_shape[2]}: choose another {key.split('.')[-1]}")


def build_embedding(node: Mapping[str, Any] | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The user's embedding model: ``{_target_: ..., <kwargs>}`` naming a callable, or a factory returning one."""
    from mia.config import build

    if not isinstance(node, Mapping) or not node.get("_target_"):
        raise MiaError("attack.similarity=embedding needs attack.embedding={_target_: <a callable images → "
                       "embeddings, or a factory of one>}; see docs/method.md, 'the reconstruction attack'")
    try:
        built = build(dict(node))
    except MiaError:
        raise
    except Exception as err:  # Hydra wraps every import or construction failure in its own types
        raise MiaError(f"attack.embedding._target_={node['_target_']} cannot be built: "
                       f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from err
    if not callable(built):
        raise MiaError(f"attack.embedding._target_={node['_target_']} built a {type(built).__name__}, which is not "
                       "callable; it must map images [B, 3, H, W] in [0, 1] to embeddings [B, ...]")
    if isinstance(built, torch.nn.Module):
        built.eval().requires_grad_(False)
    return built


def cosine(embed: Callable[[torch.Tensor], torch.Tensor], made: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the embeddings of two image batches in [-1, 1] (the model sees them in [0, 1])."""
    a, b = (embed((images.float().clamp(-1, 1) + 1) / 2) for images in (made, original))
    if not isinstance(a, torch.Tensor) or a.shape[0] != len(made):
        raise MiaError(f"the embedding model returned {type(a).__name__} of shape {getattr(a, 'shape', None)} for "
                       f"{len(made)} images; it must return a tensor [B, ...]")
    return torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)
