"""Every config option composes, and the defaults are the ones the spec names."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mia.attacks import PIA, PIAN, LossAttack, NoiseAggregation, SecMI, SimA
from mia.config import CONFIG_DIR

CONF = Path(CONFIG_DIR)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("data", options("data"))
def test_every_dataset_composes(data: str):
    cfg = config("train", f"data={data}", "data.root=/somewhere" if data == "folder" else "seed=0")
    assert cfg.data._target_.startswith("mia.data.pools.")
    assert cfg.target.unet.in_channels == cfg.data.channels and cfg.target.unet.sample_size == cfg.data.image_size


@pytest.mark.parametrize(("target", "millions"), [("ddpm_tiny", 0.18), ("ddpm_small", 1.11), ("ddpm_cifar10_32", 35.7)])
def test_model_sizes(target: str, millions: float):
    cfg = config("train", f"target={target}", "data.image_size=32", "data.channels=3", "paths.output_dir=x")
    model = instantiate(cfg.target, _convert_="all")
    assert sum(p.numel() for p in model.unet.parameters()) / 1e6 == pytest.approx(millions, rel=0.02)
    scheduler = model.noise_scheduler.config
    assert (scheduler.num_train_timesteps, scheduler.beta_schedule, scheduler.beta_start, scheduler.beta_end,
            scheduler.prediction_type) == (1000, "linear", 1e-4, 0.02, "epsilon")


@pytest.mark.parametrize(("attack", "expected"), [
    ("na", NoiseAggregation(t=80, k=5, m=10, noise_scale=1.0, statistic="pairwise_l2", direction="down")),
    ("loss", LossAttack(t=200, draws=1)),
    ("pia", PIA(t=200, p=4.0)),
    ("pian", PIAN(t=200, p=4.0)),
    ("secmi", SecMI(t_sec=100, interval=10)),
    ("sima", SimA(t=100, p=4.0)),
])
def test_attack_defaults_are_the_papers(attack: str, expected):
    assert options("attack") == ["loss", "na", "pia", "pian", "secmi", "sima"]
    assert instantiate(config("attack", "target.path=x", f"attack={attack}").attack, _convert_="all") == expected


@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu", "ddp"])
def test_trainer_options_compose(trainer: str):
    assert config("train", f"trainer={trainer}").trainer._target_ == "lightning.pytorch.Trainer"


@pytest.mark.parametrize("experiment", ["demo", "bench_cifar10", "bench_celeba"])
def test_training_experiments_compose(experiment: str):
    cfg = config("train", f"experiment={experiment}")
    assert cfg.split.members < cfg.split.nonmembers + 1  # at least as many non-members as members


@pytest.mark.parametrize("logger", ["wandb", "csv", "none"])
def test_logger_options_compose(logger: str):
    cfg = config("attack", "target.path=x", f"logger={logger}")
    assert ("wandb" in (cfg.logger or {})) == (logger == "wandb")
    if logger == "wandb":
        assert cfg.logger.wandb.offline is True  # offline unless the user asks


def test_every_key_of_every_config_file_is_commented():
    for path in CONF.rglob("*.yaml"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "-")) or stripped.endswith(":"):
                continue  # comments, list items and section headers
            if path.parent.name == "experiment" or "_target_" in stripped or "${" in stripped:
                continue
            assert "#" in line, f"{path.relative_to(CONF)}:{number} has no comment: {stripped}"
