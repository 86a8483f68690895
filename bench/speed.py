"""Speed benchmark (`make bench`): three ratios, each measured within this one run.

1. attack overhead: NA's wall time over an evaluation set / (k x plain batched UNet forwards over it);
   goal <= 1.10. The same for a latent text-to-image target: NA / (k UNet forwards + one VAE encode and one
   text-encoder pass per sample, the least a conditional prediction needs); goal <= 1.10. And for a LoRA
   fine-tune of that target: NA on base + adapter as mia-attack runs it (target.lora, merged at load) / NA on
   the merged model saved as a plain folder by diffusers (fuse_lora); goal <= 1.10, with the largest score
   differences beside it (against that folder, and against the adapter's layers left live, whose own ratio is
   reported too).
2. training throughput: mia-train's steps per second / a minimal PyTorch loop with the same diffusers UNet,
   batch and data; goal >= 0.95.
3. memory: peak resident memory of an attack over 8,000 samples / over 1,000; goal <= 1.2 (each in a
   fresh process, the peak taken over the attack itself; see bench/attack_memory.py).
4. compile=true: NA's wall time on the compiled target / on the eager one, pixel and latent (compile=true's
   defaults: static shapes, inductor freezing, channels-last; the compile time apart, after one untimed
   compiled run), with the largest score difference; goal <= 0.75. And mia-train's steps per second with
   compile=true / without; goal >= 1.

Absolute times on a shared machine are noisy; ratios within one run are what is reported. Everything runs
on synthetic images in a temporary folder, so the benchmark needs no dataset.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from PIL import Image

from mia.config import config_dir

log = logging.getLogger("bench.speed")
IMAGE_SIZE = 16
REPO = Path(__file__).resolve().parents[1]


def config(name: str, overrides: list[str], out: Path):
    with initialize_config_dir(config_dir=config_dir(name), version_base="1.3"):
        return compose(name, overrides=[*overrides, f"paths.output_dir={out}", f"paths.log_dir={out}/runs"])


def make_images(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"{i // 1000:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def train_overrides(data_root: Path, members: int, nonmembers: int, steps: int) -> list[str]:
    return [
        "data=folder", f"data.root={data_root}", f"data.image_size={IMAGE_SIZE}", "target=ddpm_small",
        f"split.members={members}", f"split.nonmembers={nonmembers}", "batch_size=64", "logger=none",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps + 1}", "target.sample_count=0",
        "callbacks.model_checkpoint.every_n_train_steps=100000", "trainer.enable_progress_bar=false",
    ]


class StepTimer(L.Callback):
    """Wall time of training steps [skip, end): startup and the first steps' warm-up excluded."""

    def __init__(self, skip: int) -> None:
        self.skip = skip
        self.started: float | None = None
        self.steps = 0
        self.seconds = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.skip:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.started is not None:
            self.steps = trainer.global_step - self.skip
            self.seconds = time.perf_counter() - self.started


def plain_training(cfg, steps: int, skip: int) -> float:
    """Steps/s of a minimal loop: the same members, UNet, optimizer and noise process; no Lightning."""
    from hydra.utils import instantiate

    from mia.data.images import to_model_range
    from mia.data.registry import build_pool
    from train_targets.data import MemberDataModule

    pool = build_pool(cfg.data)
    data = MemberDataModule(pool, {}, cfg.split.members, cfg.split.nonmembers, seed=0, batch_size=cfg.batch_size)
    data.prepare()
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.target, _convert_="all")
    unet, scheduler = model.unet.train(), model.noise_scheduler
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.target.lr)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for step in range(steps):
        if step == skip:
            started = time.perf_counter()
        index = torch.randperm(len(data.members), generator=generator)[: cfg.batch_size]
        x0 = to_model_range(data.members[index])
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (len(x0),))
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (steps - skip) / (time.perf_counter() - started)


