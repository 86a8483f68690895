"""Export a trained target: a diffusers pipeline folder (or a LoRA adapter), ``split.json`` (docs/architecture.md)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline

from mia.data.split import Split
from mia.errors import MiaError

log = logging.getLogger(__name__)


def check_export_dir(path: str | Path, overwrite: bool) -> Path:
    """Fail before training, not after, when the export folder is taken."""
    path = Path(path).expanduser().resolve()
    if path.exists() and not overwrite:
        raise MiaError(f"export folder {path} already exists; choose another export_dir or set overwrite=true")
    return path


def export_target(
    pipeline: DiffusionPipeline | Any,
    split: Split,
    path: str | Path,
    info: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write the pipeline, ``split.json`` and ``training.json`` to a temporary folder, then move it into place.

    ``pipeline`` is what the target exports (``DenoisingTarget.export``): anything with ``save_pretrained(folder)``,
    a diffusers pipeline or a LoRA adapter (train_targets/lora.py).

    The move is the last step, so an interrupted export never leaves a half-written target behind.
    """
    path = check_export_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        pipeline.save_pretrained(staging)
        split.save(staging / "split.json")
        (staging / "training.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported target to %s", path)
    return path
