"""target=module: a user's own denoiser, in their own file, attacked like any target.

The user's file (written here into a temporary project folder) wraps a small diffusers UNet2DModel in its
own conventions: [0, 1] images and t given as t / T. Its scores must equal those of the same weights driven
directly as a diffusers UNet2DModel with the conversions done by hand; in diffusers' own conventions they
must equal the pipeline kind's exactly.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, compose_config, score_all, write_images
from diffusers import DDPMPipeline, DDPMScheduler
from omegaconf import OmegaConf

from mia.attacks import PIA, NoiseAggregation, SecMI
from mia.config import build
from mia.data.evaluation_set import evaluation_set_for
from mia.errors import MiaError
from mia.runs.attack import run, scoring_settings
from mia.scoring.engine import predict
from mia.targets.module import _identity, load_module_target
from mia.targets.pipeline import load_pipeline_target

THEIR_FILE = '''
"""A user's own denoiser: trained on [0, 1] images, with t given to it as t / T."""
import torch
from diffusers import UNet2DModel
from torch import nn


class MyUNet(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.net = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(width, 2 * width),
                               layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                               up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)

    def forward(self, x, t):
        return self.net(x, t * 1000).sample  # a tensor; t arrives as t / T


class Native(nn.Module):
    """diffusers' own conventions: index timesteps, [-1, 1], an output with .sample."""

    def __init__(self, folder):
        super().__init__()
        self.net = UNet2DModel.from_pretrained(folder, subfolder="unet")

    def forward(self, x, t):
        return self.net(x, t)


def load(width=16):
    return MyUNet(width)


def load_native(folder):
    return Native(folder)


def not_a_module():
    return {"net": "weights"}


class EpsAndVariance(nn.Module):
    """A model that also predicts variances: 2C output channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)

    def forward(self, x, t):
        return self.conv(x)


def wrong_shape():
    return EpsAndVariance()
'''
MODULE = ["target=module", "target.sample_shape=[3,8,8]"]
QUICK = ["logger=none", "metrics.bootstrap=0", "trainer.enable_progress_bar=false"]
# The attacks whose queries differ most: a DDIM path (NA), t = 0 and back (PIA), an inversion (SecMI).
ATTACKS = [NoiseAggregation(t=40, k=3, m=10), PIA(t=50), SecMI(t_sec=40, interval=20)]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's project folder, as the working directory: their_file.py, a checkpoint, a pipeline, images.

    The checkpoint holds the weights of MyUNet under ``ema`` with DataParallel's ``module.`` prefix; the
    pipeline folder holds the same weights as a plain diffusers UNet2DModel.
    """
    (tmp_path / "their_file.py").write_text(THEIR_FILE)
    monkeypatch.chdir(tmp_path)
    # Not importable from the working directory unless mia makes it so (as for a console script).
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "their_file", raising=False)
    sys.path.insert(0, str(tmp_path))
    import their_file

    sys.path.remove(str(tmp_path))
    del sys.modules["their_file"]
    torch.manual_seed(0)
    model = their_file.load()
    with torch.no_grad():  # away from the near-zero init, so that every layer matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save({"ema": {f"module.{k}": v for k, v in model.state_dict().items()}, "step": 3}, tmp_path / "ckpt.pt")
    DDPMPipeline(unet=model.net, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "pipeline")
    write_images(tmp_path / "in", 3, (8, 8), seed=0)
    write_images(tmp_path / "out", 3, (8, 8), seed=1)
    yield tmp_path
    sys.modules.pop("their_file", None)


def attack_cfg(out: Path, *overrides: str):
    return compose_config("attack", [*QUICK, "data.members=in", "data.nonmembers=out", *overrides], out)


def read_scores(path: Path) -> np.ndarray:
    return np.array([float(line.split(",")[-1]) for line in path.read_text().splitlines()[1:]])


def test_a_users_unet_in_their_file_scores_as_the_same_diffusers_unet(project: Path):
    """The issue's command line, in-process: fraction timesteps, [0, 1] input, a checkpoint with key and prefix."""
    metrics = run(attack_cfg(project / "run", *MODULE, "target.module._target_=their_file.load",
                             "target.timestep_input=fraction", "target.input_range=[0,1]",
                             "target.weights=ckpt.pt", "target.weights_key=ema", "target.weights_prefix=module.",
                             "attack=na"))
    assert metrics["queries_per_sample"] == 5 and metrics["target_kind"] == "module"
    assert metrics["target"] == str(project / "ckpt.pt")

    # The same weights as a diffusers UNet2DModel, driven by hand in the model's conventions: x0 in [0, 1].
    cfg = attack_cfg(project / "reference", "target.path=pipeline", "attack=na", "cache.enabled=false")
    reference = load_pipeline_target(project / "pipeline")
    reference.encode = lambda images, noise=None: (images + 1) / 2
    evalset = evaluation_set_for(cfg.data, reference.image_shape, None, "reference")
    expected = predict(NoiseAggregation(), reference, evalset, scoring_settings(cfg)).features
    np.testing.assert_array_equal(read_scores(project / "run" / "scores.csv"), expected)


