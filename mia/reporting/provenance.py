"""What made a result: mia's version and commit, the libraries, the device, the target, the split, the command.

``metrics.json`` (and the attack's W&B config) and ``training.json`` carry this record, so a reviewer can
trace a number back to the code and data behind it. The git commit is recorded only when mia runs from a
git checkout that tracks its own files (an installed copy inside some other repository gets no commit).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from mia.version import __version__

log = logging.getLogger(__name__)

LIBRARIES = ("torch", "diffusers", "lightning", "hydra-core", "numpy", "torchvision", "transformers")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the mia package


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess | None:
    # GIT_DIR and friends from the user's shell would point git at another repository.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        return subprocess.run(["git", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def source(package_dir: Path = PACKAGE_DIR) -> dict[str, Any]:
    """mia's version; with ``commit`` and ``dirty`` (tracked files changed) when it runs from a git checkout."""
    record: dict[str, Any] = {"version": __version__}
    tracked = _git(package_dir, "ls-files", "--error-unmatch", "__init__.py")
    if tracked is None or tracked.returncode != 0:
        return record  # not a checkout, no git, or a copy the surrounding repository does not track
    head = _git(package_dir, "rev-parse", "HEAD")
    status = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
    if head is None or head.returncode != 0 or status is None or status.returncode != 0:
        return record
    record["commit"] = head.stdout.strip()
    record["dirty"] = bool(status.stdout.strip())
    return record


def library_versions() -> dict[str, str]:
    """Python and the installed versions of the libraries that shape predictions and training."""
    import torch

    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    versions["torch"] = torch.__version__  # with its build (2.14.1+cu130), which the package metadata leaves out
    return versions


def device_description(device: str | None) -> dict[str, Any]:
    """The device string (``cpu``, ``cuda:0``) and, for CUDA, the GPU's name and CUDA version."""
    if device is None:
        return {}
    record: dict[str, Any] = {"device": device}
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = int(device.partition(":")[2] or 0)
            record.update(device_name=torch.cuda.get_device_name(index), cuda=torch.version.cuda)
    return record


def command_overrides() -> list[str] | None:
    """The command line's overrides (Hydra's ``overrides.task``), or None outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return [str(o) for o in HydraConfig.get().overrides.task]


def provenance(device: str | None = None, target_identity: str | None = None, split: Any = None) -> dict[str, Any]:
    """The provenance record of one run (``split`` is a :class:`mia.data.split.Split` or None)."""
    record: dict[str, Any] = {
        "mia": source(),
        "libraries": library_versions(),
        **device_description(device),
        "overrides": command_overrides(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if target_identity is not None:
        record["target_identity"] = target_identity or None  # "" = a target built in code, with no identity
    if split is not None:
        record["split"] = {"fingerprint": split.dataset.get("fingerprint"), "seed": split.seed}
    return record