def training_ratio(data_root: Path, work: Path, steps: int, skip: int, repeats: int) -> dict:
    """mia-train's steps/s over a plain loop's; interleaved repeats, the best of each kept."""
    from train_targets.train import train

    framework, plain = [], []
    for repeat in range(repeats):  # interleaved, so drifts in machine load hit both
        cfg = config("train", train_overrides(data_root, 512, 64, steps), work / f"train{repeat}")
        plain.append(plain_training(cfg, steps, skip))
        timer = StepTimer(skip)
        train(cfg, extra_callbacks=[timer])
        framework.append(timer.steps / timer.seconds)
    ratio = max(framework) / max(plain)
    return {"mia_train_steps_per_s": max(framework), "plain_steps_per_s": max(plain), "ratio": ratio,
            "all_mia_train": framework, "all_plain": plain, "goal": ">= 0.95", "met": ratio >= 0.95}


def best_interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """The best of ``repeats`` timings of each run (in the dict's order, each repeat), interleaved so that drifts
    in machine load hit them all."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return {name: min(values) for name, values in times.items()}


def overhead_ratio(target_dir: Path, work: Path, samples: int, repeats: int) -> dict:
    """NA through mia (Lightning predict loop, per-sample noise, DDIM moves, statistic) over k plain passes."""
    from mia.attacks import NoiseAggregation
    from mia.config import build
    from mia.data.images import to_model_range
    from mia.runs.attack import evaluation_set_of, scoring_settings
    from mia.scoring.engine import predict

    cfg = config("attack", [f"target.path={target_dir}", f"data.max_members={samples // 2}",
                            f"data.max_nonmembers={samples // 2}", "cache.enabled=false", "logger=none",
                            "trainer.enable_progress_bar=false"], work / "overhead")
    attack = NoiseAggregation()
    target = build(cfg.target)
    evalset = evaluation_set_of(cfg, target)
    batch = cfg.data.batch_size
    images = evalset.stack()
    batches = [to_model_range(images[i : i + batch]) for i in range(0, len(evalset), batch)]

    def plain() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for t in attack.timesteps():
                for x in batches:
                    target.denoiser(x, torch.full((len(x),), t))
        return time.perf_counter() - started

    best = best_interleaved({"plain": plain,
                             "na": lambda: predict(attack, target, evalset, scoring_settings(cfg)).seconds}, repeats)
    na_time, plain_time = best["na"], best["plain"]
    ratio = na_time / plain_time
    return {"na_seconds": na_time, "plain_seconds_k_passes": plain_time, "k": attack.k,
            "samples": len(evalset), "ratio": ratio, "goal": "<= 1.10", "met": ratio <= 1.10}


def make_captioned_images(root: Path, count: int, size: int) -> None:
    """``count`` random images with short random captions, in the imagefolder convention (metadata.jsonl)."""
    rng = np.random.default_rng(1)
    words = ["a", "red", "dog", "runs", "on", "the", "grass", "small", "boy", "near", "water", "blue", "ball"]
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        rows.append({"file_name": f"images/{i}.png", "text": " ".join(rng.choice(words, size=6))})
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def latent_target(work: Path, samples: int) -> Path:
    """A text-to-image target of the demo's model size (one training step: speed only), made once per run."""
    from train_targets.train import train

    target = work / "latent_run" / "target"
    if target.is_dir():
        return target
    make_captioned_images(work / "captioned", samples + 64, 32)  # 64 outside the split: the autoencoder's
    train(config("train", [
        "data=captioned_folder", f"data.root={work / 'captioned'}", "data.image_size=32",
        "target=text_to_image_small", f"split.members={samples // 2}", f"split.nonmembers={samples // 2}",
        "batch_size=16", "probe_size=4", "logger=none", "trainer.max_steps=1", "trainer.val_check_interval=2",
        "target.autoencoder.steps=1", "target.sample_count=0", "trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint.every_n_train_steps=100000",
    ], work / "latent_run"))
    return target


