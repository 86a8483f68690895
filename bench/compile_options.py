"""What torch.compile's options buy on a small diffusers UNet (`python -m bench.compile_options`).

The 1.1 M-parameter UNet of the CIFAR-10 strength targets (``ddpm_small``, 16x16), one no-grad forward as an
attack makes it, at several batch sizes: eager, then each compile setting (mode, dynamic or static shapes,
inductor freezing, channels-last layout), each timed against eager in the same run (the best of
``--repeats`` timings of ``--passes`` forwards, interleaved), with its compile time (inductor's on-disk cache is
left on, so a graph compiled by an earlier setting or run is reused and compiles faster) and its largest output
difference from eager. compile=true's defaults (mia/targets/compiled.py) were chosen from this table
(docs/results.md, "Speed").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel

log = logging.getLogger("bench.compile_options")
REPO = Path(__file__).resolve().parents[1]
# name: (torch.compile mode, dynamic, freezing, channels_last)
SETTINGS = {
    "default, dynamic": ("default", True, False, False),
    "default, static": ("default", None, False, False),
    "default, static, freezing": ("default", None, True, False),
    "default, static, channels-last": ("default", None, False, True),
    "default, static, freezing, channels-last (compile=true)": ("default", None, True, True),
    "max-autotune-no-cudagraphs, static, freezing, channels-last": ("max-autotune-no-cudagraphs", None, True, True),
}


def small_unet() -> UNet2DModel:
    torch.manual_seed(0)  # conf/train/target/ddpm_small.yaml's architecture
    return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=16).eval()


def timed(forward, x: torch.Tensor, t: torch.Tensor, passes: int) -> float:
    with torch.inference_mode():
        started = time.perf_counter()
        for _ in range(passes):
            forward(x, t)
        return (time.perf_counter() - started) / passes


def measure(name: str, batch: int, passes: int, repeats: int) -> dict:
    mode, dynamic, freezing, channels_last = SETTINGS[name]
    torch._dynamo.reset()
    eager, model = small_unet(), small_unet()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    options = {**torch._inductor.list_mode_options(mode), "freezing": freezing}
    compiled = torch.compile(model, dynamic=dynamic, options=options)
    x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.full((batch,), 100)
    x_in = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    started = time.perf_counter()
    with torch.inference_mode():
        difference = float((compiled(x_in, t).sample - eager(x, t).sample).abs().max())
    compile_seconds = time.perf_counter() - started
    eager_times, compiled_times = [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both
        eager_times.append(timed(lambda a, b: eager(a, b).sample, x, t, passes))
        compiled_times.append(timed(lambda a, b: compiled(a, b).sample, x_in, t, passes))
    return {"setting": name, "batch": batch, "ratio": min(compiled_times) / min(eager_times),
            "eager_ms": 1000 * min(eager_times), "compiled_ms": 1000 * min(compiled_times),
            "compile_seconds": compile_seconds, "max_difference": difference}


LIBRARY_KERNELS = ("aten::mkldnn_convolution", "aten::convolution", "aten::_convolution", "aten::mm", "aten::addmm",
                   "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu")


def eager_profile(batch: int, passes: int) -> dict:
    """Where an eager forward's CPU time goes: the library kernels (convolutions, matrix products, attention),
    which compiling leaves to the same libraries, against the rest (normalisation, activations, copies, adds),
    which inductor can fuse. The share of the rest bounds what compiling alone can save."""
    from torch.profiler import ProfilerActivity, profile

    model = small_unet()
    x, t = torch.randn(batch, 3, 16, 16), torch.full((batch,), 100)
    with torch.inference_mode():
        for _ in range(2):
            model(x, t)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(passes):
                model(x, t)
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    library = sum(e.self_cpu_time_total for e in events if e.key in LIBRARY_KERNELS)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return {"batch": batch, "library_kernels_share": library / total,
            "top_ops": {e.key: e.self_cpu_time_total / total for e in top}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "compile_options.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    rows = []
    for batch in args.batches:
        for name in SETTINGS:
            rows.append(measure(name, batch, args.passes, args.repeats))
            r = rows[-1]
            log.info("batch %4d  %-62s compiled / eager %.3f  (compile %.0f s, max |difference| %.1e)", batch, name,
                     r["ratio"], r["compile_seconds"], r["max_difference"])
    profiles = [eager_profile(batch, args.passes) for batch in args.batches]
    for p in profiles:
        log.info("batch %4d  eager: %.0f %% of the CPU time in convolutions, matrix products and attention",
                 p["batch"], 100 * p["library_kernels_share"])
    machine = f"{os.cpu_count()} CPU cores, torch {torch.__version__}, threads {args.threads}"
    args.out.write_text(json.dumps({"machine": machine, "rows": rows, "eager_profile": profiles}, indent=1) + "\n")
    print(f"details: {args.out}")


if __name__ == "__main__":
    main()
