#!/usr/bin/env bash
# Shadow models for the CIFAR-10 strength targets (docs/method.md, "Shadow models"): per strength target
# (bench/strength.sh trains them), N shadows at the target's recipe (experiment=shadows_strength_cifar10:
# strength_cifar10 unchanged), each drawing 128 members and 1,024 non-members from the target's 1,152 samples
# (split.pool; the target's labels are never read), then every attack under protocol=shadow:
#   defaults/   every attack at its paper's defaults, orientation and threshold fitted on the shadows
#   lira/       the same attacks with attack.calibration=shadows (LiRA; offline with few shadows)
#   learned/    secmi_nn, learned (NA's features), GSA1 and GSA2, trained on the shadows' members and non-members
# Every target sample is an evaluation row here; the strength rows "fitted on calibration" are measured on
# the 3/4 of the samples their calibration part left, so compare them with that in mind.
# Each run's metrics.json and each shadow's training.json are copied under bench/shadows/.
# Cost, measured (2026-12-07, 2 CPU cores): a shadow trains in 240-260 s when the machine is quiet (the target's
# recipe; 530-970 s beside other work), so 4 shadows x 3 seeds is under an hour. The attacks query every shadow
# beside the target: the fixed attacks and LiRA take minutes per seed, GSA 3.5-6.5 minutes per model and variant.
# Usage: bench/shadows.sh [cifar10 root]     SHADOWS=4 (at least 2) SEEDS="0 1 2" (the strength targets)
#        STAGE=train trains the shadows of every seed, STAGE=attack attacks; both (the default) train every seed's
#        shadows first, so a seed's attacks never wait on another seed's training.
#        ATTACK_GROUPS="fixed learned gsa1 gsa2" (the default) runs the attacks group by group over the seeds;
#        GSA is by far the slowest (one sample per pass).
#        LiRA (the lira/ runs) refuses a target whose sample no shadow held out: with 4 shadows of 128 members a
#        sample can be in all four (2 on seed 0 here). SHADOWS=5 SEEDS=<that seed> STAGE=train adds one.
set -euo pipefail
cd "$(dirname "$0")/.."
cifar10=${1:-../shared/data/cifar10}
bin=.venv/bin
keep=bench/shadows
quiet=(trainer.enable_progress_bar=false)
count=${SHADOWS:-4}

train_shadows() {  # target seed: the shadows of runs/strength/cifar10/seed<seed>, those not trained yet
  local seed=$1 target=runs/strength/cifar10/seed$1/target todo=()
  local shadows=runs/shadows/cifar10/seed$seed
  # Shadow split seeds 101.. for target seed 0, 201.. for seed 1, ...: never a target's own split seed.
  for i in $(seq 1 "$count"); do
    local s=$((100 * (seed + 1) + i))
    [ -f "$shadows/shadow$s/target/training.json" ] || todo+=("$s")
  done
  [ ${#todo[@]} -eq 0 ] && return
  local seeds
  seeds=$(IFS=,; echo "${todo[*]}")
  $bin/mia-train -m experiment=shadows_strength_cifar10 data.root="$cifar10" split.pool="$target/split.json" \
    split.seed="$seeds" logger=csv export_dir="$shadows/shadow\${split.seed}/target" \
    hydra.sweep.dir="$shadows/sweep" "${quiet[@]}"
}

attack() {  # one mia-attack command; a refused or failed run is reported (its summary.csv says why), not fatal
  $bin/mia-attack "$@" || echo "shadows.sh: this run failed or was refused, the others go on: mia-attack $*" >&2
}

attack_with_shadows() {  # target seed, group of attacks: fixed | learned | gsa1 | gsa2
  local seed=$1 group=$2 target=runs/strength/cifar10/seed$1/target shadows=runs/shadows/cifar10/seed$1
  local out=$shadows/attacks
  local common=(target.path="$target" protocol=shadow "protocol.shadows=[$shadows/shadow*/target]" logger=none
                "${quiet[@]}")
  case $group in
    fixed)
      attack -m attack=na,loss,pia,pian,secmi,sima "${common[@]}" hydra.sweep.dir="$out/defaults"
      attack -m attack=na,loss,pia,pian,secmi,sima attack.calibration=shadows "${common[@]}" \
        hydra.sweep.dir="$out/lira" ;;
    learned)
      attack attack=secmi_nn "${common[@]}" hydra.run.dir="$out/learned/secmi_nn"
      attack attack=learned attack.features=na "${common[@]}" hydra.run.dir="$out/learned/learned_na" ;;
    gsa1|gsa2)  # one sample per forward and backward pass: 3.5-6.5 minutes per model on 2 CPU cores
      attack attack="$group" "${common[@]}" hydra.run.dir="$out/learned/$group" ;;
  esac
  keep_runs "$seed"
}

keep_runs() {  # target seed: its shadows' training records and every finished run's metrics.json, under bench/
  local seed=$1 shadows=runs/shadows/cifar10/seed$1 dest=$keep/cifar10/seed$1
  mkdir -p "$dest"
  for shadow in "$shadows"/shadow*/target; do
    cp "$shadow/training.json" "$dest/$(basename "$(dirname "$shadow")")_training.json"
  done
  for run in "$shadows"/attacks/defaults/*/ "$shadows"/attacks/lira/*/ "$shadows"/attacks/learned/*/; do
    [ -f "$run/metrics.json" ] || continue
    local attack
    attack=$($bin/python -c "import json, sys; print(json.load(open(sys.argv[1]))['attack'])" "$run/metrics.json")
    cp "$run/metrics.json" "$dest/$(basename "$(dirname "$run")")_$attack.json"
  done
}

seeds=${SEEDS:-0 1 2}
stage=${STAGE:-all}
case $stage in train|attack|all) ;; *) echo "shadows.sh: STAGE=$stage; use train, attack or all" >&2; exit 2 ;; esac
groups=${ATTACK_GROUPS:-fixed learned gsa1 gsa2}
for group in $groups; do
  case $group in fixed|learned|gsa1|gsa2) ;;
    *) echo "shadows.sh: ATTACK_GROUPS has $group; use fixed, learned, gsa1 and/or gsa2" >&2; exit 2 ;; esac
done
for seed in $seeds; do
  if [ ! -f "runs/strength/cifar10/seed$seed/target/split.json" ]; then
    echo "shadows.sh: runs/strength/cifar10/seed$seed/target is missing; train it first (bench/strength.sh)" >&2
    exit 2
  fi
done
if [ "$stage" != attack ]; then
  for seed in $seeds; do train_shadows "$seed"; done
fi
if [ "$stage" != train ]; then  # group by group over the seeds: the cheap rows of every seed come first
  for group in $groups; do
    for seed in $seeds; do attack_with_shadows "$seed" "$group"; done
  done
fi
