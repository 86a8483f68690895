"""The cost of batch-invariant scores: padded micro-batches vs a float64 denoiser (docs/method.md, "batch invariance").

NA at ``t=40 noise_scale=0.1`` (k = 5) on a ddpm_small-sized UNet (32x32x3, random weights under a fixed seed)
over N = 71 samples scored in batches of 64: one full batch and a last batch of 7. Three ways to run it:

- ``as_given``: float32, the denoiser sees each batch as it comes (batch-dependent round-off: the baseline);
- ``padded``: float32, passes of ``micro_batch`` = 64 rows, the last one padded (what mia does);
- ``float64``: the denoiser's weights and inputs in float64, the batch as given.

Each is timed over the full batch and over the last batch, best of ``--repeats`` interleaved runs (drifts in
machine load hit all three alike); the ratios to ``as_given`` are what is reported. The first 7 samples are
also scored as a batch of their own and compared with their scores in the full batch, to show what each way
leaves of the batch dependence.

    nice -n 5 .venv/bin/python -m bench.batch_invariance --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time

import numpy as np
import torch

from mia.attacks import NoiseAggregation, SampleNoise
from mia.targets.base import DiffusionTarget

log = logging.getLogger("bench.batch_invariance")
SAMPLES, BATCH = 71, 64


def build_targets() -> dict[str, DiffusionTarget]:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)  # conf/train/target/ddpm_small.yaml's UNet (about 1.1 M parameters)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=16)
    alphas = DDPMScheduler().alphas_cumprod
    targets = {"as_given": DiffusionTarget(unet, alphas, (3, 32, 32)),
               "padded": DiffusionTarget(copy.deepcopy(unet), alphas, (3, 32, 32)),
               "float64": DiffusionTarget(copy.deepcopy(unet).double(), alphas, (3, 32, 32))}
    targets["as_given"].micro_batch = targets["float64"].micro_batch = None
    targets["padded"].micro_batch = BATCH
    return targets


@torch.no_grad()
def scores(attack: NoiseAggregation, target: DiffusionTarget, x0: torch.Tensor, keys: torch.Tensor,
           batch: int) -> np.ndarray:
    parts = []
    for start in range(0, len(x0), batch):
        rows = slice(start, start + batch)
        parts.append(attack.scores_of(target, x0[rows], SampleNoise(keys[rows], attack.seed)))
    return torch.cat(parts).numpy()


def seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    attack = NoiseAggregation(t=40, k=5, m=10, noise_scale=0.1)
    targets = build_targets()
    x0 = torch.rand(SAMPLES, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    keys = torch.arange(SAMPLES, dtype=torch.int64)
    full, last = slice(0, BATCH), slice(BATCH, SAMPLES)
    for target in targets.values():  # warm-up: first calls allocate
        scores(attack, target, x0[last], keys[last], BATCH)
    in_full = {}
    times: dict[str, dict[str, list[float]]] = {name: {"full": [], "last": []} for name in targets}
    for repeat in range(args.repeats):
        for name, target in targets.items():
            times[name]["full"].append(seconds(
                lambda t=target, n=name: in_full.__setitem__(n, scores(attack, t, x0[full], keys[full], BATCH))))
            times[name]["last"].append(seconds(lambda t=target: scores(attack, t, x0[last], keys[last], BATCH)))
            log.info("repeat %d %s: %s", repeat, name, {part: round(v[-1], 3) for part, v in times[name].items()})
    best = {name: {part: min(values) for part, values in parts.items()} for name, parts in times.items()}
    report = {"setting": "NA t=40 k=5 m=10 noise_scale=0.1, UNet 32-64-64 at 32x32x3, batch 64 + last batch 7",
              "threads": args.threads, "repeats": args.repeats, "best_seconds": best}
    base = best["as_given"]
    run_seconds = {name: b["full"] + b["last"] for name, b in best.items()}
    report["ratio_to_as_given"] = {
        name: {"full_batch": b["full"] / base["full"], "last_batch": b["last"] / base["last"],
               "run_of_71": run_seconds[name] / run_seconds["as_given"]} for name, b in best.items()}
    report["batch_dependence"] = {}
    for name, target in targets.items():  # samples 0..6 scored in a batch of 7 vs in the full batch of 64
        small = scores(attack, target, x0[:7], keys[:7], BATCH)
        report["batch_dependence"][name] = {
            "identical_scores": int((small == in_full[name][:7]).sum()), "of": 7,
            "max_relative_difference": float(np.max(np.abs(small - in_full[name][:7]) / np.abs(small)))}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