def latent_overhead_ratio(work: Path, samples: int, repeats: int) -> dict:
    """NA through mia on a latent text-to-image target over its plain parts: k UNet passes, one VAE encode
    and one text-encoder pass per sample (the demo's model size, one training step: speed only)."""
    from mia.attacks import NoiseAggregation
    from mia.config import build
    from mia.data.evaluation_set import evaluation_set_for
    from mia.data.images import to_model_range
    from mia.runs.attack import scoring_settings
    from mia.scoring.engine import predict

    cfg = config("attack", [f"target.path={latent_target(work, samples)}", "cache.enabled=false", "logger=none",
                            "trainer.enable_progress_bar=false"], work / "latent_overhead")
    attack = NoiseAggregation()
    target = build(cfg.target)
    # Decoded once up front for both sides (mia-attack streams a latent target's images instead): the ratio
    # is the attack path's overhead, not image decoding.
    evalset = evaluation_set_for(cfg.data, target.image_shape, target.split, target.source, target.conditioning)
    batch = cfg.data.batch_size
    captions = evalset.extras["caption"]
    images = evalset.stack()
    batches = [(to_model_range(images[i : i + batch]), captions[i : i + batch])
               for i in range(0, len(evalset), batch)]
    unet, vae, text_encoder, tokenizer = target.denoiser, target.vae, target.text_encoder, target.tokenizer

    def plain() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for x, text in batches:
                z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
                ids = tokenizer(list(text), padding="max_length", max_length=tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids
                embedding = text_encoder(ids)[0]
                for t in attack.timesteps():
                    unet(z, torch.full((len(z),), t), encoder_hidden_states=embedding)
        return time.perf_counter() - started

    best = best_interleaved({"plain": plain,
                             "na": lambda: predict(attack, target, evalset, scoring_settings(cfg)).seconds}, repeats)
    na_time, plain_time = best["na"], best["plain"]
    ratio = na_time / plain_time
    return {"na_seconds": na_time, "plain_seconds": plain_time, "k": attack.k, "samples": len(evalset),
            "ratio": ratio, "goal": "<= 1.10", "met": ratio <= 1.10}


def fused_folder(base: Path, adapter: Path, dest: Path) -> Path:
    """The fine-tune as a plain folder, fused by diffusers itself (load_lora_weights, fuse_lora, save_pretrained),
    labelled by the adapter's split: the merged model without any of mia's LoRA code."""
    import shutil

    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False,
                                                       local_files_only=True)
    pipeline.load_lora_weights(str(adapter), local_files_only=True)
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()
    pipeline.save_pretrained(dest)
    shutil.copy(adapter / "split.json", dest / "split.json")
    return dest


def lora_overhead_ratio(work: Path, samples: int, repeats: int) -> dict:
    """NA on base + LoRA as mia-attack runs it (``target.lora``, merged at load: target.lora_merge=true) / NA on the
    merged model as a plain folder that diffusers fused; and, for information, with the adapter layers live.

    The base is the latent target above; the adapter is mia-train's (target=lora, rank 4 on the UNet's attention
    projections, 2 steps at a high learning rate so that it moves the weights: speed only, and the score checks).
    """
    from mia.attacks import NoiseAggregation
    from mia.config import build
    from mia.data.evaluation_set import evaluation_set_for
    from mia.runs.attack import scoring_settings
    from mia.scoring.engine import predict
    from train_targets.train import train

    base = latent_target(work, samples)
    adapter = work / "lora_run" / "target"
    train(config("train", [
        "data=captioned_folder", f"data.root={work / 'captioned'}", "data.image_size=32", "target=lora",
        f"target.base={base}", "target.lr=1e-2", f"split.members={samples // 2}", f"split.nonmembers={samples // 2}",
        "batch_size=16", "probe_size=4", "logger=none", "trainer.max_steps=2", "trainer.val_check_interval=3",
        "target.sample_count=0", "trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint.every_n_train_steps=100000",
    ], work / "lora_run"))
    fused = fused_folder(base, adapter, work / "lora_fused")
    attack = NoiseAggregation()
    targets = {"mia": [f"target.path={base}", f"target.lora={adapter}"],  # target.lora_merge=true, the default
               "live": [f"target.path={base}", f"target.lora={adapter}", "target.lora_merge=false"],
               "fused": [f"target.path={fused}"]}
    runs, scores = {}, {}
    for name, overrides in targets.items():
        cfg = config("attack", [*overrides, "cache.enabled=false", "logger=none", "trainer.enable_progress_bar=false"],
                     work / f"lora_overhead_{name}")
        target = build(cfg.target)
        # Decoded once up front (not streamed), as in latent_overhead_ratio: the ratio is the model's cost.
        evalset = evaluation_set_for(cfg.data, target.image_shape, target.split, target.source, target.conditioning)

        def timed(name=name, target=target, evalset=evalset, cfg=cfg) -> float:
            predicted = predict(attack, target, evalset, scoring_settings(cfg))
            scores[name] = predicted.features
            return predicted.seconds

        runs[name] = timed
    best = best_interleaved(runs, repeats)
    ratio = best["mia"] / best["fused"]
    return {"na_seconds": best["mia"], "na_seconds_fused_folder": best["fused"], "na_seconds_live": best["live"],
            "k": attack.k, "samples": len(scores["mia"]), "ratio": ratio,
            "live_ratio": best["live"] / best["fused"],
            "max_score_difference_live": float(np.max(np.abs(scores["mia"] - scores["live"]))),
            "max_score_difference_fused_folder": float(np.max(np.abs(scores["mia"] - scores["fused"]))),
            "goal": "<= 1.10", "met": ratio <= 1.10}


