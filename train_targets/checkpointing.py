"""Checkpoints a kill cannot corrupt: atomic files, an atomic ``last.ckpt`` link, and weights-only loading.

Lightning's own writer stages a checkpoint in the system's temporary folder and moves it into place, which
is a copy (a partial file after a kill) when that folder is on another file system, and its ``last.ckpt``
link is removed and re-created, and left pointing at a deleted file while the previous checkpoint is
pruned. Here every file is written next to its final name and renamed over it, and the link is replaced
by a rename too, before any older checkpoint goes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mia.targets.checkpoint import load_checkpoint_file


def _replace_atomically(path: Path, write: Any) -> None:
    """Run ``write(temporary_path)`` in ``path``'s folder, then rename the result over ``path``."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(temporary))
        os.replace(temporary, path)  # atomic on POSIX: readers see the old file or the new one, never a mix
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, synced, then renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(temporary: Path) -> None:
            with open(temporary, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())  # on disk before the rename makes it the checkpoint

        _replace_atomically(path, write)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Always ``weights_only=True`` (a resumed checkpoint may come from elsewhere); MiaError when it needs more."""
        return load_checkpoint_file(path, map_location=map_location)


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose ``last.ckpt`` link always resolves to a complete checkpoint.

    With ``save_last: link`` the link moves to each new checkpoint as soon as it is written, so pruning the
    previous one (``save_top_k``) never leaves it dangling; the move itself is a rename.
    """

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if self.save_last != "link" or not self.dirpath:
            return
        last = os.path.join(self.dirpath, f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")
        if os.path.abspath(filepath) != os.path.abspath(last):
            self._link_checkpoint(trainer, filepath, last)
            self.last_model_path = last  # Lightning's own link step then finds its name taken by itself

    @staticmethod
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            link = Path(linkpath)
            if link.is_dir() and not link.is_symlink():
                shutil.rmtree(link)
            target = os.path.relpath(filepath, link.parent)

            def write(temporary: Path) -> None:
                temporary.unlink()
                try:
                    os.symlink(target, temporary)
                except OSError:  # no symbolic links (Windows without the privilege): a copy, still renamed in
                    shutil.copy(filepath, temporary)

            _replace_atomically(link, write)
        trainer.strategy.barrier()
