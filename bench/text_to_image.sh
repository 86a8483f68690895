#!/usr/bin/env bash
# The text-to-image benchmark (docs/results.md): the text-to-image demo target (a latent text-conditional
# model trained here on 32 Flickr8k members), then every attack on it, CLiD's two scores included.
# The runs' small files (metrics.json, summary.csv, training.json) are copied under bench/text_to_image/,
# so `python -m bench.strength_report` rewrites docs/results.md on any machine, no retraining.
# Usage: bench/text_to_image.sh [flickr8k root]   (about 20 minutes of training on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
flickr8k=${1:-../shared/data/flickr8k}
bin=.venv/bin
out=runs/text_to_image_demo
keep=bench/text_to_image

if [ ! -f "$out/target/training.json" ]; then
  $bin/mia-train experiment=text_to_image_demo data.root="$flickr8k" logger=csv trainer.enable_progress_bar=false
fi
$bin/mia-attack experiment=compare_attacks target.path="$out/target" logger=none trainer.enable_progress_bar=false \
  hydra.sweep.dir="$out/compare"

mkdir -p "$keep"
cp "$out/target/training.json" "$keep/training.json"
cp "$out/compare/summary.csv" "$keep/summary.csv"
for run in "$out"/compare/*/; do
  [ -f "$run/metrics.json" ] || continue
  attack=$($bin/python -c "import json, sys; print(json.load(open(sys.argv[1]))['attack'])" "$run/metrics.json")
  cp "$run/metrics.json" "$keep/metrics_$attack.json"
done
$bin/python -m bench.strength_report
