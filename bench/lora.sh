#!/usr/bin/env bash
# The LoRA text-to-image benchmark (issue 16, docs/results.md once run): members, non-members and the base
# model's training photos are disjoint parts of one Flickr8k pool.
#   base/        the base model: the text-to-image demo's recipe (text_to_image_small, 32x32) on BASE_MEMBERS
#                pool photos for BASE_STEPS (fewer epochs per photo than the demo: it should generalise)
#   seedS/lora   a LoRA fine-tune of the base (target=lora) on FT_MEMBERS members drawn with split.seed=S and
#                split.exclude=<the base's split.json> (so no member or non-member is a base photo)
#   seedS/full   a full fine-tune of the base (target.init_from=<base>) on the same split, the same steps
# Per fine-tune (protocol.calibration=0.25 sets a quarter aside, by id; every row is scored on the rest):
#   defaults/    every attack at its defaults (CLiD th and vec included), each with reference=base: the base
#                model's own AUC on the same samples (reference_model) and the reference-calibrated score
#   tuned/       each attack tuned on the calibration part (tune=<grid>), with the base as reference too
# Each run's small files are copied under bench/lora/ (no retraining to regenerate the tables).
# The base's autoencoder trains on pool photos outside the base's split (the demo's recipe); its split.json
# lists them (also_trained_on), so split.exclude keeps them out of the fine-tunes' splits as well.
# Usage: bench/lora.sh [flickr8k root]; DRY_RUN=1 prints the commands instead of running them.
# Cost (estimated from the demo's 0.8 s per step at batch 32 on 2 CPU cores, not measured): base ~30 min,
# 3 LoRA fine-tunes ~8 min, 3 full fine-tunes ~12 min, attacks ~35 min: about 90 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
flickr8k=${1:-../shared/data/flickr8k}
bin=.venv/bin
out=runs/lora
keep=bench/lora
BASE_MEMBERS=${BASE_MEMBERS:-2048}   # base photos (its non-members: 64, only for its own loss-gap probe)
BASE_STEPS=${BASE_STEPS:-2000}       # ~31 epochs per base photo at batch 32 (the demo: 1,500 epochs)
FT_MEMBERS=${FT_MEMBERS:-64}         # fine-tune members (and as many non-members)
FT_STEPS=${FT_STEPS:-300}            # fine-tune steps at batch 32: 150 epochs per member
RANK=${RANK:-4}                      # the LoRA rank
quiet=(trainer.enable_progress_bar=false)
run() { if [ -n "${DRY_RUN:-}" ]; then echo "$*"; else "$@"; fi; }

train_base() {
  [ -f "$out/base/target/training.json" ] && return
  run $bin/mia-train experiment=text_to_image_demo data.root="$flickr8k" split.members="$BASE_MEMBERS" \
    split.nonmembers=64 split.seed=100 trainer.max_steps="$BASE_STEPS" trainer.val_check_interval=500 \
    logger=csv export_dir="$out/base/target" hydra.run.dir="$out/base/train" "${quiet[@]}"
}

train_finetune() {  # seed kind: kind = lora | full
  local seed=$1 kind=$2 dest=$out/seed$1/$2
  [ -f "$dest/target/training.json" ] && return
  local model=(target=lora target.base="$out/base/target" target.rank="$RANK")
  [ "$kind" = full ] && model=(target=text_to_image_small target.init_from="$out/base/target")
  run $bin/mia-train data=flickr8k data.root="$flickr8k" data.image_size=32 "${model[@]}" \
    split.members="$FT_MEMBERS" split.nonmembers="$FT_MEMBERS" split.seed="$seed" \
    "split.exclude=[$out/base/target/split.json]" batch_size=32 probe_size=32 trainer.max_steps="$FT_STEPS" \
    trainer.val_check_interval=100 target.sample_count=0 logger=csv export_dir="$dest/target" \
    hydra.run.dir="$dest/train" "${quiet[@]}"
}

attack_finetune() {  # seed kind
  local seed=$1 kind=$2 dest=$out/seed$1/$2
  local target=(target.path="$dest/target")
  [ "$kind" = lora ] && target=(target.path="$out/base/target" target.lora="$dest/target")
  local common=("${target[@]}" reference.path="$out/base/target" protocol.calibration=0.25 logger=none "${quiet[@]}")
  run $bin/mia-attack -m attack=na,loss,pia,pian,secmi,sima,clid_th,clid_vec "${common[@]}" \
    hydra.sweep.dir="$dest/defaults"
  for pair in na:na_grid loss:loss_t pia:pia_t pian:pian_t secmi:secmi_t_sec sima:sima_t; do
    run $bin/mia-attack attack="${pair%%:*}" tune="${pair##*:}" "${common[@]}" hydra.run.dir="$dest/tuned/${pair%%:*}"
  done
  [ -n "${DRY_RUN:-}" ] && return
  local kept=$keep/seed$seed/$kind
  mkdir -p "$kept"
  cp "$dest/target/training.json" "$kept/training.json"
  cp "$dest/defaults/summary.csv" "$kept/defaults_summary.csv"
  for result in "$dest"/defaults/*/ "$dest"/tuned/*/; do
    [ -f "$result/metrics.json" ] || continue
    local attack
    attack=$($bin/python -c "import json, sys; print(json.load(open(sys.argv[1]))['attack'])" "$result/metrics.json")
    cp "$result/metrics.json" "$kept/$(basename "$(dirname "$result")")_$attack.json"
  done
}

train_base
if [ -z "${DRY_RUN:-}" ]; then mkdir -p "$keep" && cp "$out/base/target/training.json" "$keep/base_training.json"; fi
for seed in 0 1 2; do
  for kind in lora full; do
    train_finetune "$seed" "$kind"
    attack_finetune "$seed" "$kind"
  done
done