def test_in_diffusers_conventions_the_attacks_equal_the_pipeline_kinds(project: Path):
    module_cfg = attack_cfg(project / "m", *MODULE, "target.module._target_=their_file.load_native",
                            f"+target.module.folder={project}/pipeline")
    pipeline_cfg = attack_cfg(project / "p", "target.path=pipeline")
    module, pipeline = build(module_cfg.target), build(pipeline_cfg.target)
    evalset = evaluation_set_for(module_cfg.data, module.image_shape, None, "module")
    for attack in ATTACKS:  # the attacks themselves, without the Lightning loop: only the targets differ
        ours, theirs = score_all(attack, module, evalset), score_all(attack, pipeline, evalset)
        np.testing.assert_array_equal(ours, theirs, err_msg=attack.name)
    assert module.queries == pipeline.queries == len(evalset) * (3 + 2 + 4)


def test_each_forward_of_the_users_module_is_one_counted_query(project: Path):
    cfg = attack_cfg(project, *MODULE, "target.module._target_=their_file.load", "target.timestep_input=fraction")
    target = build(cfg.target)
    samples: list[int] = []

    def seen(module, args, output) -> None:
        samples.append(len(args[0]))

    target.denoiser.module.register_forward_hook(seen)
    evalset = evaluation_set_for(cfg.data, target.image_shape, None, "module")
    settings = scoring_settings(compose_config("attack", [*QUICK, "target.path=x", "data.batch_size=4",
                                                          "cache.enabled=false"], project))
    scores = predict(NoiseAggregation(t=40, k=3), target, evalset, settings)
    assert scores.queries == 3 * len(evalset)
    # k forwards for each batch of 4 and 2 samples, each padded to one pass of micro_batch rows; the padding
    # is not counted (docs/method.md, "batch invariance").
    assert samples == [target.micro_batch] * 6 and len(evalset) == 6


def test_the_identity_follows_weights_and_settings(project: Path):
    cfg = attack_cfg(project, *MODULE, "target.module._target_=their_file.load")

    def identity(**changes) -> str:
        return load_module_target(OmegaConf.merge(cfg.target, changes)).identity

    weights = {"weights": "ckpt.pt", "weights_key": "ema", "weights_prefix": "module."}
    first = identity(**weights)
    assert identity(**weights) == first
    assert identity(**weights, timestep_input="fraction") != first
    assert identity(**weights, input_range=[0, 1]) != first
    state = torch.load(project / "ckpt.pt", weights_only=True)
    state["ema"]["module.net.conv_out.bias"] += 1
    torch.save(state, project / "ckpt.pt")
    assert identity(**weights) != first
    # Without a weights file, the module's own state dict is the identity: a seeded factory gives one value.
    import their_file

    seeded = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        seeded.append(_identity(cfg.target, their_file.load(), torch.linspace(0.9, 0.1, 10)))
    assert seeded[0] == seeded[1] != seeded[2]


