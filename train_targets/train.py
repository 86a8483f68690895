"""`mia-train`: train a target DDPM on the members of a seeded split and export it with its split."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mia.checks import require_bool
from mia.config import TRAIN_CONFIG_DIR, build, build_loggers, instantiate_group
from mia.data.duplicates import candidates, exclusion
from mia.data.literature import imported_indices
from mia.data.registry import build_pool, with_absolute_root
from mia.errors import MiaError
from mia.reporting.console import quiet_libraries
from mia.reporting.provenance import provenance
from mia.runs.exit import run_or_exit
from mia.targets.compiled import check_compile_mode
from train_targets.data import MemberDataModule
from train_targets.export import check_export_dir, export_target
from train_targets.inherited import check_nonmembers_unseen, inherited_training, merged
from train_targets.lora import LoRATarget
from train_targets.module import DDPMTarget
from train_targets.privacy import PrivateTraining, dp_settings

log = logging.getLogger(__name__)


class EpochsOfMaxSteps(L.Callback):
    """When ``max_steps`` alone sets the length (``max_epochs=-1``), ``max_epochs`` = the epochs it takes.

    Lightning's progress bar reads "Epoch e/max_epochs-1", so -1 showed as "Epoch 1499/-2". The bound is
    recomputed from the steps left at the start and after every epoch (batches per epoch as Lightning counts
    them: per rank, Poisson loaders included, over gradient accumulation), always above the epochs done while
    steps remain: ``max_steps`` still ends training, the epoch limit never does.
    """

    def __init__(self) -> None:
        self.active = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.active = trainer.max_epochs == -1 and trainer.max_steps > 0
        self._bound(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._bound(trainer)

    def _bound(self, trainer: L.Trainer) -> None:
        # Lightning stops once the epochs *processed* (counted before on_train_epoch_end) reach max_epochs.
        epochs_done = trainer.fit_loop.epoch_progress.current.processed
        batches = trainer.num_training_batches
        if not self.active or not math.isfinite(batches) or batches < 1:
            return
        steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        steps_left = trainer.max_steps - trainer.global_step
        if steps_left > 0:
            trainer.fit_loop.max_epochs = epochs_done + math.ceil(steps_left / steps_per_epoch)


def resume_path(ckpt_path: str | None) -> str | None:
    if ckpt_path is None:
        return None
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise MiaError(f"checkpoint {path} does not exist; pass ckpt_path=<run>/checkpoints/last.ckpt")
    return str(path)


def check_trainer_for_dp(cfg: DictConfig) -> None:
    """Make the trainer's settings fit DP-SGD (in ``cfg``, so the record says what ran), or refuse them."""
    trainer = cfg.trainer
    if trainer.get("gradient_clip_val") is not None:
        # Lightning would clip the batch's summed gradient, which DP-SGD never uses: the DPOptimizer replaces
        # it by the clipped per-sample gradients plus noise. Off, so no one reads a clipping that did nothing.
        log.info("DP-SGD: trainer.gradient_clip_val=%s turned off; each member's gradient is clipped to "
                 "training.dp.max_grad_norm instead", trainer.gradient_clip_val)
        OmegaConf.update(cfg, "trainer.gradient_clip_val", None)
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if accumulate != 1:
        raise MiaError(f"training.dp (DP-SGD) takes one batch per optimizer step; trainer.accumulate_grad_batches="
                       f"{accumulate} would sum per-sample gradients of several Poisson batches. Raise batch_size "
                       "instead")
    precision = OmegaConf.to_container(trainer, resolve=False).get("precision")
    if precision == "${auto_precision:}":
        # The automatic choice is bf16-mixed on a bf16 GPU; per-sample gradients under autocast are not
        # tested here, and full precision costs DP-SGD little next to its per-sample gradients.
        if str(trainer.precision) not in ("32-true", "32"):
            log.info("DP-SGD: trainer.precision=32-true instead of the automatic %s", trainer.precision)
        OmegaConf.update(cfg, "trainer.precision", "32-true")
    elif str(trainer.precision) not in ("32-true", "32"):
        raise MiaError(f"training.dp (DP-SGD) trains in full precision; set trainer.precision=32-true (got "
                       f"{trainer.precision}: per-sample gradients in reduced precision, and a 16-bit loss scale "
                       "clipped with them, are not supported here)")