def compiled_ratio(target_dir: Path, work: Path, samples: int | None, repeats: int) -> dict:
    """NA on the target compiled as compile=true compiles it / NA on the same target eager, same samples."""
    from mia.attacks import NoiseAggregation
    from mia.config import build
    from mia.data.evaluation_set import evaluation_set_for
    from mia.runs.attack import scoring_settings
    from mia.scoring.engine import predict
    from mia.targets.compiled import compile_target

    limits = [] if samples is None else [f"data.max_members={samples // 2}", f"data.max_nonmembers={samples // 2}"]
    cfg = config("attack", [f"target.path={target_dir}", *limits, "cache.enabled=false", "logger=none",
                            "trainer.enable_progress_bar=false"], work / f"compiled_{target_dir.parent.name}")
    attack = NoiseAggregation()
    eager, compiled = build(cfg.target), build(cfg.target)
    record = compile_target(compiled)
    # Decoded once up front for both sides: the ratio is the model's cost.
    evalset = evaluation_set_for(cfg.data, eager.image_shape, eager.split, eager.source, eager.conditioning)
    settings = scoring_settings(cfg)
    scores = {"compiled": predict(attack, compiled, evalset, settings).features}  # untimed: holds the compiling

    def timed(target, name: str) -> float:
        predicted = predict(attack, target, evalset, settings)
        scores[name] = predicted.features
        return predicted.seconds

    best = best_interleaved({"eager": lambda: timed(eager, "eager"), "compiled": lambda: timed(compiled, "compiled")},
                            repeats)
    compiled_time, eager_time = best["compiled"], best["eager"]
    ratio = compiled_time / eager_time
    return {"na_seconds_compiled": compiled_time, "na_seconds_eager": eager_time, "samples": len(evalset),
            "compile": record(), "max_score_difference": float(np.max(np.abs(scores["compiled"] - scores["eager"]))),
            "ratio": ratio, "goal": "<= 0.75", "met": ratio <= 0.75}


def compiled_training_ratio(data_root: Path, work: Path, steps: int, skip: int, repeats: int) -> dict:
    """mia-train's steps/s with compile=true over without; interleaved repeats, the best of each kept."""
    from train_targets.train import train

    runs: dict[bool, list[float]] = {True: [], False: []}
    first_step: list[float] = []
    for repeat in range(repeats):
        for compiled in (False, True):
            cfg = config("train", [*train_overrides(data_root, 512, 64, steps), f"compile={str(compiled).lower()}"],
                         work / f"train_compile{repeat}_{compiled}")
            timer = StepTimer(skip)
            info = train(cfg, extra_callbacks=[timer])
            runs[compiled].append(timer.steps / timer.seconds)
            if compiled:
                first_step.append(info["compile"]["first_step_seconds"])
    ratio = max(runs[True]) / max(runs[False])
    return {"compiled_steps_per_s": max(runs[True]), "eager_steps_per_s": max(runs[False]), "ratio": ratio,
            "first_step_seconds_compiled": first_step, "all_compiled": runs[True], "all_eager": runs[False],
            "goal": ">= 1", "met": ratio >= 1}


