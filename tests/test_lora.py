"""LoRA fine-tunes: trained by mia-train (target=lora), loaded by diffusers, attacked by mia-attack (target.lora),
merged and live alike, an adapter made with peft directly attacked the same way, and the bad inputs refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file
from test_text_to_image_training import captioned_folder
from tiny_t2i import build_tiny_pixel, build_tiny_sd

from mia.attacks import PIA, LossAttack, NoiseAggregation, SampleNoise, SecMI, SimA
from mia.attacks.clid import CLiDThreshold
from mia.data.evaluation_set import evaluation_set_for
from mia.data.images import to_model_range
from mia.errors import MiaError
from mia.runs.attack import run
from mia.targets.folder import load_folder
from mia.targets.latent import folder_fingerprint
from train_targets.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["logger=none", "metrics.bootstrap=0", "trainer.enable_progress_bar=false", "cache.enabled=false"]
LORA = [
    "data=captioned_folder", "data.image_size=16", "target=lora", "split.members=8", "split.nonmembers=8",
    "batch_size=8", "probe_size=8", "logger=none", "trainer.max_steps=4", "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false", "target.sample_count=2", "target.sample_steps=2", "target.lr=1e-2",
    "target.alpha=8",
    "callbacks.model_checkpoint.every_n_train_steps=2", "callbacks.model_checkpoint.save_top_k=-1",
]
# The attacks and the queries each makes per sample (their definitions; docs/method.md).
ATTACKS = [(NoiseAggregation(), 5), (LossAttack(), 1), (PIA(), 2), (SecMI(), 12), (SimA(), 1), (CLiDThreshold(), 15)]
# Merged (W + s·(α/r)·B·A fused into W) and live (the adapter layers added at query time) differ only by float32
# rounding: the weights are summed in another order. Scores stay within this of each other.
MERGE_RTOL, MERGE_ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny Stable Diffusion base and a LoRA fine-tune of it trained by mia-train for 4 steps."""
    tmp = tmp_path_factory.mktemp("lora")
    base = build_tiny_sd(tmp / "base", scheduler="DDPMScheduler")
    data = captioned_folder(tmp / "data")
    info = train(compose_config("train", [*LORA, f"data.root={data}", f"target.base={base}"], tmp / "run"))
    return {"tmp": tmp, "base": base, "data": data, "run": tmp / "run", "adapter": tmp / "run" / "target",
            "info": info}


def projections(weights: dict[str, torch.Tensor], names: tuple[str, ...]) -> int:
    """How many layers of a plain (adapter-free) state dict end in one of ``names``: what adapters on them cover."""
    return sum(key.endswith(tuple(f".{name}.weight" for name in names)) for key in weights)


def attack_once(attack, target, images, captions, keys) -> torch.Tensor:
    """One attack's scores (CLiD: its features) on a batch, as the scoring engine computes them."""
    noise = SampleNoise(keys, attack.seed)
    x0 = target.encode(to_model_range(images), noise)
    attack.check(target)
    cond = target.conditions({"caption": captions}, 1.0)
    if attack.learns_from_labels:
        return attack.collect(target, x0, noise, cond)
    return attack.scores_of(target, x0, noise, cond)


@pytest.fixture(scope="module")
def batch(lora_run) -> tuple:
    """Three of the fine-tune's members: images, captions, keys."""
    target = load_folder(str(lora_run["base"]), lora=str(lora_run["adapter"]))
    evalset = evaluation_set_for({}, target.image_shape, target.split, "lora", "text", stream=True)
    items = [evalset[i] for i in range(3)]
    return torch.stack([item["image"] for item in items]), [item["caption"] for item in items], evalset.keys[:3]


# --- training and export ---------------------------------------------------------------------------------


