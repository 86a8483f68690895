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

from mia.config import CONFIG_DIR, absolute_root, build, build_loggers, instantiate_group
from mia.data.datamodule import MemberDataModule
from mia.errors import MiaError, run_or_exit
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


def check_model_fits_data(model: DDPMTarget, channels: int, image_size: int) -> None:
    unet = model.unet.config
    if unet.in_channels != channels or unet.out_channels != channels or unet.sample_size != image_size:
        raise MiaError(
            f"the model takes {unet.in_channels}x{unet.sample_size}x{unet.sample_size} images but the data are "
            f"{channels}x{image_size}x{image_size}; set target.unet.* to match data.channels and data.image_size"
        )


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Build data, model and trainer from the config, fit, export; returns the training summary."""
    started = time.time()
    L.seed_everything(cfg.seed, workers=True)
    export_dir = check_export_dir(cfg.export_dir, cfg.overwrite)
    ckpt_path = resume_path(cfg.ckpt_path)

    pool = build(cfg.data, _convert_="all")
    data_config = absolute_root(OmegaConf.to_container(cfg.data, resolve=True))
    datamodule = MemberDataModule(
        pool,
        data_config,
        members=cfg.split.members,
        nonmembers=cfg.split.nonmembers,
        seed=cfg.split.seed,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        probe_size=cfg.probe_size,
    )
    split = datamodule.prepare()  # every bad-input check happens here, before any training

    model: DDPMTarget = instantiate(cfg.target, _convert_="all")
    check_model_fits_data(model, pool.channels, pool.image_size)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[*instantiate_group(cfg.get("callbacks")), *(extra_callbacks or [])],
        logger=build_loggers(cfg.get("logger")),
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise MiaError(
            f"training stopped before max_steps; no target exported. Resume with "
            f"ckpt_path={Path(cfg.paths.output_dir) / 'checkpoints' / 'last.ckpt'}"
        )

    n_params = sum(p.numel() for p in model.unet.parameters())
    steps = trainer.global_step
    info = {
        "steps": steps,
        "epochs": steps * min(cfg.batch_size, len(split.members)) / len(split.members),
        "batch_size": cfg.batch_size,
        "members": len(split.members),
        "nonmembers": len(split.nonmembers),
        "parameters": n_params,
        "parameters_per_member_image": n_params / len(split.members),
        "seconds": round(time.time() - started, 1),
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if not trainer.is_global_zero:  # under DDP every rank gets here; one writes the target
        return info
    export_target(model.unet, model.noise_scheduler, split, export_dir, info, overwrite=cfg.overwrite)
    log.info(
        "trained %d steps (%.0f epochs over %d members, %.2f M parameters) in %.0f s; target: %s",
        steps, info["epochs"], len(split.members), n_params / 1e6, info["seconds"], export_dir,
    )
    return info


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    info = run_or_exit("mia-train", train, cfg)
    return info["metrics"].get("val/loss_gap")


if __name__ == "__main__":
    main()
