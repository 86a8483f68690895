#!/usr/bin/env bash
# The LoRA text-to-image benchmark (issue 16; docs/results.md, "LoRA fine-tunes"): members, non-members and the
# base model's training photos are disjoint parts of one Flickr8k pool.
#   base/        the base model: the text-to-image demo's recipe (text_to_image_small, 32x32) on BASE_MEMBERS
#                pool photos for BASE_STEPS (31 epochs per photo where the demo has 1,500: it generalises)
#   seedS/lora   a LoRA fine-tune of the base (target=lora) on FT_MEMBERS members drawn with split.seed=S and
#                split.exclude=<the base's split.json> (so no member or non-member is a base photo)
#   seedS/full   a full fine-tune of the base (target.init_from=<base>) on the same split, the same steps
# Per fine-tune (protocol.calibration=0.25 sets a quarter aside, by id; every row is scored on the rest):
#   defaults/    every attack at its defaults (CLiD th and vec, ReDiffuse and the reconstruction attack
#                included), each with reference.path=<base>: the base model's own AUC on the same samples
#                (reference_model) and the reference-calibrated score
#   absolute/    NA under the other reading of its σ (attack.injection=absolute)
#   tuned/       each attack tuned on the calibration part (tune=<grid>), with the base as reference too
#   audit/       mia-audit: p against 32 and 64 suspect members
#   gradient/    GSA1 and GSA2 (per-sample gradients, XGBoost fitted on the calibration part), the base as reference
# Each run's small files are copied under bench/lora/ (no retraining to regenerate the tables).
# The base's autoencoder trains on pool photos outside the base's split (the demo's recipe); its split.json
# lists them (also_trained_on), so split.exclude keeps them out of the fine-tunes' splits as well.
# Usage: bench/lora.sh [flickr8k root]; DRY_RUN=1 prints the commands instead of running them.
# Cost (measured on 2 idle CPU cores, 2026-12-07): the base 8 minutes; then 3 seeds x (LoRA and full fine-tunes,
# 2-3 minutes each, and every row but GSA's) 38.5 minutes; GSA1 and GSA2 about a minute per run with its base run.
set -euo pipefail
cd "$(dirname "$0")/.."
flickr8k=${1:-../shared/data/flickr8k}
bin=.venv/bin
out=runs/lora
keep=bench/lora
BASE_MEMBERS=${BASE_MEMBERS:-2048}   # base photos (its non-members: 64, only for its own loss-gap probe)
BASE_STEPS=${BASE_STEPS:-2000}       # ~31 epochs per base photo at batch 32 (the demo: 1,500 epochs)
FT_MEMBERS=${FT_MEMBERS:-64}         # fine-tune members
FT_NONMEMBERS=${FT_NONMEMBERS:-128}  # fine-tune non-members (cheap: they are only attacked)
FT_STEPS=${FT_STEPS:-1000}           # fine-tune steps at batch 32: 500 epochs per member
RANK=${RANK:-16}                     # the LoRA rank
LORA_LR=${LORA_LR:-5e-3}             # the LoRA learning rate (diffusers' script: 1e-4, which moved
                                     # nothing here in 300 steps: loss AUC 0.53, the base's own 0.53)
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
  local model=(target=lora target.base="$out/base/target" target.rank="$RANK" target.lr="$LORA_LR")
  [ "$kind" = full ] && model=(target=text_to_image_small target.init_from="$out/base/target")
  run $bin/mia-train data=flickr8k data.root="$flickr8k" data.image_size=32 "${model[@]}" \
    split.members="$FT_MEMBERS" split.nonmembers="$FT_NONMEMBERS" split.seed="$seed" \
    "split.exclude=[$out/base/target/split.json]" batch_size=32 probe_size=32 trainer.max_steps="$FT_STEPS" \
    trainer.val_check_interval=100 target.sample_count=0 logger=csv export_dir="$dest/target" \
    hydra.run.dir="$dest/train" "${quiet[@]}"
}

