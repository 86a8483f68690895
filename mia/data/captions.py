"""Captions in Hugging Face's ``imagefolder`` convention, and the captioned image pools built on them.

A captioned folder holds ``metadata.jsonl`` (one JSON object a line) or ``metadata.csv`` (a header row) at
its root, with ``file_name`` (the image's path relative to the folder) and a caption column, ``text`` by
convention. Which caption is used is a *column spec*: a column name (``text``), or a list-valued column
and a position (``captions.2``: the third of Flickr8k's five captions).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from mia.data.pools import IMAGE_EXTENSIONS, FolderPool, ImagePool
from mia.errors import MiaError

log = logging.getLogger(__name__)

METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def metadata_file(folder: str | Path) -> Path | None:
    """The folder's caption file, None when it has none; two of them are refused as ambiguous."""
    found = [Path(folder) / name for name in METADATA_FILES if (Path(folder) / name).is_file()]
    if len(found) > 1:
        raise MiaError(f"{folder} holds both metadata.jsonl and metadata.csv; keep one caption file")
    return found[0] if found else None


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a metadata file."""
    rows = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise MiaError(f"{path} line {number} is not valid JSON ({err}); fix or remove that line") from err
            if not isinstance(row, dict):
                raise MiaError(f"{path} line {number} is not a JSON object; each line needs file_name and a caption")
            rows.append((number, row))
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [(number, row) for number, row in enumerate(csv.DictReader(handle), start=2)]
    return rows


def _column(column: str) -> tuple[str, int | None]:
    """``text`` -> ("text", None); ``captions.2`` -> ("captions", 2)."""
    name, _, position = str(column).rpartition(".")
    if name and position.isdigit():
        return name, int(position)
    return str(column), None


def _caption(row: dict[str, Any], column: str, where: str) -> str:
    name, position = _column(column)
    if name not in row:
        raise MiaError(f"{where} has no {name!r} column (it has {', '.join(sorted(row))}); set data.caption")
    value = row[name]
    if position is not None:
        if not isinstance(value, list) or position >= len(value):
            raise MiaError(f"{where}: {name!r} has no caption #{position}; pick one that exists with data.caption")
        value = value[position]
    elif isinstance(value, list):
        raise MiaError(f"{where}: {name!r} holds a list of captions; pick one with data.caption={name}.<index>")
    if not isinstance(value, str):
        raise MiaError(f"{where}: the caption is {type(value).__name__}, not text")
    return value


def _file_name(row: dict[str, Any], where: str) -> str:
    name = row.get("file_name")
    if not isinstance(name, str) or not name:
        raise MiaError(f"{where} has no file_name; every row names its image (relative to the folder)")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise MiaError(f"{where}: file_name {name!r} must be a path inside the folder")
    return path.as_posix()


def image_files(folder: str | Path) -> list[str]:
    """Every image file under ``folder`` (recursively, hidden ones skipped), as posix paths relative to it."""
    folder = Path(folder)
    names = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        names += [(Path(dirpath) / f).relative_to(folder).as_posix() for f in filenames
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(names)


def read_captions(folder: str | Path, column: str = "text", images: Sequence[str] | None = None) -> dict[str, str]:
    """The caption of every image of a captioned folder: {file name relative to the folder: caption}.

    ``images`` are the images that need a caption (default: every image file under the folder). Refused,
    with one line: no caption file; a row without file_name or caption; a name given twice; images
    without a caption (how many, and the first); a caption file whose names match no image; rows naming a
    file that does not exist (the folder and its captions disagree, so one of them is not what the user
    thinks). Rows for existing images outside ``images`` (another subset, or samples not asked for) are
    skipped silently.
    """
    folder = Path(folder).expanduser()
    path = metadata_file(folder)
    if path is None:
        raise MiaError(
            f"{folder} has no caption file; add metadata.jsonl (or metadata.csv) with file_name and text per image"
        )
    captions: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, row in _rows(path):
        where = f"{path} line {number}"
        name = _file_name(row, where)
        if name in captions:
            raise MiaError(f"{where} names {name} a second time; give each image one row")
        captions[name] = _caption(row, column, where)
        lines[name] = number
    wanted = list(image_files(folder) if images is None else images)
    known = set(wanted)
    matched = [name for name in captions if name in known]
    if not matched:
        example = next(iter(captions), "nothing")
        raise MiaError(
            f"the caption file {path} names no image in {folder} (first name: {example}); file_name must be "
            "the image's path relative to that folder, e.g. images/0001.jpg"
        )
    missing = [name for name in wanted if name not in captions]
    if missing:
        raise MiaError(
            f"{len(missing)} of {len(wanted)} images in {folder} have no caption in {path.name} (first: {missing[0]}); "
            "add a row for each, or remove those images"
        )
    absent = [name for name in captions if name not in known and not (folder / name).is_file()]
    if absent:
        raise MiaError(
            f"{path} names {len(absent)} images that are not in {folder} (first: {absent[0]}, line "
            f"{lines[absent[0]]}): the folder and its captions disagree, so one of them is not what you think; "
            "restore those images or remove their rows"
        )
    return {name: captions[name] for name in wanted}


class CaptionedFolderPool(FolderPool):
    """A folder of images with an imagefolder caption file; ``captions[i]`` is the caption of ``ids[i]``."""

    def __init__(
        self,
        root: str,
        image_size: int,
        channels: int = 3,
        crop_size: int | None = None,
        subset: str | None = None,
        caption: str = "text",
        name: str = "captioned_folder",
    ) -> None:
        super().__init__(root, image_size, channels, crop_size=crop_size, subset=subset, name=name)
        self.caption_column = caption
        by_name = read_captions(self.root, caption, self.ids)
        self.captions = [by_name[i] for i in self.ids]


def flickr8k_pool(
    root: str, image_size: int = 32, caption: str = "text", channels: int = 3, name: str = "flickr8k"
) -> CaptionedFolderPool:
    """Flickr8k as an imagefolder: ``root/images/*.jpg`` and ``root/metadata.jsonl`` (text = caption #0)."""
    return CaptionedFolderPool(root, image_size, channels, caption=caption, name=name)


def captions_of(pool: ImagePool, indices: Sequence[int]) -> list[str] | None:
    """The captions of pool samples, None for a pool without captions."""
    captions = getattr(pool, "captions", None)
    return None if captions is None else [captions[int(i)] for i in indices]
