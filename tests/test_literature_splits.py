"""The literature's split files (SecMI/PIA .npz) on torchvision-format CIFAR: mia-split, mia-train, bad input.

A synthetic CIFAR-10 in torchvision's format (tests/fixtures/cifar.py) and a small synthetic npz; never the
network, never /work/shared. The real files index 50,000 images; these index 40.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN, compose_config, console_script
from fixtures.cifar import trust_checksums, write_cifar

from mia.data.literature import literature_split
from mia.data.pools import cifar_pool
from mia.data.split import Split, fingerprint
from mia.errors import MiaError
from mia.runs.attack import run

TRAIN_IMAGES = 40


def tiny_train(root: Path, split_file: Path, *overrides: str) -> list[str]:
    """TINY_TRAIN on the CIFAR fixture (resized to 8x8), with the split imported from ``split_file``."""
    ours = ["data=cifar10", f"data.root={root}", "data.image_size=8", f"split.import_from={split_file}",
            "split.members=null", "split.nonmembers=null", *overrides]
    keys = {o.split("=")[0] for o in ours}
    return [o for o in TINY_TRAIN if o.split("=")[0] not in keys] + ours


@pytest.fixture
def cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray]:
    """A torchvision-format CIFAR-10 of 40 training images that torchvision accepts; and those images."""
    root = tmp_path / "cifar10"
    images = write_cifar(root, "cifar10", train=TRAIN_IMAGES)
    trust_checksums(root, "cifar10", setattr=monkeypatch.setattr)
    return root, images


def write_npz(path: Path, members, nonmembers, **extra) -> Path:
    np.savez(path, mia_train_idxs=np.asarray(members), mia_eval_idxs=np.asarray(nonmembers), ratio=0.5, **extra)
    return path


@pytest.fixture
def npz(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """12 members and 12 non-members of the 40, in a shuffled order (as the real files are)."""
    order = np.random.default_rng(7).permutation(TRAIN_IMAGES)
    members, nonmembers = order[:12], order[12:24]
    return write_npz(tmp_path / "CIFAR10_train_ratio0.5.npz", members, nonmembers), members, nonmembers


def mia_split(argv: list[str]) -> None:
    console_script("mia-split")(argv)


def test_mia_split_equals_the_npz_indices(cifar, npz, tmp_path: Path):
    root, images = cifar
    path, members, nonmembers = npz
    mia_split([str(path), "--data", "cifar10", "--root", str(root), "--out", str(tmp_path / "split.json")])
    split = Split.load(tmp_path / "split.json")
    assert split.members == [f"train/{i}" for i in members]
    assert split.nonmembers == [f"train/{i}" for i in nonmembers]
    # The fingerprint covers exactly the images at those positions of torchvision's order (written here).
    ids = split.members + split.nonmembers
    assert split.dataset["fingerprint"] == fingerprint(ids, [images[i].tobytes() for i in (*members, *nonmembers)])
    assert split.dataset["name"] == "cifar10" and split.dataset["pool_size"] == TRAIN_IMAGES
    assert split.dataset["root"] == str(root.resolve())


# experiment=paper_cifar10 shrunk to run in seconds on a CPU: the architecture, the steps, the data size.
PAPER_SHRUNK = ["experiment=paper_cifar10", "data.image_size=8", "target.unet.block_out_channels=[16,16,16,16]",
                "+target.unet.norm_num_groups=8", "target.unet.layers_per_block=1", "batch_size=8", "probe_size=4",
                "trainer.max_steps=2", "trainer.val_check_interval=2", "target.warmup_steps=1", "target.sample_count=0",
                "callbacks.model_checkpoint.every_n_train_steps=2", "logger=none", "trainer.enable_progress_bar=false"]


def test_the_paper_recipe_trains_on_the_imported_split_and_the_attack_rebuilds_it(cifar, npz, tmp_path: Path):
    root, _ = cifar
    path, members, nonmembers = npz
    from train_targets.train import train

    overrides = [*PAPER_SHRUNK, f"data.root={root}", f"split.import_from={path}", "split.members=12",
                 "split.nonmembers=12", f"export_dir={tmp_path}/target"]
    cfg = compose_config("train", overrides, tmp_path / "train")
    # The recipe, apart from what was shrunk: the literature's optimisation settings.
    assert (cfg.target.lr, cfg.target.hflip, cfg.callbacks.ema.decay, cfg.trainer.gradient_clip_val) == (
        2e-4, True, 0.9999, 1.0)
    info = train(cfg)
    assert info["steps"] == 2 and info["members"] == 12
    exported = Split.load(tmp_path / "target" / "split.json")
    assert exported.members == [f"train/{i}" for i in members]
    assert exported.nonmembers == [f"train/{i}" for i in nonmembers]
    converted = literature_split(path, cifar_pool(str(root), image_size=8), {})
    assert exported.dataset["fingerprint"] == converted.dataset["fingerprint"]

    metrics = run(compose_config("attack", [f"target.path={tmp_path}/target", "attack=sima", "logger=none",
                                            "metrics.bootstrap=0", "trainer.enable_progress_bar=false"],
                                 tmp_path / "attack"))
    assert (metrics["n_members"], metrics["n_nonmembers"]) == (12, 12)
    ids = [line.split(",")[0] for line in (tmp_path / "attack" / "scores.csv").read_text().splitlines()[1:]]
    assert ids == exported.members + exported.nonmembers


def test_cifar100_files_import_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "cifar100"
    images = write_cifar(root, "cifar100", train=20)
    trust_checksums(root, "cifar100", setattr=monkeypatch.setattr)
    path = write_npz(tmp_path / "c100.npz", [3, 1, 4], [5, 9, 2])
    mia_split([str(path), "--data", "cifar100", "--root", str(root), "--out", str(tmp_path / "split.json")])
    split = Split.load(tmp_path / "split.json")
    assert split.members == ["train/3", "train/1", "train/4"] and split.dataset["name"] == "cifar100"
    assert split.dataset["fingerprint"] == fingerprint(split.members + split.nonmembers,
                                                       [images[i].tobytes() for i in (3, 1, 4, 5, 9, 2)])


@pytest.mark.parametrize(
    ("members", "nonmembers", "extra", "message"),
    [
        ([0, 1, 40], [2, 3], {}, r"indexes image 40, but cifar10 under data.root has only 40"),
        ([0, 1, 2], [2, 3], {}, r"1 indices are both members and non-members \(e.g. 2\)"),
        ([0, 1, 1], [2, 3], {}, "lists index 1 more than once"),
        ([0, -1], [2, 3], {}, "negative index"),
        ([0.0, 1.0], [2, 3], {}, "integer indices"),
    ],
)
def test_bad_split_files_are_refused_in_one_line(cifar, tmp_path, capsys, members, nonmembers, extra, message):
    root, _ = cifar
    path = write_npz(tmp_path / "bad.npz", members, nonmembers, **extra)
    out = tmp_path / "split.json"
    with pytest.raises(SystemExit) as exit_info:
        mia_split([str(path), "--data", "cifar10", "--root", str(root), "--out", str(out)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mia-split: error: ")
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not out.exists() and not list(tmp_path.glob(".split.json*"))


def test_a_file_without_the_keys_is_refused(cifar, tmp_path: Path):
    root, _ = cifar
    np.savez(tmp_path / "other.npz", train=np.arange(3))
    with pytest.raises(MiaError, match="has no mia_train_idxs"):
        literature_split(tmp_path / "other.npz", cifar_pool(str(root)), {})


def test_an_image_tree_is_not_torchvision_order(image_tree: Path, npz, tmp_path: Path):
    path, _, _ = npz
    with pytest.raises(MiaError, match="torchvision's order"):
        literature_split(path, cifar_pool(str(image_tree)), {})


@pytest.mark.parametrize(("override", "message"), [
    ("split.members=10", r"split.members=10 but CIFAR10_train_ratio0.5.npz lists 12"),
    ("split.seed=3", "split.seed does not apply"),
])
def test_mia_train_refuses_split_settings_the_file_overrides(cifar, npz, tmp_path, override, message):
    root, _ = cifar
    path, _, _ = npz
    from train_targets.train import train

    with pytest.raises(MiaError, match=message):
        train(compose_config("train", tiny_train(root, path, override), tmp_path / "train"))
    assert not (tmp_path / "train" / "target").exists()


def test_mia_split_does_not_overwrite_unless_asked(cifar, npz, tmp_path: Path):
    root, _ = cifar
    path, _, _ = npz
    out = tmp_path / "split.json"
    out.write_text("{}")
    args = [str(path), "--data", "cifar10", "--root", str(root), "--out", str(out)]
    with pytest.raises(SystemExit):
        mia_split(args)
    assert out.read_text() == "{}"
    mia_split([*args, "--overwrite"])
    assert len(json.loads(out.read_text())["members"]) == 12


def test_the_reproduction_table_puts_each_measurement_next_to_its_paper(tmp_path: Path):
    from mia.reporting.published import PUBLISHED
    from mia.reporting.reproduction import write_reproduction

    sweep = tmp_path / "sweep"
    measured = {"na": 0.61, "loss": 0.55, "secmi": 0.52}
    for job, (attack, auc) in enumerate(measured.items()):
        (sweep / str(job)).mkdir(parents=True)
        metrics = {"attack": attack, "auc": auc, "asr": 0.6, "asr_calibrated": 0.55, "tpr_at_1pct_fpr": 0.125,
                   "tpr_at_0.1pct_fpr": 0.0, "queries_per_sample": {"na": 5, "loss": 1, "secmi": 12}[attack],
                   "n_members": 8, "n_nonmembers": 8, "settings": {"t": 80}}
        (sweep / str(job) / "metrics.json").write_text(json.dumps(metrics))
    written = write_reproduction(sweep, "cifar10")
    table = written["table"].read_text().splitlines()
    na_paper = next(p for p in PUBLISHED if p.attack == "na" and p.dataset == "cifar10")
    assert table[-3].startswith("| na | 5 / 5 | 0.600 / 0.901 | 0.550 | 0.610 / 0.957 | 12.50% / 28.70% | "
                                "0.00% / 1.22% | Li et al.")
    assert table[-2].startswith("| loss | 1 / — | 0.600 / — | 0.550 | 0.550 / — |")  # §5 lists no loss numbers
    assert "| secmi | 12 / 12 | 0.600 / 0.811 |" in table[-1]
    assert "on 8 members and 8 non-members" in table[0]
    assert na_paper.auc == 0.957 and na_paper.source.startswith("Li et al., arXiv 2510.21783")


def test_the_reproduction_experiment_runs_every_attack_and_adds_the_table():
    from hydra import compose, initialize_config_dir

    from mia.config import config_dir

    with initialize_config_dir(config_dir=config_dir("attack"), version_base="1.3"):
        cfg = compose("attack", ["experiment=reproduce_cifar10", "target=pytorch_ddpm", "target.weights=ckpt.pt"],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper.params.attack == "na,loss,pia,pian,secmi,sima"
    assert cfg.hydra.callbacks.reproduction._target_ == "mia.reporting.reproduction.ReproductionTable"
    assert "sweep_summary" in cfg.hydra.callbacks  # the sweep summary still runs first
    assert cfg.target.module._target_ == "mia.targets.pytorch_ddpm.DDPMUNet" and cfg.target.weights_key == "ema_model"
