"""A target's identity: a digest of what makes its predictions (weights, schedule), keying the prediction cache."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(*paths: Path) -> str:
    """sha256 over the bytes of files (a target's weights and configs)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
