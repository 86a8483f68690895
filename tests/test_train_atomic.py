"""A kill at any moment of checkpointing leaves a loadable last.ckpt (the trainer and callback of conf/train)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY_TRAIN, compose_config
from hydra.utils import instantiate
from torch.utils.data import DataLoader, TensorDataset


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path: Path, steps: int) -> tuple[L.Trainer, L.Callback]:
    """Fit a tiny module with the trainer and checkpoint callback of mia-train's config, a checkpoint a step."""
    cfg = compose_config("train", [*TINY_TRAIN, f"trainer.max_steps={steps}", "trainer.val_check_interval=null",
                                   "callbacks.model_checkpoint.every_n_train_steps=1"], tmp_path)
    checkpoint = instantiate(cfg.callbacks.model_checkpoint)
    trainer = instantiate(cfg.trainer, callbacks=[checkpoint], logger=False, accelerator="cpu")
    data = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=4)
    trainer.fit(_Tiny(), train_dataloaders=data)
    return trainer, checkpoint


def _step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def test_last_ckpt_never_points_at_a_removed_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # save_top_k=1 removes the previous checkpoint after saving the next; last.ckpt must already point past it.
    seen: list[int] = []
    cfg_last = tmp_path / "checkpoints" / "last.ckpt"
    from lightning.pytorch.callbacks import ModelCheckpoint

    remove = ModelCheckpoint._remove_checkpoint

    def remove_then_look(self, trainer, filepath):
        remove(self, trainer, filepath)
        seen.append(_step_of(cfg_last))  # a kill right here must find a loadable last.ckpt

    monkeypatch.setattr(ModelCheckpoint, "_remove_checkpoint", remove_then_look)
    _fit(tmp_path, steps=4)
    assert seen and seen == sorted(seen) and _step_of(cfg_last) == 4


def test_a_kill_while_relinking_last_ckpt_leaves_it_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    trainer, checkpoint = _fit(tmp_path, steps=2)
    last = tmp_path / "checkpoints" / "last.ckpt"

    def killed(*args, **kwargs):
        raise SystemExit("killed")  # the process dies before the new link exists

    monkeypatch.setattr(os, "symlink", killed)
    with pytest.raises(SystemExit):
        checkpoint._link_checkpoint(trainer, checkpoint.best_model_path, str(last))
    assert _step_of(last) == 2


def test_a_kill_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    trainer, _ = _fit(tmp_path, steps=1)
    writer = trainer.strategy.checkpoint_io
    path = tmp_path / "checkpoints" / "step0000001.ckpt"
    save = torch.save

    # The process dies halfway through putting bytes into a file: torch.save into a file, or the move of a
    # finished temporary file into place (a copy when the temporary folder is on another file system).
    def save_half(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO):
            return save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise SystemExit("killed")

    def move_half(src, dst, *args, **kwargs):
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise SystemExit("killed")

    monkeypatch.setattr(torch, "save", save_half)
    monkeypatch.setattr(shutil, "move", move_half)
    with pytest.raises(SystemExit):
        writer.save_checkpoint({"global_step": 99, "state_dict": {"w": torch.ones(1000)}}, path)
    monkeypatch.undo()
    assert _step_of(path) == 1
    # What a kill leaves behind is a hidden temporary file next to the checkpoint, cleaned when it can be.
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "step0000001.ckpt"]
