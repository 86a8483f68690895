"""Bad input as a user meets it on the command line: one line on stderr, exit status 2, nothing written.

Every row of docs/bad_inputs.md that is not covered elsewhere is checked here, in-process: either the
``@hydra.main`` function itself (``sys.argv`` set), or, for the long table of knobs, the config Hydra
composes from the same overrides handed to ``run_or_exit`` as that function hands it (Hydra composes
twice per ``main`` call, about a second here). tests/test_attack_cli.py and tests/test_train.py keep
real subprocess runs of both console scripts.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import sys
import zlib
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, compose_config, console_script, write_images
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from PIL import Image

from mia.data.split import Split
from mia.runs.attack import run
from mia.runs.exit import run_or_exit

QUICK = ["logger=none", "metrics.bootstrap=10", "trainer.enable_progress_bar=false", "trainer=cpu"]


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """``cli(main, *argv) -> (exit status, stderr, stdout)`` for an entry point's ``@hydra.main`` function."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def call(main, *argv: str) -> tuple[int, str, str]:
        # The run's folder and its log folder (the cache's parent) in tmp_path, not in the working directory.
        monkeypatch.setattr(sys, "argv", [main.__module__, *argv, f"hydra.run.dir={tmp_path}/run",
                                          f"paths.log_dir={tmp_path}/logs"])
        status = 0
        try:
            main()
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 1
        finally:
            GlobalHydra.instance().clear()
            HydraConfig.instance().cfg = None  # a later in-process run must not see this run's overrides
            for handler in root.handlers:  # Hydra's console and file handlers, bound to this test's streams
                if handler not in saved[0]:
                    handler.close()
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
        captured = capsys.readouterr()
        return status, captured.err, captured.out

    return call


def refused(capsys, out: Path, *overrides: str) -> tuple[int, str, str]:
    """``mia-attack <overrides>`` after Hydra's composition: (exit status, stderr, stdout)."""
    cfg = compose_config("attack", list(overrides), out)
    with pytest.raises(SystemExit) as stop:
        run_or_exit("mia-attack", run, cfg)
    captured = capsys.readouterr()
    return stop.value.code, captured.err, captured.out


def attack_main():
    return console_script("mia-attack")


