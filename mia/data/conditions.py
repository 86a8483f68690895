"""The per-sample conditions an evaluation set carries for conditional targets: captions or class labels.

Captions (text-conditional targets) come from the folders' caption files (Hugging Face ``imagefolder``
convention: metadata.jsonl / metadata.csv with ``file_name`` and ``text``) or from the captions the
target's split.json records; ``data.caption=none`` attacks every sample with the empty prompt, explicitly.
Class labels (class-conditional targets) are the names of the images' class folders,
``<folder>/<label>/<image>`` with an integer label, as imagefolder infers labels from folders.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from mia.data.captions import metadata_file, read_captions
from mia.data.split import Split
from mia.errors import MiaError

log = logging.getLogger(__name__)

EMPTY_PROMPT = "none"  # data.caption=none: the empty prompt for every sample
PREFIXES = (("members", "members"), ("nonmembers", "nonmembers"))  # id prefix, data key of the folder


def check_caption_setting(data: Mapping[str, Any], conditioning: str | None, target_name: str) -> None:
    """``data.caption`` must be null, a column name or none, and only set for text-conditional targets."""
    caption = data.get("caption")
    if caption is not None and (not isinstance(caption, str) or not caption):
        raise MiaError(f"data.caption must be a caption column of the folders' metadata (e.g. text) or none, "
                       f"got {caption!r}")
    if caption is not None and conditioning != "text":
        kind = "unconditional" if conditioning is None else f"{conditioning}-conditional"
        raise MiaError(f"data.caption applies to text-conditional targets; {target_name} is {kind}")


def _names(ids: list[str], prefix: str) -> list[str]:
    return [i[len(prefix) + 1:] for i in ids if i.startswith(prefix + "/")]


def _folder_captions(data: Mapping[str, Any], ids: list[str], target_name: str) -> list[str]:
    column = data.get("caption") or "text"
    by_id: dict[str, str] = {}
    for prefix, key in PREFIXES:
        folder = data[key]
        if metadata_file(folder) is None:
            raise MiaError(f"{target_name} is text-conditional but {folder} has no caption file; add metadata.jsonl "
                           "(or metadata.csv) with file_name and text per image, or pass data.caption=none to "
                           "attack with the empty prompt")
        captions = read_captions(folder, column, _names(ids, prefix))
        by_id.update({f"{prefix}/{name}": text for name, text in captions.items()})
    return [by_id[i] for i in ids]


def _split_captions(data: Mapping[str, Any], split: Split | None, ids: list[str], target_name: str) -> list[str]:
    if data.get("caption") is not None:
        raise MiaError(f"data.caption={data['caption']} picks a column of data.members / data.nonmembers caption "
                       "files; the target's split.json records the captions it was trained with (leave it unset)")
    if split is None or split.captions is None:
        raise MiaError(f"{target_name} is text-conditional but its split.json records no captions; give captioned "
                       "data.members / data.nonmembers folders, or data.caption=none for the empty prompt")
    return [split.captions[i] for i in ids]


def _class_labels(data: Mapping[str, Any], ids: list[str], target_name: str) -> list[int]:
    if not data.get("members"):
        raise MiaError(f"{target_name} is class-conditional; attack it on data.members / data.nonmembers folders "
                       "whose images sit in <folder>/<label>/ (integer labels)")
    labels, missing = [], []
    for sample_id in ids:
        parts = PurePosixPath(sample_id).parts  # (prefix, ..., label folder, file)
        label = parts[-2] if len(parts) >= 3 else ""
        if not label.isdigit():
            missing.append(sample_id)
            label = "0"
        labels.append(int(label))
    if missing:
        raise MiaError(f"{len(missing)} of {len(ids)} images have no class label (first: {missing[0]}); "
                       f"{target_name} is class-conditional: put each image in <folder>/<label>/ (e.g. members/3/)")
    return labels


def conditions_for(data: Mapping[str, Any], conditioning: str | None, split: Split | None, ids: list[str],
                   target_name: str = "the target") -> dict[str, list]:
    """The extras (``caption`` or ``class_label``, one per id) a target of this ``conditioning`` needs."""
    if conditioning is None:
        return {}
    folders = bool(data.get("members"))
    if conditioning == "class":
        return {"class_label": _class_labels(data, ids, target_name)}
    if data.get("caption") == EMPTY_PROMPT:
        log.info("data.caption=none: every sample is attacked with the empty prompt")
        return {"caption": [""] * len(ids)}
    captions = _folder_captions(data, ids, target_name) if folders else _split_captions(data, split, ids, target_name)
    return {"caption": captions}
