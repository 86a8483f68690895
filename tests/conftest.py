"""Shared fixtures: small image trees made on the fly, tiny configs, and one tiny trained target."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from mia.config import config_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = [
    "data=digits",
    "data.image_size=8",
    "target=ddpm_tiny",
    "split.members=24",
    "split.nonmembers=24",
    "batch_size=8",
    "probe_size=8",
    "logger=none",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "target.sample_count=2",
    "target.sample_steps=2",
    "target.warmup_steps=1",
]


def console_script(name: str):
    """The function an installed console script (mia-attack, mia-train, mia-split) runs, as the shell finds it."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name=name)
    return script.load()


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """A root config as the entry point would see it, writing into ``output_dir``."""
    with initialize_config_dir(config_dir=config_dir(name), version_base="1.3"):
        paths = [f"paths.output_dir={output_dir}", f"paths.log_dir={output_dir}/runs"]
        return compose(name, overrides=[*overrides, *paths])


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int, ext: str = "png") -> list[Path]:
    """``count`` random RGB images of ``size`` (width, height) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.{ext}"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """root/{train,test}/<class>/NNNN.jpg at 32x32, like the CIFAR folders, plus a non-image file."""
    root = tmp_path / "cifar"
    for subset, count in (("train", 6), ("test", 2)):
        for index, name in enumerate(("cat", "dog")):
            write_images(root / subset / name, count, (32, 32), seed=index, ext="jpg")
    (root / "MANIFEST.sha256").write_text("not an image, ignored\n")
    return root


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny target trained for a few steps on 8x8 digits (24 members, 24 non-members)."""
    from train_targets.train import train

    out = tmp_path_factory.mktemp("tiny_target")
    train(compose_config("train", TINY_TRAIN, out))
    return out / "target"


@pytest.fixture(scope="session")
def digits_memorizer():
    """A memoriser of 200 digits at 16x16, and an evaluation set of those 200 and 200 others."""
    from diffusers import DDPMScheduler

    from mia.data.evaluation_set import EvaluationSet
    from mia.data.images import load_images, to_model_range
    from mia.data.pools import DigitsPool
    from mia.data.split import make_split
    from mia.targets.memorizer import memorizing_target

    alphas = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod
    pool = DigitsPool(image_size=16)
    member_idx, nonmember_idx = make_split(len(pool), 200, 200, seed=0)
    images, _ = load_images(pool, [*member_idx, *nonmember_idx])
    labels = torch.cat([torch.ones(200), torch.zeros(200)])
    ids = [pool.ids[i] for i in [*member_idx, *nonmember_idx]]
    target = memorizing_target(to_model_range(images[:200]), alphas)
    return target, EvaluationSet(images, labels, ids)


def score_all(attack, target, evalset, batch_size: int = 100) -> np.ndarray:
    """An attack's scores over an evaluation set, batch by batch, without Lightning."""
    from mia.attacks import SampleNoise
    from mia.data.images import to_model_range

    scores = []
    for start in range(0, len(evalset), batch_size):
        stop = min(start + batch_size, len(evalset))
        x0 = to_model_range(evalset.stack(range(start, stop)))
        scores.append(attack.scores_of(target, x0, SampleNoise(evalset.keys[start:stop], getattr(attack, "seed", 0))))
    return torch.cat(scores).numpy()


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny StableDiffusionPipeline folder (tests/tiny_t2i.py), built once per session."""
    from tiny_t2i import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "sd")


@pytest.fixture(scope="session")
def captioned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Member and non-member folders of 16 px images with captions (metadata.jsonl), 10 each."""
    from tiny_t2i import write_captioned

    root = tmp_path_factory.mktemp("captioned")
    write_captioned(root / "members", 10, seed=0)
    write_captioned(root / "nonmembers", 10, seed=1)
    return root / "members", root / "nonmembers"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run on one thread: a second one gains nothing there and thrashes when other jobs load the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
