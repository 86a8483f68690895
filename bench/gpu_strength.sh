#!/usr/bin/env bash
# Does NA beat SecMI and loss on the literature's 35.7 M DDPM? A one-GPU answer in about ten minutes.
# Trains google/ddpm-cifar10-32's architecture (target=ddpm_cifar10_32) in bf16 on a small CIFAR-10 member
# split until it has seen each member thousands of times, then runs every attack at its paper's defaults
# (na, loss, pia, pian, secmi, sima) on all the members vs as many non-members from the same pool, and prints
# one table (AUC, TPR at 1% and 0.1% FPR, queries a sample) with the training and attack wall times.
# Writes into OUT: table.txt, training.json, metrics/<attack>.json, the trained target and every run's files.
#
# Usage: bench/gpu_strength.sh [--tiny] OUT [CIFAR-10 root, default ../shared/data/cifar10]
#   --tiny: a CPU smoke test of this script (0.18 M model on 8x8 digits, a few steps, 16 + 16 samples); its
#           numbers mean nothing. Without --tiny the script stops at once on a machine without CUDA.
#
# Sizing (UNMEASURED: no GPU was at hand when this was written). 128 members at batch 128 make one step one
# epoch; 3,000 steps = 3,000 epochs per member (the paper target saw each of its 25,000 members ~4,100 times:
# 800,000 steps x 128 / 25,000). The estimate behind "about 6 minutes of training": the 35.7 M UNet costs
# ~6 GMACs a 32x32 image forward, ~36 GFLOP a training image with the backward, ~4.6 TFLOP a step of 128;
# at ~50 TFLOP/s sustained in bf16 (eager diffusers on an H100, far below its peak) that is ~10 steps/s,
# 3,000 steps in ~5 minutes. The attacks query the model ~23 times per sample in all (256 samples: seconds),
# so start-up, data loading (256 JPEGs) and the final preview dominate the remaining minute or two.
# If a run is slower, lower GPU_STRENGTH_STEPS (epochs per member = steps here); the table says what ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MIA_BIN:-.venv/bin}
tiny=false
if [ "${1:-}" = --tiny ]; then tiny=true; shift; fi
[ $# -ge 1 ] || { echo "usage: bench/gpu_strength.sh [--tiny] OUT [CIFAR-10 root]" >&2; exit 2; }
out=$1
cifar10=${2:-../shared/data/cifar10}
[ -x "$bin/python" ] || { echo "gpu_strength: no $bin/python here; run make install first" >&2; exit 2; }
# python -m runs this checkout's code (the working directory comes first on sys.path).
train=("$bin/python" -m train_targets)
attack=("$bin/python" -m mia)

if $tiny; then
  members=16
  steps=${GPU_STRENGTH_STEPS:-4}
  setup=(data=digits data.image_size=8 target=ddpm_tiny batch_size=8 probe_size=8 target.sample_count=2
         target.sample_steps=2 target.warmup_steps=1 trainer.accelerator=cpu trainer.precision=32-true)
  device=cpu
else
  if ! "$bin/python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_strength: no CUDA device (torch.cuda.is_available() is False); run it on a GPU, or --tiny for the CPU smoke test" >&2
    exit 2
  fi
  [ -d "$cifar10" ] || { echo "gpu_strength: no CIFAR-10 at $cifar10; give its folder as the second argument" >&2; exit 2; }
  members=128
  steps=${GPU_STRENGTH_STEPS:-3000}
  setup=(data=cifar10 data.root="$cifar10" target=ddpm_cifar10_32 batch_size=128 probe_size=128 target.lr=2.0e-4
         target.warmup_steps=200 target.hflip=true target.sample_count=16 trainer.gradient_clip_val=1.0
         trainer.accelerator=gpu trainer.devices=1 trainer.precision=bf16-mixed)
  device=gpu
fi
mkdir -p "$out/metrics"
quiet=(trainer.enable_progress_bar=false)

started=$(date +%s)
"${train[@]}" "${setup[@]}" split.members=$members split.nonmembers=$members split.seed=0 logger=csv \
  trainer.max_steps="$steps" trainer.val_check_interval="$steps" export_dir="$out/target" overwrite=true \
  hydra.run.dir="$out/train" "${quiet[@]}" >"$out/train.log" 2>&1 \
  || { tail -5 "$out/train.log" >&2; echo "gpu_strength: training failed (see $out/train.log)" >&2; exit 1; }
trained=$(date +%s)
"${attack[@]}" -m attack=na,loss,pia,pian,secmi,sima target.path="$out/target" trainer.accelerator=$device \
  logger=none cache.enabled=false "${quiet[@]}" hydra.sweep.dir="$out/attacks" >"$out/attacks.log" 2>&1 \
  || { tail -5 "$out/attacks.log" >&2; echo "gpu_strength: an attack failed (see $out/attacks.log)" >&2; exit 1; }
# NA under the other reading of its paper's σ (x_t = √ᾱ_t·x0 + 0.1·ε; docs/method.md): the same queries.
"${attack[@]}" attack=na attack.injection=absolute attack.sigma=0.1 target.path="$out/target" \
  trainer.accelerator=$device logger=none cache.enabled=false "${quiet[@]}" hydra.run.dir="$out/attacks_absolute/na" \
  >>"$out/attacks.log" 2>&1 \
  || { tail -5 "$out/attacks.log" >&2; echo "gpu_strength: an attack failed (see $out/attacks.log)" >&2; exit 1; }
finished=$(date +%s)

cp "$out/target/training.json" "$out/training.json"
"$bin/python" - "$out" "$members" $((trained - started)) $((finished - trained)) <<'EOF' | tee "$out/table.txt"
import dataclasses, json, shutil, sys
from pathlib import Path

import torch

import mia

out, members, train_s, attack_s = Path(sys.argv[1]), *map(int, sys.argv[2:])
runs = sorted(p.parent for p in (out / "attacks").glob("*/metrics.json"))
results = [mia.AttackResult.load(run) for run in runs]
for run, result in zip(runs, results):
    shutil.copy(run / "metrics.json", out / "metrics" / f"{result.attack}.json")
absolute = out / "attacks_absolute" / "na"
shutil.copy(absolute / "metrics.json", out / "metrics" / "na_absolute.json")
results.append(dataclasses.replace(mia.AttackResult.load(absolute), attack="na (injection=absolute, σ=0.1)"))
card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no CUDA)"
training = json.loads((out / "training.json").read_text())
precision = training.get("config", {}).get("trainer", {}).get("precision", "?")
print(f"gpu_strength on {card}: {training['parameters'] / 1e6:.1f} M parameters, {members} members vs {members} "
      f"non-members, {training['steps']} steps = {training['epochs']:g} epochs, {precision}; "
      f"training {train_s} s ({training['seconds']:g} s of it in the loop), attacks {attack_s} s, wall")
print(mia.compare(results))
EOF