def attack_memory(target_dir: Path, work: Path, per_class: int) -> dict:
    """Resident memory (MB) of a `mia-attack` over 2 x per_class samples, in a fresh process."""
    command = [sys.executable, "-m", "bench.attack_memory", f"target.path={target_dir}", "attack=na",
               f"data.max_members={per_class}", f"data.max_nonmembers={per_class}", "logger=none",
               f"paths.log_dir={work}/runs", f"paths.output_dir={work}/mem_{per_class}",
               "trainer.enable_progress_bar=false"]
    process = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if process.returncode != 0:
        raise RuntimeError(f"attack over {2 * per_class} samples failed: {process.stderr[-2000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def pixel_ratios(results: dict, work: Path, args: argparse.Namespace) -> None:
    """The pixel target's ratios: training throughput, attack overhead, memory."""
    log.info("making 9,000 synthetic %dx%d images ...", IMAGE_SIZE, IMAGE_SIZE)
    make_images(work / "images", 9000)
    log.info("training throughput (%d steps) ...", args.train_steps)
    results["training"] = training_ratio(work / "images", work, args.train_steps, skip=10, repeats=args.repeats)
    # A target whose split holds 4,000 members and 4,000 non-members (one training step: speed only).
    from train_targets.train import train

    train(config("train", train_overrides(work / "images", 4000, 4000, 1), work / "target_run"))
    target_dir = work / "target_run" / "target"
    log.info("attack overhead (%d samples) ...", args.overhead_samples)
    results["attack_overhead"] = overhead_ratio(target_dir, work, args.overhead_samples, args.repeats)
    log.info("compiled NA / eager NA (%d samples) ...", args.overhead_samples)
    results["compiled_na"] = compiled_ratio(target_dir, work, args.overhead_samples, args.repeats)
    log.info("compiled training / eager training (%d steps) ...", args.train_steps)
    results["compiled_training"] = compiled_training_ratio(work / "images", work, args.train_steps, skip=10,
                                                           repeats=args.repeats)
    log.info("peak memory (1,000 and 8,000 samples) ...")
    small, large = attack_memory(target_dir, work, 500), attack_memory(target_dir, work, 4000)
    ratio = large["peak_mb"] / small["peak_mb"]
    results["memory"] = {
        "peak_rss_mb_1000": small["peak_mb"], "peak_rss_mb_8000": large["peak_mb"],
        # What the attack adds on top of the loaded libraries, for each size.
        "growth_mb_1000": small["peak_mb"] - small["before_mb"],
        "growth_mb_8000": large["peak_mb"] - large["before_mb"],
        "ratio": ratio, "goal": "<= 1.2", "met": ratio <= 1.2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--overhead-samples", type=int, default=512)
    parser.add_argument("--latent-samples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=["latent", "compiled_latent", "lora"],
                        help="run one ratio only (others are kept from --out)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "speed.json",
                        help="the results (kept in the repository: docs/results.md is written from it)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    torch.manual_seed(0)
    machine = f"{os.cpu_count()} CPU cores, torch {torch.__version__}, threads {torch.get_num_threads()}"
    results = json.loads(args.out.read_text()) if args.only and args.out.exists() else {}
    results["machine"] = machine
    with tempfile.TemporaryDirectory(prefix="mia-bench-") as tmp:
        work = Path(tmp)
        if args.only is None:
            pixel_ratios(results, work, args)
        if args.only in (None, "latent"):
            log.info("latent attack overhead (%d samples) ...", args.latent_samples)
            results["latent_overhead"] = latent_overhead_ratio(work, args.latent_samples, args.repeats)
        if args.only in (None, "compiled_latent"):
            log.info("compiled NA / eager NA, latent target (%d samples) ...", args.latent_samples)
            results["compiled_na_latent"] = compiled_ratio(latent_target(work, args.latent_samples), work, None,
                                                           args.repeats)
        if args.only in (None, "lora"):
            log.info("LoRA attack overhead, base + adapter / fused folder (%d samples) ...", args.latent_samples)
            results["lora_overhead"] = lora_overhead_ratio(work, args.latent_samples, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nspeed benchmark ({results['machine']}); ratios within this run:")
    for name, key in (("attack overhead", "attack_overhead"), ("latent overhead", "latent_overhead"),
                      ("LoRA / fused folder", "lora_overhead"), ("training throughput", "training"),
                      ("memory 8k / 1k", "memory"), ("compiled NA / eager", "compiled_na"),
                      ("  latent", "compiled_na_latent"), ("compiled training", "compiled_training")):
        if key not in results:
            continue
        entry = results[key]
        print(f"  {name:<20} {entry['ratio']:.3f}  (goal {entry['goal']}: {'met' if entry['met'] else 'MISSED'})")
    print(f"details: {args.out}")


if __name__ == "__main__":
    main()