def assert_one_line(status: int, stderr: str, stdout: str, program: str, message: str) -> None:
    assert status == 2, stderr + stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in stderr + stdout


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """A randomly initialised tiny 8x8 grayscale DDPM pipeline folder with a split.json of 12 digits."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    folder = tmp_path_factory.mktemp("pipeline") / "target"
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    from mia.data.pools import DigitsPool
    from mia.data.split import fingerprint

    pool = DigitsPool(image_size=8)
    ids = [str(i) for i in range(12)]
    dataset = {"name": "digits", "image_size": 8, "channels": 1,
               "fingerprint": fingerprint(ids, [pool.read(int(i)) for i in ids])}
    Split(members=ids[:6], nonmembers=ids[6:], seed=0, dataset=dataset).save(folder / "split.json")
    return folder


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attack=sima", "attack.t=100.5"], "attack.t must be an integer, got 100.5"),
        (["attack=na", "attack.t=80.5"], "attack.t must be an integer, got 80.5"),
        (["attack=loss", "attack.t=80.5"], "attack.t must be an integer, got 80.5"),
        (["attack=pia", "attack.t=80.5"], "attack.t must be an integer, got 80.5"),
        (["attack=secmi", "attack.interval=2.5"], "attack.interval must be an integer"),
        (["attack=na", "attack.k=2.5"], "attack.k must be an integer"),
        (["attack=na", "attack.delta=0"], "attack.delta must be > 0"),
        (["attack=na", "attack.delta=-1e-12"], "attack.delta must be > 0"),
        (["attack=na", "attack.noise_scale=inf"], "attack.noise_scale must be a finite number"),
        (["attack=pia", "attack.p=abc"], "attack.p must be a finite number, got 'abc'"),
        (["attack.seed=-1"], "attack.seed must be an integer ≥ 0, got -1"),
        (["attack.seed=1.5"], "attack.seed must be an integer ≥ 0, got 1.5"),
        (["+attack.foo=1"], "attack.foo is not a setting of the na attack; its settings are t, k, m, noise_scale"),
        (["attack._target_=nowhere.Attack"], "is not an attack mia can import; choose attack=<"),
        (["metrics.seed=-1"], "metrics.seed must be an integer ≥ 0, got -1"),
        (["metrics.confidence=95"], "metrics.confidence must be a finite number in (0.0, 1.0), got 95"),
        (["metrics.bootstrap=2.5"], "metrics.bootstrap must be an integer ≥ 0"),
        (["data.batch_size=0"], "data.batch_size must be an integer ≥ 1, got 0"),
        (["data.num_workers=-1"], "data.num_workers must be an integer ≥ 0"),
        (["data.max_members=2.5"], "data.max_members must be an integer ≥ 1 or null, got 2.5"),
        (["data.allow_unverified=yes"], "data.allow_unverified must be true or false, got 'yes'"),
        (["report.profile_max_samples=0"], "report.profile_max_samples must be an integer ≥ 1 or null, got 0"),
        (["report.profile_timesteps=[80.5]"], "report.profile_timesteps[0] must be an integer ≥ 0, got 80.5"),
        (["report.profile_timesteps=80"], "report.profile_timesteps must be a non-empty list"),
        (["report.profile=no"], "report.profile must be true or false, got 'no'"),
        (["report.top_k=-1"], "report.top_k must be an integer ≥ 0"),
        (["attack=sima", "report.profile=true"], "report.profile is for the NA attack"),
        (["data=cifar10"], "data holds the attack's data settings"),
        (["cache.dir={tmp}/a_file/cache"], "is not writable"),
    ],
)
def test_attack_settings_are_one_line_and_exit_2(capsys, tmp_path, overrides, message):
    (tmp_path / "a_file").write_text("a file, not a folder")
    # These are refused before the target is read: the target path need not exist.
    status, err, out = refused(capsys, tmp_path / "run", f"target.path={tmp_path}/none", *QUICK,
                               *(o.format(tmp=tmp_path) for o in overrides))
    assert_one_line(status, err, out, "mia-attack", message)
    assert not list(tmp_path.glob("run/*.json")) and not list(tmp_path.glob("run/*.csv"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attack=pia", "attack.t=80.5"], "attack.t must be an integer, got 80.5"),
        (["+attack.foo=1"], "attack.foo is not a setting of the na attack; its settings are t, k, m, noise_scale"),
        (["metrics.confidence=95"], "metrics.confidence must be a finite number in (0.0, 1.0), got 95"),
    ],
)
def test_the_console_entry_point_gives_the_same_line(cli, tmp_path, overrides, message):
    status, err, out = cli(attack_main(), f"target.path={tmp_path}/none", *QUICK, *overrides)
    assert_one_line(status, err, out, "mia-attack", message)


def test_every_integer_knob_of_every_attack_refuses_a_float():
    """Each attack's int fields, from the dataclass, not a list kept by hand: none truncates 1.5 to 1."""
    import dataclasses

    from mia.attacks import PIA, PIAN, LossAttack, NoiseAggregation, SecMI, SimA
    from mia.errors import MiaError

    checked = 0
    for cls in (NoiseAggregation, LossAttack, PIA, PIAN, SecMI, SimA):
        for field in dataclasses.fields(cls):
            if field.type in ("int", "int | None"):
                for bad in (1.5, True, "3"):
                    with pytest.raises(MiaError, match=f"attack.{field.name} must be an integer"):
                        cls(**{field.name: bad})
                checked += 1
    # NA: t k m seed; loss: t draws seed; PIA, PIAN: t seed; SecMI: t_sec interval seed; SimA: t seed; and
    # FreMIA's filter_cutoff on NA, loss, PIA, PIAN and SecMI
    assert checked == 21