class FirstStepTimer(L.Callback):
    """Wall time of the first training step, which is where ``compile=true`` compiles (training.json records it)."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.seconds: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.seconds is None and self.started is not None:
            self.seconds = time.perf_counter() - self.started


def compile_mode(cfg: DictConfig, dp: Any) -> str | None:
    """``compile=true``: the torch.compile mode the denoiser trains under, or None; refused where it cannot apply."""
    require_bool("compile", cfg.get("compile", False))
    if not cfg.get("compile"):
        return None
    mode = cfg.get("compile_mode", "default")
    check_compile_mode(mode)
    if dp is not None:
        raise MiaError("compile=true does not apply with training.dp: Opacus computes per-sample gradients with "
                       "hooks on the eager modules; train the DP-SGD target with compile=false")
    return mode


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Build data, model and trainer from the config, fit, export; returns the training summary."""
    started = time.time()
    L.seed_everything(cfg.seed, workers=True)
    export_dir = check_export_dir(cfg.export_dir, cfg.overwrite)
    ckpt_path = resume_path(cfg.ckpt_path)
    for key in cfg.target:
        if OmegaConf.is_missing(cfg.target, key):  # e.g. target=lora without target.base
            raise MiaError(f"target.{key} is not set; pass target.{key}=<value> (conf/train/target/)")
    dp = dp_settings(cfg.get("training", {}).get("dp"))  # a bad combination is refused here, before any work
    if dp is not None:
        check_trainer_for_dp(cfg)
    compile_as = compile_mode(cfg, dp)  # compile=true: refused here, before any image is read, where it cannot apply

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
        poisson_sampling=dp is not None and dp.poisson_sampling,
        exclude=exclusion(cfg.split.get("exclude"), pool, data_config),  # split.exclude: other splits' samples
        within=candidates(cfg.split.get("pool"), pool, data_config),  # split.pool: a shadow model's pool
    )
    split = datamodule.prepare()  # every bad-input check happens here, before any training

    model: DDPMTarget = build(cfg.target, _convert_="all")  # a MiaError from the model's own checks: one line
    if dp is not None and isinstance(model, LoRATarget):
        raise MiaError("training.dp (DP-SGD) is not built for LoRA fine-tunes (target=lora): DP-SGD on the adapter "
                       "parameters alone is a known defence, not wired here; train without training.dp or use "
                       "target=ddpm_*")
    if dp is not None and not isinstance(model, DDPMTarget):
        raise MiaError(f"training.dp (DP-SGD) trains the pixel DDPM targets (target=ddpm_*) only, not "
                       f"{type(model).__name__}: a text-to-image target also trains its VAE and text encoder")
    # What the starting weights (a fine-tune's base, a borrowed autoencoder) trained on: no non-member of it.
    started_from = model.started_from()
    inherited = inherited_training(started_from, data_config)
    check_nonmembers_unseen(split, inherited, started_from)
    model.compile_mode = compile_as
    model.check_fits(pool.channels, pool.image_size)
    if hasattr(model, "check_data"):  # e.g. a text-to-image model needs captions
        model.check_data(datamodule)
    if dp is not None:
        model.privacy = PrivateTraining(dp, members=len(split.members), max_steps=cfg.trainer.max_steps)
        model.privacy.check_model(model.denoiser)
        model.privacy.plan(datamodule.sample_rate)  # an unreachable ε: refused here
    first_step = FirstStepTimer()
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[*instantiate_group(cfg.get("callbacks")), EpochsOfMaxSteps(), first_step,
                   *(extra_callbacks or [])],
        logger=build_loggers(cfg.get("logger")),
    )
    if dp is not None and trainer.world_size > 1:
        raise MiaError(f"training.dp (DP-SGD) trains on one device; this trainer has {trainer.world_size} processes. "
                       "Set trainer.devices=1 (Opacus' DPDDP, which would add the noise once across ranks, is not "
                       "wired into Lightning's DDP here)")
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    n_params = model.parameter_count()  # the denoiser's; a LoRA's adapters
    log.info("training %s (%.2f M parameters) on %d members for %d steps", type(model.denoiser).__name__,
             n_params / 1e6, len(split.members), cfg.trainer.max_steps)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise MiaError(
            f"training stopped before max_steps; no target exported. Resume with "
            f"ckpt_path={Path(cfg.paths.output_dir) / 'checkpoints' / 'last.ckpt'}"
        )

    if dp is not None:
        model.privacy.release()  # the exported UNet carries no Opacus hooks or per-sample gradients
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
        **model.training_record(),  # e.g. a LoRA's base (path and fingerprint), rank and alpha
    }
    if model.compile_mode is not None:  # the first step holds the compiling (a resumed run's first step, after it)
        info["compile"] = {"mode": model.compile_mode, "first_step_seconds": first_step.seconds}
    if dp is not None:
        info["dp"] = model.privacy.spent()
        spent = info["dp"]
        log.info("DP-SGD spent ε = %s at δ = %g over %d steps (noise multiplier %s, max_grad_norm %g, %s)",
                 "∞" if spent["epsilon"] is None else f"{spent['epsilon']:.4g}", spent["delta"], spent["steps"],
                 spent["noise_multiplier"], spent["max_grad_norm"], spent["accountant"])
    if not trainer.is_global_zero:  # under DDP every rank gets here; one writes the target
        return info
    # e.g. a text-to-image autoencoder's images, a fine-tune's base's members: split.exclude keeps them out too
    also_trained_on = merged(inherited, model.also_trained_on())
    if also_trained_on:
        split = dataclasses.replace(split, also_trained_on=also_trained_on)
    export_target(model.export(), split, export_dir, info, overwrite=cfg.overwrite)
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
