"""Every config option composes and instantiates, and the defaults are the ones the spec names.

As in the lightning-hydra-template, configs are composed with the Hydra config in place
(``HydraConfig().set_config``) and then built: the trainer, the model, the callbacks, the loggers.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from mia.attacks import PIA, PIAN, LossAttack, NoiseAggregation, SecMI, SimA
from mia.attacks.blind import BlindAttack
from mia.attacks.clid import CLiDClassifier, CLiDThreshold
from mia.attacks.gsa import GSA1, GSA2
from mia.config import CONF_ROOT, build_loggers, config_dir, instantiate_group
from mia.data.registry import build_pool


def options(tree: str, group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_ROOT / tree / group).glob("*.yaml"))


def config(tree: str, *overrides: str, output_dir: Path | None = None):
    """A root config with the Hydra config set, as the entry point sees it."""
    with initialize_config_dir(config_dir=config_dir(tree), version_base="1.3"):
        cfg = compose(tree, overrides=list(overrides), return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir / "runs")
    HydraConfig().set_config(cfg)
    return cfg


@pytest.mark.parametrize("data", options("train", "data"))
def test_every_dataset_composes(data: str):
    cfg = config("train", f"data={data}", "data.root=/somewhere" if data == "folder" else "seed=0")
    assert "_target_" not in cfg.data  # datasets are named (mia.data.registry), never built from a code path
    assert cfg.target.unet.in_channels == cfg.data.channels and cfg.target.unet.sample_size == cfg.data.image_size


def test_the_default_dataset_builds():
    pool = build_pool(config("train").data)
    assert len(pool) == 1797 and pool.name == "digits"


@pytest.mark.parametrize(("target", "millions"), [("ddpm_tiny", 0.18), ("ddpm_small", 1.11), ("ddpm_cifar10_32", 35.7)])
def test_model_sizes(target: str, millions: float, tmp_path: Path):
    cfg = config("train", f"target={target}", "data.image_size=32", "data.channels=3", output_dir=tmp_path)
    model = instantiate(cfg.target, _convert_="all")
    assert sum(p.numel() for p in model.unet.parameters()) / 1e6 == pytest.approx(millions, rel=0.02)
    scheduler = model.noise_scheduler.config
    assert (scheduler.num_train_timesteps, scheduler.beta_schedule, scheduler.beta_start, scheduler.beta_end,
            scheduler.prediction_type) == (1000, "linear", 1e-4, 0.02, "epsilon")


@pytest.mark.parametrize("trainer", options("train", "trainer"))
def test_training_trainers_instantiate(trainer: str, tmp_path: Path):
    cfg = config("train", f"trainer={trainer}", output_dir=tmp_path)
    if cfg.trainer.accelerator == "gpu":  # gpu and ddp: composed here, built only where a GPU exists
        assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
        return
    built = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.callbacks), logger=build_loggers(cfg.logger))
    assert isinstance(built, L.Trainer) and built.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("experiment", options("train", "experiment"))
def test_training_experiments_instantiate(experiment: str, tmp_path: Path):
    cfg = config("train", f"experiment={experiment}", "logger=none", output_dir=tmp_path)
    assert cfg.split.members <= cfg.split.nonmembers  # at least as many non-members as members
    model = instantiate(cfg.target, _convert_="all")
    model.check_fits(cfg.data.channels, cfg.data.image_size)  # the model takes the experiment's images
    assert isinstance(instantiate(cfg.trainer, callbacks=instantiate_group(cfg.callbacks), logger=False),
                      L.Trainer)


@pytest.mark.parametrize(("attack", "expected"), [
    ("na", NoiseAggregation(t=80, k=5, m=10, noise_scale=1.0, statistic="pairwise_l2", direction="down")),
    ("loss", LossAttack(t=200, draws=1)),
    ("pia", PIA(t=None, p=4.0)),  # None: the paper's t for the target's schedule (200 DDPM, 500 SD)
    ("pian", PIAN(t=None, p=4.0)),
    ("secmi", SecMI(t_sec=100, interval=10)),
    ("sima", SimA(t=100, p=4.0)),
    ("clid", CLiDThreshold(timesteps=[440, 450, 460], degradation=[0.3, 0.5, 0.7])),
    ("clid_vec", CLiDClassifier(n_estimators=20, max_depth=3, subsample=0.7, colsample_bytree=0.7, gamma=0.7)),
    ("blind", BlindAttack(classifier="logistic")),
    ("gsa", GSA1(k=10, layers=None, n_estimators=200)),  # attack=gsa is the paper's first variant
    ("gsa2", GSA2(k=10, layers=None, n_estimators=200)),
])
def test_attack_defaults_are_the_papers(attack: str, expected):
    assert options("attack", "attack") == ["blind", "clid", "clid_th", "clid_vec", "gsa", "gsa1", "gsa2", "learned",
                                           "loss", "na", "pia", "pian", "reconstruction", "rediffuse", "secmi",
                                           "secmi_nn", "sima"]
    assert instantiate(config("attack", "target.path=x", f"attack={attack}").attack, _convert_="all") == expected


@pytest.mark.parametrize("trainer", options("query", "trainer"))
def test_attack_trainers_are_the_attacks_own(trainer: str, tmp_path: Path):
    cfg = config("attack", "target.path=x", f"trainer={trainer}", output_dir=tmp_path)
    # No training option can leak in: the attack's tree has no max_steps, clipping or bf16.
    assert "max_steps" not in cfg.trainer and "gradient_clip_val" not in cfg.trainer
    assert cfg.trainer.precision == "32-true" and cfg.trainer.inference_mode is True
    if cfg.trainer.accelerator != "gpu":
        assert isinstance(instantiate(cfg.trainer), L.Trainer)


def test_attack_cpu_trainer_is_the_cpu():
    assert config("attack", "target.path=x", "trainer=cpu").trainer.accelerator == "cpu"


@pytest.mark.parametrize("logger", options("common", "logger"))
def test_logger_options_compose_in_both_trees(logger: str, tmp_path: Path):
    for tree in ("train", "attack"):
        cfg = config(tree, "target.path=x" if tree == "attack" else "seed=0", f"logger={logger}", output_dir=tmp_path)
        assert ("wandb" in (cfg.logger or {})) == (logger == "wandb")
        if logger == "wandb":
            assert cfg.logger.wandb.offline is True  # offline unless the user asks
        built = build_loggers(cfg.get("logger"))
        assert len(built) == len(cfg.logger or {})


def test_every_key_of_every_config_file_is_commented():
    for path in CONF_ROOT.rglob("*.yaml"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "-")) or stripped.endswith(":"):
                continue  # comments, list items and section headers
            if path.parent.name == "experiment" or "_target_" in stripped or "${" in stripped:
                continue
            assert "#" in line, f"{path.relative_to(CONF_ROOT)}:{number} has no comment: {stripped}"