attack_finetune() {  # seed kind
  local seed=$1 kind=$2 dest=$out/seed$1/$2
  local target=(target.path="$dest/target")
  [ "$kind" = lora ] && target=(target.path="$out/base/target" target.lora="$dest/target")
  # cache.enabled=false: every run queries the model, so the passes it reports (VAE, text encoder, backward,
  # generations) are its own; a cached prediction would report the queries but none of those passes.
  local common=("${target[@]}" protocol.calibration=0.25 cache.enabled=false logger=none "${quiet[@]}")
  local reference=(reference.path="$out/base/target")
  [ -f "$dest/defaults/multirun.yaml" ] || run $bin/mia-attack -m \
    attack=na,loss,pia,pian,secmi,sima,clid_th,clid_vec,rediffuse,reconstruction "${common[@]}" "${reference[@]}" \
    hydra.sweep.dir="$dest/defaults"
  [ -f "$dest/absolute/na/metrics.json" ] || run $bin/mia-attack attack=na attack.injection=absolute "${common[@]}" \
    "${reference[@]}" hydra.run.dir="$dest/absolute/na"
  for pair in na:na_grid loss:loss_t pia:pia_t pian:pian_t secmi:secmi_t_sec sima:sima_t rediffuse:rediffuse_strength; do
    [ -f "$dest/tuned/${pair%%:*}/metrics.json" ] || run $bin/mia-attack attack="${pair%%:*}" tune="${pair##*:}" \
      "${common[@]}" "${reference[@]}" hydra.run.dir="$dest/tuned/${pair%%:*}"
  done
  [ -f "$dest/audit/audit.json" ] || run $bin/mia-audit "${target[@]}" data.suspect_count="$FT_MEMBERS" \
    "audit.sizes=[32,$FT_MEMBERS]" logger=none "${quiet[@]}" hydra.run.dir="$dest/audit"
  [ -f "$dest/gradient/multirun.yaml" ] || run $bin/mia-attack -m attack=gsa1,gsa2 "${common[@]}" "${reference[@]}" \
    hydra.sweep.dir="$dest/gradient"
  [ -n "${DRY_RUN:-}" ] && return
  local kept=$keep/seed$seed/$kind
  mkdir -p "$kept"
  cp "$dest/target/training.json" "$kept/training.json"
  cp "$dest/defaults/summary.csv" "$kept/defaults_summary.csv"
  cp "$dest/audit/audit.json" "$kept/audit.json"
  for result in "$dest"/defaults/*/ "$dest"/{absolute,tuned,gradient}/*/; do
    [ -f "$result/metrics.json" ] || continue
    local attack group
    attack=$($bin/python -c "import json, sys; print(json.load(open(sys.argv[1]))['attack'])" "$result/metrics.json")
    group=$(basename "$(dirname "$result")")
    cp "$result/metrics.json" "$kept/${group}_$attack.json"
  done
  if [ "$kind" = lora ]; then  # the adapter file against the base's weight files, in bytes
    $bin/python -c "import json, pathlib, sys; base = pathlib.Path(sys.argv[2])
print(json.dumps({'adapter_bytes': pathlib.Path(sys.argv[1]).stat().st_size, 'base_weights_bytes': sum(
    p.stat().st_size for p in base.rglob('*') if p.suffix in ('.safetensors', '.bin'))}))" \
      "$dest/target/pytorch_lora_weights.safetensors" "$out/base/target" > "$kept/sizes.json"
  fi
}

train_base
if [ -z "${DRY_RUN:-}" ]; then mkdir -p "$keep" && cp "$out/base/target/training.json" "$keep/base_training.json"; fi
for seed in 0 1 2; do
  for kind in lora full; do
    train_finetune "$seed" "$kind"
    attack_finetune "$seed" "$kind"
  done
done