def test_mps_is_refused_for_want_of_float64(cli, tmp_path, monkeypatch):
    from lightning.fabric.accelerators.mps import MPSAccelerator

    from mia.runs.checks import runs_on_mps

    assert not runs_on_mps("auto") and not runs_on_mps("cpu")  # this machine has no MPS
    monkeypatch.setattr(MPSAccelerator, "is_available", staticmethod(lambda: True))  # as on Apple silicon
    assert runs_on_mps("auto") and runs_on_mps("gpu") and runs_on_mps("mps") and not runs_on_mps("cpu")
    status, err, out = cli(attack_main(), f"target.path={tmp_path}", "logger=none")  # trainer: accelerator=auto
    assert_one_line(status, err, out, "mia-attack", "Apple-silicon GPU (MPS), which has no float64")


def _bomb(path: Path, side: int, rows: bool) -> None:
    """A grayscale PNG of side x side pixels: all rows of zeros (compressed to little), or its header only."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    body = b""
    if rows:
        packer = zlib.compressobj(9)
        row = bytes(side + 1)  # filter byte + pixels
        body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("side", "rows", "kind"), [(20000, False, "DecompressionBombError"),
                                                     (9500, True, "DecompressionBombWarning")])
def test_a_decompression_bomb_is_one_line(capsys, pipeline, tmp_path, side, rows, kind):
    write_images(tmp_path / "in", 2, (8, 8), seed=0)
    write_images(tmp_path / "out", 2, (8, 8), seed=1)
    _bomb(tmp_path / "in" / "bomb.png", side, rows)  # 400 M pixels (refused by PIL) or 90 M (PIL only warns)
    status, err, out = refused(capsys, tmp_path / "run", f"target.path={pipeline}", *QUICK,
                               f"data.members={tmp_path}/in", f"data.nonmembers={tmp_path}/out")
    assert_one_line(status, err, out, "mia-attack", f"bomb.png ({kind}")


@pytest.mark.parametrize(
    ("members", "nonmembers", "message"),
    [
        ("imgs", "imgs", "are the same folder"),
        ("imgs", "imgs/sub", "data.nonmembers ({tmp}/imgs/sub) is inside data.members"),
        ("imgs/sub", "imgs", "data.members ({tmp}/imgs/sub) is inside data.nonmembers"),
        ("imgs", "linked", "1 files are in both data.members and data.nonmembers"),
    ],
)
def test_overlapping_folders_are_refused(capsys, pipeline, tmp_path, members, nonmembers, message):
    write_images(tmp_path / "imgs", 3, (8, 8), seed=0)
    write_images(tmp_path / "imgs" / "sub", 2, (8, 8), seed=1)
    write_images(tmp_path / "linked", 2, (8, 8), seed=2)
    (tmp_path / "linked" / "same.png").symlink_to(tmp_path / "imgs" / "0000.png")
    status, err, out = refused(capsys, tmp_path / "run", f"target.path={pipeline}", *QUICK,
                               f"data.members={tmp_path}/{members}", f"data.nonmembers={tmp_path}/{nonmembers}")
    assert_one_line(status, err, out, "mia-attack", message.format(tmp=tmp_path))


def test_an_unverified_split_is_refused_unless_allowed_and_the_run_then_says_so(cli, capsys, pipeline, tmp_path):
    """One run shows the three records of metrics.json: unverified labels, duplicates left out, provenance."""
    pool = tmp_path / "pool"
    write_images(pool, 5, (8, 8), seed=0)
    # A non-member with the same pixels as a member, in other bytes (a PNG at another compression level).
    Image.open(pool / "0002.png").save(pool / "copy.png", compress_level=0)
    assert (pool / "copy.png").read_bytes() != (pool / "0002.png").read_bytes()
    target = tmp_path / "target"
    shutil.copytree(pipeline, target)
    dataset = {"name": "folder", "root": str(pool), "image_size": 8, "channels": 1}  # no fingerprint
    Split(members=["0000.png", "0001.png", "0002.png"], nonmembers=["0003.png", "0004.png", "copy.png"], seed=7,
          dataset=dataset).save(target / "split.json")
    overrides = [f"target.path={target}", *QUICK, "attack=sima", "attack.t=50"]

    status, err, out = refused(capsys, tmp_path / "run", *overrides)
    assert_one_line(status, err, out, "mia-attack", "split.json has no fingerprint")
    assert not (tmp_path / "run" / "metrics.json").exists()

    status, err, out = cli(attack_main(), *overrides, "data.allow_unverified=true")
    assert status == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["evaluation_set"]["labels_verified"] is False
    assert "UNVERIFIED" in metrics["evaluation_set"]["verification"] and "labels are UNVERIFIED" in out
    assert metrics["n_members"] == 3 and metrics["n_nonmembers"] == 2  # the copy of a member is no non-member
    duplicates = metrics["evaluation_set"]["duplicates"]
    assert duplicates["left_out"] == 1 and duplicates["nonmembers_equal_to_members"] == [["copy.png", "0002.png"]]
    assert "1 exact duplicate images left out" in out

    record = metrics["provenance"]
    # The overrides as typed (Hydra keeps its own, hydra.run.dir here, apart).
    assert record["overrides"] == [*overrides, "data.allow_unverified=true", f"paths.log_dir={tmp_path}/logs"]
    assert record["split"] == {"fingerprint": None, "seed": 7}
    assert record["device"] == "cpu" and record["libraries"]["torch"] == torch.__version__
    assert {"diffusers", "lightning", "python"} <= set(record["libraries"])
    assert len(record["target_identity"]) == 64 and record["mia"]["version"]


def test_training_settings_are_one_line_and_exit_2(cli, tmp_path):
    from train_targets.train import main

    for overrides, message in (
        (["callbacks.ema.decay=1"], "callbacks.ema.decay must be a finite number in (0.0, 1.0), got 1"),
        (["split.seed=1.5"], "split.seed must be an integer ≥ 0, got 1.5"),
        (["training.dp.enabled=true"], "training.dp needs exactly one of noise_multiplier"),
        (["training.dp.enabled=true", "training.dp.noise_multiplier=1", "training.dp.max_grad_norm=0"],
         "training.dp.max_grad_norm must be a finite number > 0.0, got 0"),
    ):
        status, err, out = cli(main, *TINY_TRAIN, *overrides)
        assert_one_line(status, err, out, "mia-train", message)
        assert not (tmp_path / "run" / "target").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("attack.foo=1", "Key 'foo' is not in struct"),
        ("attack=nope", "Could not find 'attack/nope'"),
        ("attack.t=[", "no viable alternative at input '['"),
    ],
)
def test_hydra_refuses_unknown_keys_options_and_syntax_with_exit_1(cli, tmp_path, override, message):
    status, err, out = cli(attack_main(), f"target.path={tmp_path}", "logger=none", override)
    assert status == 1 and message in err and "Traceback" not in err + out


def test_provenance_source_is_the_checkout_or_nothing(tmp_path):
    import subprocess

    from mia.reporting.provenance import source

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()

    package = tmp_path / "mia"
    package.mkdir()
    (package / "__init__.py").write_text("")
    assert set(source(package)) == {"version"}  # outside any checkout: the version only
    git("init", "-q")
    (tmp_path / "other.txt").write_text("another project")
    git("add", "other.txt")
    git("commit", "-qm", "other")
    assert set(source(package)) == {"version"}  # a copy inside a repository that does not track it
    git("add", "mia")
    git("commit", "-qm", "mia")
    assert source(package) == {"version": source()["version"], "commit": git("rev-parse", "HEAD"), "dirty": False}
    (package / "__init__.py").write_text("# changed")
    assert source(package)["dirty"] is True


def test_split_records_hold_the_duplicate_check(tmp_path):
    split = Split(members=["1"], nonmembers=["2"], seed=0, duplicates={"rule": "r", "left_out": {"3": "1"}})
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == split
