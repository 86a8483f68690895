#!/usr/bin/env bash
# Attack-strength benchmark for one dataset: train the target, then every attack at its defaults, a small
# NA sweep, the closed-form memoriser of the same members, and NA + the best baseline at each checkpoint.
# Usage: bench/memorisation.sh cifar10 ../shared/data/cifar10     (about an hour of training on 2 CPU cores)
#        bench/memorisation.sh celeba  ../shared/data/celeba
# Then: .venv/bin/python -m bench.memorisation_report   (writes docs/memorisation.md and its figures)
set -euo pipefail
dataset=$1
root=$2
out=runs/bench/$dataset
bin=.venv/bin
quiet=(logger=csv trainer.enable_progress_bar=false)

if [ ! -f "$out/target/split.json" ]; then
  $bin/mia-train experiment=bench_$dataset data.root="$root" "${quiet[@]}"
fi
target=(target.path=$out/target data.root="$root" logger=none trainer.enable_progress_bar=false)

$bin/mia-attack experiment=compare_attacks "${target[@]}" hydra.sweep.dir=$out/compare
$bin/mia-attack -m attack=na attack.t=40,80,120,160 attack.noise_scale=0.1,0.5,1.0 "${target[@]}" \
  hydra.sweep.dir=$out/na_sweep metrics.bootstrap=200
$bin/mia-attack experiment=compare_attacks target.kind=memorizer "${target[@]}" hydra.sweep.dir=$out/memorizer

# Leakage over training: NA at its defaults and the strongest baseline (by AUC) at every kept checkpoint.
best=$($bin/python -c "
import csv; rows = [r for r in csv.DictReader(open('$out/compare/summary.csv')) if r['attack'] != 'na']
print(max(rows, key=lambda r: float(r['auc']))['attack'])")
checkpoints=$(ls $out/train/checkpoints/step*.ckpt | sort | paste -sd, -)
$bin/mia-attack -m attack=na,$best target.checkpoint="$checkpoints" "${target[@]}" \
  hydra.sweep.dir=$out/checkpoints metrics.bootstrap=200
