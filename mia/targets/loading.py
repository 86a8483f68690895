"""Build the target an attack run asks for (``target.kind``), with the split that labels its samples.

To add a target kind: a loader returning a DiffusionTarget, and one entry in ``load_target`` (see
docs/architecture.md, "add a target kind").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mia.data.evaluation_set import from_split
from mia.data.images import to_model_range
from mia.data.split import Split
from mia.errors import MiaError
from mia.targets.base import DiffusionTarget
from mia.targets.checkpoint import load_checkpoint_target
from mia.targets.latent import is_latent_pipeline, load_latent_target
from mia.targets.memorizer import memorizing_target
from mia.targets.module import describe, load_module_kind, refuse_module_keys
from mia.targets.pipeline import load_pipeline_target, load_split, read_model_index

KINDS = ("pipeline", "memorizer", "module")


def load_target(target: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[DiffusionTarget, Split | None]:
    """The target of ``target.kind`` and the split in ``target.path`` (None when the folder has none)."""
    if target.get("kind") == "module":
        return load_module_kind(target)
    refuse_module_keys(target)
    missing = OmegaConf.is_config(target) and OmegaConf.is_missing(target, "path")
    if missing or not target.get("path"):
        raise MiaError("target.path is not set; pass target.path=<folder exported by mia-train>")
    kind = target.get("kind")
    if kind not in KINDS:
        raise MiaError(f"target.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    model = load_folder_target(target)
    split = load_split(target["path"])
    if target.get("checkpoint"):
        if model.is_latent:
            raise MiaError("target.checkpoint holds a pixel model's weights; it cannot replace a latent pipeline's")
        model = load_checkpoint_target(target["checkpoint"], split)
    if kind == "memorizer":
        model = _memorizer_of(split, model, data)
    return model, split


def describe_target(target: Mapping[str, Any]) -> str:
    """What was attacked, for reports and messages: the folder, or (kind module) the weights file or factory."""
    if target.get("kind") == "module":
        return describe(target)
    return str(Path(target["path"]).expanduser().resolve())


def load_folder_target(target: Mapping[str, Any]) -> DiffusionTarget:
    """The pipeline in ``target.path``: latent text-to-image when model_index.json lists a vae, else pixel-space."""
    path = Path(target["path"]).expanduser()
    index = read_model_index(path)
    if is_latent_pipeline(index):
        if target.get("null_class") is not None:
            raise MiaError(f"target.null_class is for class-conditional pixel models; {path} is text-conditional")
        return load_latent_target(path, index, target.get("latent") or "mean")
    if (target.get("latent") or "mean") != "mean":
        raise MiaError(f"target.latent={target.get('latent')} is for latent pipelines; {path} has no vae/")
    return load_pipeline_target(path, null_class=target.get("null_class"))


def _memorizer_of(split: Split | None, model: DiffusionTarget, data: Mapping[str, Any]) -> DiffusionTarget:
    """The closed-form memoriser of the split's members, on the model's schedule."""
    if data.get("members") or data.get("nonmembers"):
        raise MiaError("target.kind=memorizer memorises the split's members; it cannot be evaluated on "
                       "data.members / data.nonmembers folders, whose labels it does not know")
    if split is None:
        raise MiaError("target.kind=memorizer memorises a split's members; the target has no split.json")
    if model.is_latent or model.conditioning is not None:
        raise MiaError("target.kind=memorizer memorises pixel images without conditions; use target.kind=pipeline")
        # The memoriser learns whichever images it reads, so its labels hold with or without a fingerprint.
    members = from_split(split, data.get("root"), max_nonmembers=1, allow_unverified=True)
    return memorizing_target(to_model_range(members.stack(range(members.n_members))), model.alphas_cumprod)
