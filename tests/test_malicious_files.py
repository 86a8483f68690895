"""Files whose unpickling would run code: every reader refuses them in one line naming the global, and never runs it.

Each test builds a real malicious file (a pickle whose ``__reduce__`` calls ``os.system`` or ``shutil.copyfile``
to create a marker file), hands it to mia's weights, checkpoint and betas readers, and checks the line and
that the marker was not created; a control then loads the same file with ``weights_only=False`` and sees the
marker appear, so the payload is live and its absence before means it did not run.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mia.errors import MiaError
from mia.targets.checkpoint import load_checkpoint_file, read_training_checkpoint
from mia.targets.module import read_betas
from mia.targets.weights import read_state_dict, weights_only_refusal

READERS: dict[str, Callable[[Path], object]] = {
    "weights": read_state_dict,
    "checkpoint": read_training_checkpoint,
    "checkpoint file": load_checkpoint_file,
    "betas": read_betas,
}


class _Shell:
    """Unpickling calls os.system(command): what a poisoned checkpoint downloaded from anywhere may do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Copy:
    """Unpickling calls shutil.copyfile: a global from a module torch does not block outright (its older wording)."""

    def __init__(self, source: Path, destination: Path) -> None:
        self.source, self.destination = str(source), str(destination)

    def __reduce__(self):
        return (shutil.copyfile, (self.source, self.destination))


def _save_with_torch(payload: object, path: Path) -> None:
    """torch's zip format (pickle protocol 2): a checkpoint-like dictionary with the payload beside the tensors."""
    torch.save({"state_dict": {"unet.weight": torch.zeros(2, 2)}, "global_step": 3, "extra": payload}, path)


def _save_with_pickle(payload: object, path: Path) -> None:
    """A bare pickle, which torch.load reads as its legacy format (no tensors: pickle would name torch's own)."""
    with open(path, "wb") as handle:
        pickle.dump({"global_step": 3, "betas": [1e-4, 2e-2], "extra": payload}, handle, protocol=2)


def _unpickle_unsafely(path: Path) -> None:
    """The control: what loading without weights_only does (torch.load, or pickle for the bare pickle)."""
    with open(path, "rb") as handle:
        if handle.read(2) == b"PK":  # torch's zip format
            torch.load(path, weights_only=False)
        else:
            handle.seek(0)
            pickle.load(handle)


SYSTEM = f"{os.system.__module__}.system"  # posix.system on Linux and macOS, nt.system on Windows


@pytest.mark.parametrize("save", [_save_with_torch, _save_with_pickle], ids=["torch.save", "pickle.dump"])
@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
@pytest.mark.parametrize("reader", list(READERS))
def test_an_os_system_payload_is_refused_in_one_line_and_never_runs(tmp_path: Path, save, suffix: str, reader: str):
    marker = tmp_path / "pwned"
    path = tmp_path / f"poisoned{suffix}"
    save(_Shell(f"touch {marker}"), path)
    with pytest.raises(MiaError) as refused:
        READERS[reader](path)
    line = str(refused.value)
    assert "\n" not in line and len(line) < len(str(path)) + 200, line
    assert f"({SYSTEM})" in line and "would run code when loaded" in line, line
    assert not marker.exists()
    _unpickle_unsafely(path)  # the control: the payload is live
    assert marker.exists()


@pytest.mark.parametrize("reader", list(READERS))
def test_a_global_of_a_module_torch_does_not_block_is_named_too(tmp_path: Path, reader: str):
    source, marker = tmp_path / "source", tmp_path / "copied"
    source.write_text("the payload ran")
    path = tmp_path / "poisoned.pt"
    _save_with_torch(_Copy(source, marker), path)
    with pytest.raises(MiaError) as refused:
        READERS[reader](path)
    line = str(refused.value)
    assert "\n" not in line and "(shutil.copyfile) that would run code when loaded" in line, line
    assert not marker.exists()
    _unpickle_unsafely(path)
    assert marker.read_text() == "the payload ran"


@pytest.mark.parametrize(
    ("message", "name"),
    [
        # torch 2.14: a module it blocks outright (os, posix, nt, sys)
        ("Weights only load failed. In PyTorch 2.6, we changed the default …\n\n\nTrying to load unsupported GLOBAL "
         "posix.system whose module posix is blocked.\n\nCheck the documentation of torch.load …", "posix.system"),
        # older torch (and 2.14 for any other module)
        ("Weights only load failed. …\n\tWeightsUnpickler error: Unsupported global: GLOBAL nt.system was not an "
         "allowed global by default. Please use `torch.serialization.add_safe_globals([nt.system])` …", "nt.system"),
        ("Weights only load failed. …\nPlease file an issue …: WeightsUnpickler error: \n\nUnsupported operand 149\n\n"
         "Check the documentation …", None),
    ],
)
def test_both_of_torchs_wordings_name_the_global(message: str, name: str | None):
    refusal = weights_only_refusal(pickle.UnpicklingError(message))
    assert refusal.global_name == name
    if name is None:
        assert refusal.reason == "Unsupported operand 149"


def test_a_plain_tensor_betas_file_still_loads(tmp_path: Path):
    betas = torch.linspace(1e-4, 0.02, 10, dtype=torch.float64)
    torch.save(betas, tmp_path / "betas.pt")
    assert torch.equal(read_betas(tmp_path / "betas.pt"), betas)
