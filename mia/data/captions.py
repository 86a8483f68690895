"""Captions of a folder of images in Hugging Face's ``imagefolder`` convention (minimal reader).

A captioned folder holds ``metadata.jsonl`` (one JSON object a line) or ``metadata.csv`` (a header row)
at its root, each row naming an image by ``file_name`` (relative to the folder) and giving its caption in
a column, ``text`` by convention.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from mia.data.pools import FolderPool
from mia.errors import MiaError

METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def metadata_file(folder: str | Path) -> Path | None:
    """The folder's caption file (None when it has none); two of them are refused as ambiguous."""
    found = [Path(folder) / name for name in METADATA_FILES if (Path(folder) / name).is_file()]
    if len(found) > 1:
        raise MiaError(f"{folder} holds both metadata.jsonl and metadata.csv; keep one caption file")
    return found[0] if found else None


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for each row of a metadata file."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [(f"{path} line {n}", row) for n, row in enumerate(csv.DictReader(handle), start=2)]
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise MiaError(f"{path} line {n} is not valid JSON ({err}); fix or remove that line") from err
            if not isinstance(row, dict):
                raise MiaError(f"{path} line {n} is not a JSON object with file_name and a caption")
            rows.append((f"{path} line {n}", row))
    return rows


def read_captions(folder: str | Path, column: str = "text", images: Sequence[str] | None = None) -> dict[str, str]:
    """{image path relative to ``folder``: caption} for every image of the folder (or of ``images``).

    Refused with one line: no caption file; a row without file_name or caption; a name given twice; images
    without a caption (how many, and the first); a caption file whose names match no image.
    """
    folder = Path(folder).expanduser()
    path = metadata_file(folder)
    if path is None:
        raise MiaError(f"{folder} has no caption file; add metadata.jsonl (or metadata.csv) with file_name and "
                       f"{column} per image")
    captions: dict[str, str] = {}
    for where, row in _rows(path):
        name = row.get("file_name")
        if not isinstance(name, str) or not name or PurePosixPath(name).is_absolute() or ".." in name.split("/"):
            raise MiaError(f"{where} has no usable file_name (a path inside the folder); every row names its image")
        if column not in row or not isinstance(row[column], str):
            raise MiaError(f"{where} has no text in column {column!r}; give every image a caption there")
        name = PurePosixPath(name).as_posix()
        if name in captions:
            raise MiaError(f"{where} names {name} a second time; give each image one row")
        captions[name] = row[column]
    wanted = list(images) if images is not None else FolderPool(str(folder), 4).ids
    if not any(name in captions for name in wanted):
        raise MiaError(f"the caption file {path} names no image in {folder} (first name: "
                       f"{next(iter(captions), 'none')}); file_name must be the image's path relative to the folder")
    missing = [name for name in wanted if name not in captions]
    if missing:
        raise MiaError(f"{len(missing)} of {len(wanted)} images in {folder} have no caption in {path.name} "
                       f"(first: {missing[0]}); add a row for each, or remove those images")
    return {name: captions[name] for name in wanted}
