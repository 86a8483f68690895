"""`mia-train`: train a target DDPM on the members of a seeded split and export it with its split."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mia.cli.config import TRAIN_CONFIG_DIR, build, build_loggers, instantiate_group
from mia.cli.console import quiet_libraries
from mia.data.literature import imported_indices
from mia.data.registry import build_pool, with_absolute_root
from mia.errors import MiaError, run_or_exit
from mia.reporting.provenance import provenance
from train_targets.data import MemberDataModule
from train_targets.export import check_export_dir, export_target
from train_targets.module import DDPMTarget

log = logging.getLogger(__name__)


def resume_path(ckpt_path: str | None) -> str | None:
    if ckpt_path is None:
        return None
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise MiaError(f"checkpoint {path} does not exist; pass ckpt_path=<run>/checkpoints/last.ckpt")
    return str(path)


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Build data, model and trainer from the config, fit, export; returns the training summary."""
    started = time.time()
    L.seed_everything(cfg.seed, workers=True)
    export_dir = check_export_dir(cfg.export_dir, cfg.overwrite)
    ckpt_path = resume_path(cfg.ckpt_path)

    data_config = with_absolute_root(OmegaConf.to_container(cfg.data, resolve=True))
    pool = build_pool(data_config)
    datamodule = MemberDataModule(
        pool,
        data_config,
        members=cfg.split.members,
        nonmembers=cfg.split.nonmembers,
        seed=cfg.split.seed,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        probe_size=cfg.probe_size,
        indices=imported_indices(cfg.split, pool),  # split.import_from: the literature's split file
    )
    split = datamodule.prepare()  # every bad-input check happens here, before any training

    model: DDPMTarget = build(cfg.target, _convert_="all")  # a MiaError from the model's own checks: one line
    model.check_fits(pool.channels, pool.image_size)
    if hasattr(model, "check_data"):  # e.g. a text-to-image model needs captions
        model.check_data(datamodule)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[*instantiate_group(cfg.get("callbacks")), *(extra_callbacks or [])],
        logger=build_loggers(cfg.get("logger")),
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    n_params = sum(p.numel() for p in model.denoiser.parameters())
    log.info("training %s (%.2f M parameters) on %d members for %d steps", type(model.denoiser).__name__,
             n_params / 1e6, len(split.members), cfg.trainer.max_steps)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise MiaError(
            f"training stopped before max_steps; no target exported. Resume with "
            f"ckpt_path={Path(cfg.paths.output_dir) / 'checkpoints' / 'last.ckpt'}"
        )

    steps = trainer.global_step
    info = {
        "steps": steps,
        # Under DDP each optimizer step takes one batch on every rank.
        "epochs": steps * min(cfg.batch_size, len(split.members)) * trainer.world_size / len(split.members),
        "batch_size": cfg.batch_size,
        "members": len(split.members),
        "nonmembers": len(split.nonmembers),
        "parameters": n_params,
        "parameters_per_member_image": n_params / len(split.members),
        "seconds": round(time.time() - started, 1),
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "config": OmegaConf.to_container(cfg, resolve=True),
        "provenance": provenance(device=str(trainer.strategy.root_device), split=split),
    }
    if not trainer.is_global_zero:  # under DDP every rank gets here; one writes the target
        return info
    export_target(model.pipeline(), split, export_dir, info, overwrite=cfg.overwrite)
    log.info(
        "trained %d steps (%.0f epochs over %d members, %.2f M parameters) in %.0f s; target: %s",
        steps, info["epochs"], len(split.members), n_params / 1e6, info["seconds"], export_dir,
    )
    return info


@hydra.main(version_base="1.3", config_path=TRAIN_CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    quiet_libraries()
    info = run_or_exit("mia-train", train, cfg)
    return info["metrics"].get("val/loss_gap")


if __name__ == "__main__":
    main()