@pytest.mark.slow
def test_the_console_script_imports_their_file_from_the_working_directory(project: Path):
    # `-P`: no working directory on sys.path, as for the installed mia-attack script.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-P", "-m", "mia", *MODULE, *QUICK,
               "target.module._target_=their_file.load", "target.timestep_input=fraction", "target.input_range=[0,1]",
               "data.members=in", "data.nonmembers=out", "attack=sima", "hydra.run.dir=run", "paths.log_dir=runs"]
    process = subprocess.run(command, cwd=project, capture_output=True, text=True, env=env, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    assert len(read_scores(project / "run" / "scores.csv")) == 6


def _save(path: Path, content) -> str:
    torch.save(content, path)
    return path.name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["target.module._target_=their_file.not_a_module"], r"returned a dict, not a torch.nn.Module"),
        (["target.module._target_=their_file.wrong_shape"], r"returned ε of shape \[2, 6, 8, 8\] for an input"),
        (["target.module._target_=no_such_file.load"], r"cannot import target.module._target_=no_such_file.load"),
        (["target.module._target_=null"], r"target.module._target_ is not set"),
        (["target.timestep_input=seconds"], r"target.timestep_input must be index .* or fraction"),
        (["target.input_range=[0,255]"], r"target.input_range must be \[-1, 1\] or \[0, 1\]"),
        (["target.sample_shape=[3,8]"], r"target.sample_shape must be the model's input \[C, H, W\]"),
        (["target.sample_shape=[3,7,7]"], r"the module failed on an input of shape \[2, 3, 7, 7\]"),
        (["target.schedule.beta_schedule=cosine"], r"beta_schedule must be one of linear, scaled_linear"),
        (["target.weights=missing.pt"], r"weights file .*missing.pt does not exist"),
        (["target.weights=ckpt.pt"], r"'ema' is a dict, not a tensor .* set target.weights_key"),
        (["target.weights=ckpt.pt", "target.weights_key=ema_model"], r"no entry 'ema_model' \(it holds: ema, step\)"),
        (["target.weights=ckpt.pt", "target.weights_key=ema"],
         r"1\d+ of the module's keys are missing \(first: net.conv_in.weight\); 1\d+ keys are unexpected "
         r"\(first: module.net.conv_in.weight\)"),
        (["target.weights_prefix=module."], r"target.weights is not"),
        (["target.split=CIFAR10_train_ratio0.5.npz"], r"target.split takes a split.json; convert"),
        (["+target.path=pipeline"], r"target.path is not a setting of the mia.targets.module.load_module loader"),
    ],
)
def test_bad_input_is_refused_with_one_line(project: Path, overrides: list[str], message: str):
    defaults = [] if any("_target_" in o for o in overrides) else ["target.module._target_=their_file.load"]
    with pytest.raises(MiaError, match=message) as error:
        run(attack_cfg(project / "run", *MODULE, *defaults, *overrides, "attack=sima"))
    assert "\n" not in str(error.value)
    assert not (project / "run" / "metrics.json").exists()


def test_weights_files_that_need_unpickling_or_do_not_fit_are_refused(project: Path):
    base = [*MODULE, "target.module._target_=their_file.load", "attack=sima"]
    state = torch.load(project / "ckpt.pt", weights_only=True)["ema"]
    unsafe = _save(project / "unsafe.pt", {"ema": state, "args": argparse.Namespace(lr=1e-4)})
    with pytest.raises(MiaError, match=r"holds a Python object \(argparse.Namespace\).* mia refuses it"):
        run(attack_cfg(project / "a", *base, f"target.weights={unsafe}", "target.weights_key=ema"))
    narrow = _save(project / "narrow.pt", {k[len("module."):]: v for k, v in state.items()})
    with pytest.raises(MiaError, match=r"net.conv_in.weight is \[16, 3, 3, 3\] in the file but \[8, 3, 3, 3\]"):
        run(attack_cfg(project / "b", *base, f"target.weights={narrow}", "+target.module.width=8"))
    (project / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MiaError, match="is not a PyTorch weights file"):
        run(attack_cfg(project / "c", *base, "target.weights=junk.pt"))
    np.save(project / "betas.npy", np.linspace(1e-4, 0.02, 1000)[::-1] * -1)
    with pytest.raises(MiaError, match=r"the betas in .* must all lie in \(0, 1\)"):
        run(attack_cfg(project / "d", *base, "target.betas_file=betas.npy"))


def test_a_betas_file_sets_the_schedule(project: Path):
    betas = np.linspace(1e-4, 0.02, 1000)
    np.save(project / "betas.npy", betas)
    cfg = attack_cfg(project, *MODULE, "target.module._target_=their_file.load", "target.betas_file=betas.npy")
    target = build(cfg.target)
    np.testing.assert_allclose(target.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-12)
    diffusers = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod.double()
    np.testing.assert_allclose(target.alphas_cumprod.numpy(), diffusers.numpy(), rtol=1e-5)


def test_pipeline_kinds_refuse_module_settings(project: Path):
    refused = r"is not a setting of the mia.targets.folder.load_folder loader; .* it is a setting of target=module"
    with pytest.raises(MiaError, match=r"target.timestep_input " + refused):
        run(attack_cfg(project / "run", "target.path=pipeline", "+target.timestep_input=fraction", "attack=sima"))
    with pytest.raises(MiaError, match=r"target.weights " + refused):
        run(attack_cfg(project / "run", "target.path=pipeline", "+target.weights=ckpt.pt", "attack=sima"))
