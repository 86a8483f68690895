"""Build the target an attack run asks for (``target.kind``), with the split that labels its samples.

To add a target kind: a loader returning a DiffusionTarget, and one entry in ``load_target`` (see
docs/architecture.md, "add a target kind").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from mia.data.evaluation_set import from_split
from mia.data.images import to_model_range
from mia.data.split import Split
from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.targets.checkpoint import load_checkpoint_target
from mia.targets.memorizer import memorizing_target
from mia.targets.pipeline import load_pipeline_target, load_split

KINDS = ("pipeline", "memorizer")


def load_target(target: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[DiffusionTarget, Split | None]:
    """The target of ``target.kind`` and the split in ``target.path`` (None when the folder has none)."""
    missing = OmegaConf.is_config(target) and OmegaConf.is_missing(target, "path")
    if missing or not target.get("path"):
        raise MiaError("target.path is not set; pass target.path=<folder exported by mia-train>")
    kind = target.get("kind")
    if kind not in KINDS:
        raise MiaError(f"target.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    model = load_pipeline_target(target["path"])
    split = load_split(target["path"])
    if target.get("checkpoint"):
        model = load_checkpoint_target(target["checkpoint"], split)
    if kind == "memorizer":
        model = _memorizer_of(split, model, data)
    return model, split


def _memorizer_of(split: Split | None, model: DiffusionTarget, data: Mapping[str, Any]) -> DiffusionTarget:
    """The closed-form memoriser of the split's members, on the model's schedule."""
    if data.get("members") or data.get("nonmembers"):
        raise MiaError("target.kind=memorizer memorises the split's members; it cannot be evaluated on "
                       "data.members / data.nonmembers folders, whose labels it does not know")
    if split is None:
        raise MiaError("target.kind=memorizer memorises a split's members; the target has no split.json")
    members = from_split(split, data.get("root"), max_nonmembers=1)
    return memorizing_target(to_model_range(members.images[: members.n_members]), model.alphas_cumprod)
