"""pytorch-ddpm checkpoints as targets: the reference's parameter layout, its ckpt.pt format, all six attacks.

The layout is checked against tests/fixtures/pytorch_ddpm_ch32_state_dict.txt (printed from the reference's
own UNet at ch = 32). What the module computes is checked against diffusers' UNet2DModel, whose architecture
coincides with it (DDPM's UNet) once the weights are renamed: an independent implementation of the same net.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, compose_config, score_all, write_images
from diffusers import UNet2DModel
from diffusers.models.embeddings import get_timestep_embedding
from fixtures.cifar import trust_checksums, write_cifar

from mia.attacks import PIA, PIAN, LossAttack, NoiseAggregation, SecMI, SimA
from mia.config import build
from mia.data.evaluation_set import evaluation_set_for
from mia.data.literature import literature_split
from mia.data.pools import cifar_pool
from mia.errors import MiaError
from mia.reporting.published import published
from mia.runs.checks import check_target_settings
from mia.targets.base import DiffusionTarget
from mia.targets.pytorch_ddpm import DDPMUNet, ResBlock

FIXTURE = Path(__file__).parent / "fixtures" / "pytorch_ddpm_ch32_state_dict.txt"
SMALL = {"ch": 16, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1, "num_groups": 8}  # 0.2 M parameters
SMALL_OVERRIDES = ["target=pytorch_ddpm", "target.module.ch=16", "target.module.ch_mult=[1,2]",
                   "target.module.num_res_blocks=1", "target.module.num_groups=8"]
QUICK = ["logger=none", "metrics.bootstrap=0", "trainer.enable_progress_bar=false"]


def test_the_parameter_layout_is_the_references():
    expected = [line.split() for line in FIXTURE.read_text().splitlines() if not line.startswith("#")]
    ours = [[name, "x".join(map(str, tensor.shape))] for name, tensor in DDPMUNet(ch=32).state_dict().items()]
    assert ours == expected  # every key, in the reference's order, with its shape


def test_the_default_architecture_is_the_literatures_35_7m():
    model = DDPMUNet()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # the time table is frozen
    assert trainable / 1e6 == pytest.approx(35.7, abs=0.05)


def pytorch_ddpm_checkpoint(path: Path, seed: int = 0, **arch) -> dict:
    """A ckpt.pt as pytorch-ddpm's main.py saves it: both models, scheduler and optimiser state, step, x_T."""
    torch.manual_seed(seed)
    net = DDPMUNet(**{**SMALL, **arch})
    with torch.no_grad():  # away from the near-zero init (gain 1e-5 layers), so every layer matters
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    ema = DDPMUNet(**{**SMALL, **arch})
    ema.load_state_dict({k: v + 0.01 if v.is_floating_point() else v for k, v in net.state_dict().items()})
    optim = torch.optim.Adam(net.parameters(), lr=2e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda=lambda step: min(step, 5000) / 5000)
    net(torch.randn(2, 3, 8, 8), torch.tensor([1, 2])).mean().backward()
    optim.step()
    sched.step()
    checkpoint = {"net_model": net.state_dict(), "ema_model": ema.state_dict(), "sched": sched.state_dict(),
                  "optim": optim.state_dict(), "step": 1, "x_T": torch.randn(4, 3, 8, 8)}
    torch.save(checkpoint, path)
    return checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One small checkpoint (and 3 + 3 images beside it) for the tests of this file, which only read it."""
    folder = tmp_path_factory.mktemp("pytorch_ddpm")
    content = pytorch_ddpm_checkpoint(folder / "ckpt.pt")
    write_images(folder / "in", 3, (8, 8), seed=0)
    write_images(folder / "out", 3, (8, 8), seed=1)
    return folder / "ckpt.pt", content


def small_target(path: Path, tmp_path: Path, *overrides: str) -> DiffusionTarget:
    cfg = compose_config("attack", [*SMALL_OVERRIDES, f"target.weights={path}", "target.sample_shape=[3,8,8]",
                                    *QUICK, *overrides], tmp_path)
    return build(cfg.target)


def test_a_checkpoint_loads_its_ema_weights(checkpoint, tmp_path: Path):
    path, content = checkpoint
    target = small_target(path, tmp_path)
    state = target.denoiser.module.state_dict()
    assert all(torch.equal(state[k], content["ema_model"][k]) for k in state)
    raw = small_target(path, tmp_path, "target.weights_key=net_model").denoiser.module.state_dict()
    assert all(torch.equal(raw[k], content["net_model"][k]) for k in raw)
    # DataParallel's "module." prefix is stripped.
    torch.save({"ema_model": {f"module.{k}": v for k, v in content["ema_model"].items()}}, tmp_path / "dp.pt")
    parallel = small_target(tmp_path / "dp.pt", tmp_path).denoiser.module.state_dict()
    assert all(torch.equal(parallel[k], state[k]) for k in state)


def test_every_attack_runs_on_a_checkpoint_with_counted_queries(checkpoint, tmp_path: Path):
    path, _ = checkpoint
    target = small_target(path, tmp_path)
    cfg = compose_config("attack", ["target.path=x", f"data.members={path.parent}/in",
                                    f"data.nonmembers={path.parent}/out"], tmp_path)
    evalset = evaluation_set_for(cfg.data, target.image_shape, None, "ckpt")
    for attack, queries in ((NoiseAggregation(), 5), (LossAttack(), 1), (PIA(), 2), (PIAN(), 2), (SecMI(), 12),
                            (SimA(), 1)):
        before = target.queries
        values = score_all(attack, target, evalset)
        assert np.isfinite(values).all() and len(np.unique(values)) == len(values), attack.name
        assert target.queries - before == queries * len(evalset), attack.name


RES = {"block1.0": "norm1", "block1.2": "conv1", "temb_proj.1": "time_emb_proj", "block2.0": "norm2",
       "block2.3": "conv2", "shortcut": "conv_shortcut"}
ATTN = {"group_norm": "group_norm", "proj_q": "to_q", "proj_k": "to_k", "proj_v": "to_v", "proj": "to_out.0"}


def to_diffusers(model: DDPMUNet, ch: int, ch_mult: list[int], attn: list[int], num_res_blocks: int) -> UNet2DModel:
    """The same weights in diffusers' UNet2DModel, with the configuration under which the two nets coincide."""
    levels = list(range(len(ch_mult)))
    unet = UNet2DModel(
        sample_size=8, block_out_channels=[ch * m for m in ch_mult], layers_per_block=num_res_blocks,
        down_block_types=["AttnDownBlock2D" if i in attn else "DownBlock2D" for i in levels],
        up_block_types=["AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(levels)],
        attention_head_dim=None, freq_shift=0, flip_sin_to_cos=False, downsample_padding=1, norm_num_groups=8,
    ).eval()
    ours, state = model.state_dict(), {}

    def rename(src: str, dst: str, names: dict[str, str], linear: bool = False) -> None:
        for a, b in names.items():
            for kind in ("weight", "bias"):
                key = ".".join(filter(None, (src, a, kind)))
                if key in ours:
                    value = ours[key].flatten(1) if linear and ours[key].ndim == 4 else ours[key]
                    state[".".join(filter(None, (dst, b, kind)))] = value

    def res_block(src: str, dst: str, attention: str | None) -> None:
        rename(src, dst, RES)
        if attention:  # diffusers' attention projections are Linear layers; ours are 1x1 convolutions
            rename(f"{src}.attn", attention, ATTN, linear=True)

    index = 0
    for level in levels:
        for j in range(num_res_blocks):
            res_block(f"downblocks.{index}", f"down_blocks.{level}.resnets.{j}",
                      f"down_blocks.{level}.attentions.{j}" if level in attn else None)
            index += 1
        if level < levels[-1]:
            rename(f"downblocks.{index}", f"down_blocks.{level}.downsamplers.0", {"main": "conv"})
            index += 1
    res_block("middleblocks.0", "mid_block.resnets.0", "mid_block.attentions.0")
    res_block("middleblocks.1", "mid_block.resnets.1", None)
    index = 0
    for position, level in enumerate(reversed(levels)):
        for j in range(num_res_blocks + 1):
            res_block(f"upblocks.{index}", f"up_blocks.{position}.resnets.{j}",
                      f"up_blocks.{position}.attentions.{j}" if level in attn else None)
            index += 1
        if level > 0:
            rename(f"upblocks.{index}", f"up_blocks.{position}.upsamplers.0", {"main": "conv"})
            index += 1
    rename("", "", {"head": "conv_in", "tail.0": "conv_norm_out", "tail.2": "conv_out"})
    rename("time_embedding.timembedding", "time_embedding", {"1": "linear_1", "3": "linear_2"})
    # Ours embeds t as (sin, cos) pairs interleaved; diffusers (flip_sin_to_cos=False) as all sines, then cosines.
    half = ch // 2
    order = [2 * j for j in range(half)] + [2 * j + 1 for j in range(half)]
    state["time_embedding.linear_1.weight"] = state["time_embedding.linear_1.weight"][:, order]
    unet.load_state_dict(state, strict=True)
    return unet


def test_it_computes_what_diffusers_ddpm_unet_computes():
    torch.manual_seed(0)
    arch = {"ch": 16, "ch_mult": [1, 2, 2], "attn": [1], "num_res_blocks": 2}
    model = DDPMUNet(**arch, num_groups=8).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        # The time table as diffusers computes the sinusoid, in our (sin, cos)-interleaved order.
        table = get_timestep_embedding(torch.arange(1000), 16, flip_sin_to_cos=False, downscale_freq_shift=0)
        model.time_embedding.timembedding[0].weight.copy_(torch.stack([table[:, :8], table[:, 8:]], -1).flatten(1))
    unet = to_diffusers(model, **arch)
    assert sum(isinstance(b, ResBlock) for b in model.upblocks) == 9
    x = torch.randn(2, 3, 8, 8)
    for t in (0, 80, 999):
        steps = torch.full((2,), t)
        with torch.no_grad():
            np.testing.assert_allclose(model(x, steps).numpy(), unet(x, steps).sample.numpy(), atol=2e-5, rtol=1e-4)


def test_the_preset_needs_a_checkpoint_and_has_every_module_key(tmp_path: Path):
    cfg = compose_config("attack", ["target=pytorch_ddpm"], tmp_path)
    module_cfg = compose_config("attack", ["target=module"], tmp_path)
    assert set(cfg.target) == set(module_cfg.target)  # pytorch_ddpm.yaml repeats module.yaml's keys
    with pytest.raises(MiaError, match=r"target\.weights is not set"):
        check_target_settings(cfg.target)


@pytest.mark.parametrize(("overrides", "message"), [
    (["target.module.attn=[2]"], r"target.module.attn=\[2\] names levels outside ch_mult's 0..1"),
    (["target.module.ch=8"], r"time_embedding.timembedding.0.weight is \[1000, 16\] in the file but \[1000, 8\]"),
    (["target.weights_key=optim"], r"'state' is a dict, not a tensor"),
])
def test_bad_checkpoints_and_settings_are_refused(checkpoint, tmp_path: Path, overrides, message):
    path, _ = checkpoint
    with pytest.raises(MiaError, match=message):
        small_target(path, tmp_path, *overrides)


@pytest.mark.slow  # six attack jobs in a separate process: about a minute of CPU (`make test-slow`)
def test_reproduce_cifar10_prints_measured_next_to_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """experiment=reproduce_cifar10 end to end, shrunk: a pytorch-ddpm checkpoint on a literature split."""
    root = tmp_path / "cifar10"
    write_cifar(root, "cifar10", train=40)
    trust_checksums(root, "cifar10", setattr=monkeypatch.setattr)
    order = np.random.default_rng(3).permutation(40)
    np.savez(tmp_path / "split.npz", mia_train_idxs=order[:6], mia_eval_idxs=order[6:12])
    # As mia-split writes it, at 8x8 (the shrunk model's size) instead of CIFAR's 32x32.
    dataset = {"name": "cifar10", "root": str(root), "subset": "train", "download": False, "image_size": 8,
               "channels": 3}
    literature_split(tmp_path / "split.npz", cifar_pool(**dataset), dataset).save(tmp_path / "split.json")
    pytorch_ddpm_checkpoint(tmp_path / "ckpt.pt")
    # A separate process, as the multirun is; the runner lets torchvision accept the fixture there too.
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.run(
        [sys.executable, str(REPO / "tests" / "fixtures" / "cifar.py"), str(root), "mia",
         "experiment=reproduce_cifar10", *SMALL_OVERRIDES, "target.sample_shape=[3,8,8]",
         f"target.weights={tmp_path}/ckpt.pt", f"target.split={tmp_path}/split.json", *QUICK,
         f"paths.log_dir={tmp_path}/runs", f"hydra.sweep.dir={tmp_path}/sweep"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "Measured / published (cifar10" in process.stdout + process.stderr
    sweep = tmp_path / "sweep"
    table = (sweep / "reproduction.md").read_text()
    assert table.count("\n| ") == 7  # the header and one row per attack
    with open(sweep / "reproduction.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["attack"] for r in rows] == ["na", "loss", "pia", "pian", "secmi", "sima"]
    assert [r["queries_per_sample"] for r in rows] == ["5", "1", "2", "2", "12", "1"]
    for row in rows:
        job = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert (float(row["auc"]), float(row["asr"]), float(row["asr_calibrated"])) == (
            job["auc"], job["asr"], job["asr_calibrated"])
        assert (job["n_members"], job["n_nonmembers"]) == (6, 6)
        paper = published(row["attack"], "cifar10")
        assert row["auc_published"] == "" if paper is None else float(row["auc_published"]) == paper.auc
    na = next(r for r in rows if r["attack"] == "na")
    assert (float(na["asr_published"]), float(na["tpr_at_1pct_fpr_published"])) == (0.901, 0.287)