def test_the_adapter_loads_in_diffusers_and_samples_with_a_prompt(lora_run):
    adapter = lora_run["adapter"]
    assert sorted(p.name for p in adapter.iterdir()) == ["pytorch_lora_weights.safetensors", "split.json",
                                                         "training.json"]
    pipeline = StableDiffusionPipeline.from_pretrained(lora_run["base"], safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    base_unet = {k: v.clone() for k, v in pipeline.unet.state_dict().items()}
    pipeline.load_lora_weights(adapter)
    generator = torch.Generator().manual_seed(0)
    images = pipeline(["a red dog"], num_inference_steps=2, output_type="np", generator=generator).images
    assert images.shape == (1, 16, 16, 3) and images.min() >= 0.0 and images.max() <= 1.0
    # The adapter is on every attention projection of the base UNet, and it trained (B left its zero start).
    lora_b = {k: v for k, v in pipeline.unet.state_dict().items() if "lora_B" in k}
    assert len(lora_b) == projections(base_unet, ("to_q", "to_k", "to_v", "to_out.0")) == 32
    assert all(v.abs().sum() > 0 for v in lora_b.values())
    assert all(torch.equal(base_unet[k], v) for k, v in pipeline.unet.state_dict().items() if k in base_unet)
    adapter_bytes = (adapter / "pytorch_lora_weights.safetensors").stat().st_size
    base_bytes = sum(p.stat().st_size for p in lora_run["base"].rglob("*") if p.is_file())
    assert adapter_bytes < base_bytes / 10, (adapter_bytes, base_bytes)


def test_training_json_records_the_base_the_rank_and_the_steps(lora_run):
    record = json.loads((lora_run["adapter"] / "training.json").read_text())
    assert record["steps"] == 4 and record["members"] == 8
    lora = record["lora"]
    base = lora_run["base"]
    assert lora["base"] == {"path": str(base.resolve()), "fingerprint": folder_fingerprint(base)}
    assert (lora["rank"], lora["alpha"], lora["target_modules"]) == (4, 8, ["to_k", "to_q", "to_v", "to_out.0"])
    assert record["parameters"] == lora["trained_parameters"] == 4096  # the adapters' parameters, not the base's


def test_checkpoints_hold_the_adapter_and_its_ema_not_the_base(lora_run):
    checkpoint = torch.load(lora_run["run"] / "checkpoints" / "step0000004.ckpt", weights_only=True)
    ema, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert set(ema) == set(raw) and len(ema) == 2 * 32 and all(".lora_" in k for k in ema)  # A and B of each
    assert checkpoint["lora_base"]["fingerprint"] == folder_fingerprint(lora_run["base"])
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # so the check below tells EMA from raw
    # The export is the EMA of the adapter weights: what the attack's live adapter holds.
    live = load_folder(str(lora_run["base"]), lora=str(lora_run["adapter"]), lora_merge=False)
    loaded = {f"unet.{k}".replace(".mia.", ".default."): v for k, v in live.denoiser.state_dict().items()
              if ".lora_" in k}
    assert set(loaded) == set(ema) and all(torch.equal(loaded[k], ema[k]) for k in ema)
    # α ≠ r survives the file (diffusers reads it from the metadata the export writes): scaling α/r = 8/4.
    scalings = {m.scaling["mia"] for m in live.denoiser.modules() if hasattr(m, "scaling") and "mia" in m.scaling}
    assert scalings == {2.0}


def test_resume_continues_from_the_adapter_and_refuses_another_base(lora_run, tmp_path: Path):
    step2 = lora_run["run"] / "checkpoints" / "step0000002.ckpt"
    common = [*LORA, f"data.root={lora_run['data']}", f"ckpt_path={step2}"]
    info = train(compose_config("train", [*common, f"target.base={lora_run['base']}"], tmp_path / "resumed"))
    assert info["steps"] == 4 and info["lora"]["base"]["fingerprint"] == folder_fingerprint(lora_run["base"])
    other = build_tiny_sd(tmp_path / "other", scheduler="DDPMScheduler", seed=1)
    with pytest.raises(MiaError, match="trained an adapter on another base model"):
        train(compose_config("train", [*common, f"target.base={other}"], tmp_path / "elsewhere"))
    assert not (tmp_path / "elsewhere" / "target").exists()


def test_adapters_on_the_text_encoder_too(lora_run, tmp_path: Path):
    overrides = [*LORA, f"data.root={lora_run['data']}", f"target.base={lora_run['base']}", "trainer.max_steps=2",
                 "target.train_text_encoder=true", "~callbacks.ema"]
    info = train(compose_config("train", overrides, tmp_path / "run"))
    assert info["lora"]["text_encoder_target_modules"] == ["q_proj", "k_proj", "v_proj", "out_proj"]
    saved = load_file(tmp_path / "run" / "target" / "pytorch_lora_weights.safetensors")
    assert {key.split(".", 1)[0] for key in saved} == {"unet", "text_encoder"}
    pipeline = StableDiffusionPipeline.from_pretrained(lora_run["base"], safety_checker=None)
    pipeline.load_lora_weights(tmp_path / "run" / "target")
    assert any("lora_B" in k for k in pipeline.text_encoder.state_dict())
    target = load_folder(str(lora_run["base"]), lora=str(tmp_path / "run" / "target"))
    assert target.lora["components"] == ["unet", "text_encoder"]
    base_text = load_folder(str(lora_run["base"])).text_encoder.state_dict()
    assert any(not torch.equal(v, base_text[k]) for k, v in target.text_encoder.state_dict().items())  # fused in


# --- attacking base + adapter ------------------------------------------------------------------------------


@pytest.mark.parametrize(("attack", "queries"), ATTACKS, ids=[a.name for a, _ in ATTACKS])
def test_merged_and_live_adapters_score_alike_and_count_the_defined_queries(lora_run, batch, attack, queries):
    scores = {}
    for merge in (True, False):
        target = load_folder(str(lora_run["base"]), lora=str(lora_run["adapter"]), lora_merge=merge)
        target.reset_queries()
        scores[merge] = attack_once(attack, target, *batch)
        assert target.queries == queries * 3
    torch.testing.assert_close(scores[True], scores[False], rtol=MERGE_RTOL, atol=MERGE_ATOL)
    base = load_folder(str(lora_run["base"]))
    assert not torch.allclose(attack_once(attack, base, *batch), scores[True], rtol=1e-3, atol=0)  # it is not the base


def test_mia_attack_on_base_plus_adapter_with_the_base_as_reference(lora_run, tmp_path: Path):
    target = [f"target.path={lora_run['base']}", f"target.lora={lora_run['adapter']}", "attack=na", *QUICK]
    metrics = run(compose_config("attack", target, tmp_path / "a"))
    assert metrics["n_members"] == 8 and metrics["evaluation_set"]["labels_verified"] is True  # the adapter's split
    assert metrics["queries_per_sample"] == 5
    assert metrics["target_lora"]["base_checked"] is True and metrics["target_lora"]["merged"] is True
    calibrated = run(compose_config("attack", [*target, "reference=base", "attack.calibration=reference"],
                                    tmp_path / "b"))
    assert calibrated["queries_per_sample"] == 10  # the same 5 on the target and on the base
    assert calibrated["reference_model"]["auc"] is not None and calibrated["uncalibrated"]["auc"] == metrics["auc"]


def peft_adapter(base: Path, folder: Path) -> Path:
    """An adapter made with peft alone (not mia's trainer): rank 2 on the UNet's to_q/to_v and the text encoder's
    q_proj, random B, saved as peft's keys with diffusers' component prefixes (the diffusers-loadable format)."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from transformers import CLIPTextModel

    torch.manual_seed(3)
    state = {}
    for prefix, module, modules in (("unet", UNet2DConditionModel.from_pretrained(base / "unet"), ["to_q", "to_v"]),
                                    ("text_encoder", CLIPTextModel.from_pretrained(base / "text_encoder"), ["q_proj"])):
        module = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=modules), module)
        for name, parameter in module.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.5)  # peft starts B at 0 (a no-op); trained ones are not
        state |= {f"{prefix}.{k}": v.contiguous() for k, v in get_peft_model_state_dict(module).items()}
    folder.mkdir(parents=True)
    save_file(state, folder / "pytorch_lora_weights.safetensors")
    return folder


def test_an_adapter_made_with_peft_is_attacked_the_same_way(lora_run, batch, captioned, tmp_path: Path):
    from peft import LoraConfig, inject_adapter_in_model

    adapter = peft_adapter(lora_run["base"], tmp_path / "peft")
    merged = load_folder(str(lora_run["base"]), lora=str(adapter))
    live = load_folder(str(lora_run["base"]), lora=str(adapter), lora_merge=False)
    unet_modules = projections(merged.denoiser.state_dict(), ("to_q", "to_v"))  # fused and unloaded: plain again
    text_modules = projections(merged.text_encoder.state_dict(), ("q_proj",))
    assert merged.lora["components"] == ["unet", "text_encoder"] and (unet_modules, text_modules) == (16, 2)
    assert merged.lora["tensors"] == 2 * (unet_modules + text_modules)
    assert merged.split is None and merged.lora["base_checked"] is False  # nothing beside it says what it trained on
    # peft's own merge (merge_and_unload) of the same file onto the base's UNet predicts what mia's target predicts.
    from diffusers import UNet2DConditionModel
    from peft.utils import set_peft_model_state_dict

    unet = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]),
                                   UNet2DConditionModel.from_pretrained(lora_run["base"] / "unet"))
    own = {k[len("unet."):]: v for k, v in load_file(adapter / "pytorch_lora_weights.safetensors").items()
           if k.startswith("unet.")}
    set_peft_model_state_dict(unet, own)
    z, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 48, 16)
    with torch.no_grad():
        expected = unet.eval()(z, t, encoder_hidden_states=text).sample
        torch.testing.assert_close(merged.denoiser(z, t, encoder_hidden_states=text).sample, expected,
                                   rtol=MERGE_RTOL, atol=MERGE_ATOL)
    for attack, queries in ATTACKS[:2]:
        live.reset_queries()
        scores = attack_once(attack, live, *batch)
        assert live.queries == queries * 3
        torch.testing.assert_close(attack_once(attack, merged, *batch), scores, rtol=MERGE_RTOL, atol=MERGE_ATOL)
    folders = [f"data.members={captioned[0]}", f"data.nonmembers={captioned[1]}", "protocol.blind_control=false"]
    metrics = run(compose_config("attack", [f"target.path={lora_run['base']}", f"target.lora={adapter}", "attack=loss",
                                            *folders, *QUICK], tmp_path / "run"))
    assert metrics["n_members"] == 10 and metrics["queries_per_sample"] == 1
    assert metrics["target_lora"]["base_checked"] is False


# --- bad input -----------------------------------------------------------------------------------------------


def test_an_adapter_that_fits_no_module_or_another_base_is_refused(lora_run, tmp_path: Path):
    base = str(lora_run["base"])
    state = load_file(lora_run["adapter"] / "pytorch_lora_weights.safetensors")
    for name, old, new, message in (("nowhere", ".attentions.", ".nowhere.", "matches no module of the base model"),
                                    ("partly", "down_blocks.1", "down_blocks.7",
                                     "16 of the 64 tensors .* match no module .* applied in part")):
        (tmp_path / name).mkdir()
        save_file({k.replace(old, new): v for k, v in state.items()},
                  tmp_path / name / "pytorch_lora_weights.safetensors")
        with pytest.raises(MiaError, match=message):
            load_folder(base, lora=str(tmp_path / name))
    other = build_tiny_sd(tmp_path / "other", scheduler="DDPMScheduler", seed=1)
    with pytest.raises(MiaError, match=r"was trained on another base model .* pass the base it was trained on"):
        load_folder(str(other), lora=str(lora_run["adapter"]))
    pixel = build_tiny_pixel(tmp_path / "pixel")
    with pytest.raises(MiaError, match="is a pixel-space pipeline"):
        load_folder(str(pixel), lora=str(lora_run["adapter"]))
    with pytest.raises(MiaError, match="is a LoRA adapter, not a pipeline folder"):
        load_folder(str(lora_run["adapter"]))
    with pytest.raises(MiaError, match=r"reference=base .* set target.lora"):
        run(compose_config("attack", [f"target.path={base}", "reference=base", "attack=loss", *QUICK], tmp_path / "r"))
    assert not (tmp_path / "r" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["target.rank=0"], r"target.rank must be a whole number ≥ 1"),
        (["target.rank=-2"], r"target.rank must be a whole number ≥ 1"),
        (["data=digits", "data.image_size=16", "data.channels=3"], "trains on captioned data"),
        (["training.dp.enabled=true", "training.dp.noise_multiplier=1.0"], "not built for LoRA fine-tunes"),
        (["target.base=null"], "target.base is not set"),
        (["target.target_modules=[nothing_here]"], "target.target_modules name no module of the base's UNet"),
    ],
)
def test_bad_lora_training_input_stops_before_training(lora_run, tmp_path: Path, overrides, message):
    root = [] if "data=digits" in overrides else [f"data.root={lora_run['data']}"]
    cfg = compose_config("train", [*LORA, *root, f"target.base={lora_run['base']}", *overrides], tmp_path / "run")
    with pytest.raises(MiaError, match=message):
        train(cfg)
    assert not (tmp_path / "run" / "target").exists()


def test_lora_scale_weighs_the_adapter_merged_or_live(lora_run, batch):
    attack = LossAttack()
    base = attack_once(attack, load_folder(str(lora_run["base"])), *batch)
    off = load_folder(str(lora_run["base"]), lora=str(lora_run["adapter"]), lora_scale=0.0)
    torch.testing.assert_close(attack_once(attack, off, *batch), base, rtol=MERGE_RTOL, atol=MERGE_ATOL)
    half = [attack_once(attack, load_folder(str(lora_run["base"]), lora=str(lora_run["adapter"]), lora_scale=0.5,
                                            lora_merge=merge), *batch) for merge in (True, False)]
    torch.testing.assert_close(half[0], half[1], rtol=MERGE_RTOL, atol=MERGE_ATOL)
    full = attack_once(attack, load_folder(str(lora_run["base"]), lora=str(lora_run["adapter"])), *batch)
    assert not torch.allclose(half[0], full, rtol=1e-4, atol=0) and not torch.allclose(half[0], base, rtol=1e-4, atol=0)


@pytest.mark.slow  # a second Python process (~20 s of imports); the same refusal is checked in-process above
def test_the_command_line_gives_one_line_and_exit_2(lora_run, tmp_path: Path):
    import subprocess
    import sys

    pixel = build_tiny_pixel(tmp_path / "pixel")
    process = subprocess.run(
        [sys.executable, "-m", "mia", f"target.path={pixel}", f"target.lora={lora_run['adapter']}", "logger=none",
         f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines()[-1].startswith("mia-attack: error: target.lora puts a LoRA adapter")
    assert not (tmp_path / "run" / "metrics.json").exists()
