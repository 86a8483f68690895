#!/usr/bin/env bash
# The discriminating attack-strength benchmark (docs/results.md): targets where the attacks can be ranked,
# CIFAR-10 over 3 split seeds and CelebA over one, plus a DP-SGD target on CIFAR-10's seed-0 split
# (docs/results.md holds CIFAR-10 and DP: STRENGTH_PARTS="cifar10 dp"; CelebA was not run for it yet).
# Per target, every row is measured on the same evaluation part (protocol.calibration=0.25 sets a quarter
# of the members and of the non-members aside, by id):
#   defaults/   every attack at its paper's defaults (a multirun: summary.csv, roc_overlay.png)
#   tuned/      every attack with its knobs tuned on the calibration part (tune=<grid>), run once on the rest
#   learned/    secmi_nn and learned on NA's features, trained on the calibration part
#   variant/    NA with statistic=magnitude (not the paper's; docs/results.md, "Why NA flips")
#   absolute/   NA under the other reading of its σ: attack.injection=absolute attack.sigma=0.1 (docs/method.md)
#   fremia/     NA, loss, PIA, PIAN and SecMI with FreMIA's filter (attack.frequency_filter=high, its defaults)
#   gradient/   GSA1 and GSA2 (per-sample gradient norms, XGBoost fitted on the calibration part)
#   blackbox/   ReDiffuse at its defaults (image variation through the generation call only)
# STRENGTH_ROWS=new runs only the last four on targets already attacked (e.g. after adding attacks).
# Each run's small files (metrics.json, summary.csv, training.json) are copied under bench/strength/, so
# `python -m bench.strength_report` rewrites docs/results.md's strength section on any machine, no retraining.
# Usage: bench/strength.sh [cifar10 root] [celeba root]   (CIFAR-10 + DP took about 95 minutes here, 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
cifar10=${1:-../shared/data/cifar10}
celeba=${2:-../shared/data/celeba}
bin=.venv/bin
keep=bench/strength
quiet=(trainer.enable_progress_bar=false)
# The defended target: DP-SGD to (ε = 10, δ = 1e-5) on the seed-0 split (docs/method.md).
# Per-sample gradients make a step about 3x slower on CPU, so it trains for half the steps; the undefended
# target is attacked at the same step too (its checkpoint), for a like-for-like row.
dp_steps=500
dp=(training.dp.enabled=true training.dp.target_epsilon=10 training.dp.max_grad_norm=1.0 training.dp.delta=1e-5
    trainer.max_steps=$dp_steps trainer.val_check_interval=$dp_steps)

train_target() {  # dataset root seed name [overrides...]
  local dataset=$1 root=$2 seed=$3 name=$4
  shift 4
  local out=runs/strength/$dataset/$name
  if [ ! -f "$out/target/training.json" ]; then
    $bin/mia-train experiment=strength_"$dataset" data.root="$root" split.seed="$seed" logger=csv \
      export_dir="$out/target" hydra.run.dir="$out/train" "${quiet[@]}" "$@"
  fi
}

attack_target() {  # dataset name [label overrides...]: the target runs/strength/<dataset>/<name>, results under <label>
  local target=runs/strength/$1/$2/target dataset=$1 label=${3:-$2}
  shift $(($# < 3 ? $# : 3))
  local out=runs/strength/$dataset/$label
  local common=(target.path="$target" protocol.calibration=0.25 logger=none "${quiet[@]}" "$@")
  local rows=${STRENGTH_ROWS:-all}
  [ "$rows" = new ] || $bin/mia-attack -m attack=na,loss,pia,pian,secmi,sima "${common[@]}" \
    hydra.sweep.dir="$out/defaults"
  if [ -z "${DEFAULTS_ONLY:-}" ] && [ "$rows" != base ]; then
    $bin/mia-attack attack=na attack.injection=absolute attack.sigma=0.1 "${common[@]}" \
      hydra.run.dir="$out/absolute/na"
    $bin/mia-attack -m attack=na,loss,pia,pian,secmi attack.frequency_filter=high "${common[@]}" \
      hydra.sweep.dir="$out/fremia"
    $bin/mia-attack attack=rediffuse "${common[@]}" hydra.run.dir="$out/blackbox/rediffuse"
    $bin/mia-attack -m attack=gsa1,gsa2 "${common[@]}" hydra.sweep.dir="$out/gradient"
  fi
  if [ -z "${DEFAULTS_ONLY:-}" ] && [ "$rows" = all ]; then  # DEFAULTS_ONLY=1: the defaults row only
    for pair in na:na_grid loss:loss_t pia:pia_t pian:pian_t secmi:secmi_t_sec sima:sima_t; do
      $bin/mia-attack attack="${pair%%:*}" tune="${pair##*:}" "${common[@]}" hydra.run.dir="$out/tuned/${pair%%:*}"
    done
    $bin/mia-attack attack=secmi_nn "${common[@]}" hydra.run.dir="$out/learned/secmi_nn"
    $bin/mia-attack attack=learned attack.features=na "${common[@]}" hydra.run.dir="$out/learned/learned_na"
    # NA's magnitude statistic (docs/results.md, "Why NA flips"): a variant, on NA's cached predictions (no queries)
    $bin/mia-attack attack=na attack.statistic=magnitude "${common[@]}" hydra.run.dir="$out/variant/na"
  fi

  local dest=$keep/$dataset/$label
  mkdir -p "$dest"
  cp "$target/training.json" "$dest/training.json"
  [ ! -f "$out/defaults/summary.csv" ] || cp "$out/defaults/summary.csv" "$dest/defaults_summary.csv"
  for run in "$out"/{defaults,tuned,learned,variant,absolute,fremia,gradient,blackbox}/*/; do
    [ -f "$run/metrics.json" ] || continue
    local attack
    attack=$($bin/python -c "import json, sys; print(json.load(open(sys.argv[1]))['attack'])" "$run/metrics.json")
    cp "$run/metrics.json" "$dest/$(basename "$(dirname "$run")")_$attack.json"
  done
}

parts=${STRENGTH_PARTS:-cifar10 celeba dp}  # e.g. STRENGTH_PARTS=dp bench/strength.sh: the defended target only
for part in $parts; do
  case $part in
    cifar10) for seed in 0 1 2; do train_target cifar10 "$cifar10" "$seed" "seed$seed"; attack_target cifar10 "seed$seed"; done ;;
    celeba) train_target celeba "$celeba" 0 seed0; attack_target celeba seed0 ;;
    dp)  # the defended target, and the undefended seed-0 target at the same step (its kept checkpoint; defaults)
      train_target cifar10 "$cifar10" 0 dp_seed0 "${dp[@]}"
      attack_target cifar10 dp_seed0
      DEFAULTS_ONLY=1 attack_target cifar10 seed0 seed0_step"$dp_steps" \
        target.checkpoint=runs/strength/cifar10/seed0/train/checkpoints/step$(printf %07d "$dp_steps").ckpt ;;
    *) echo "strength.sh: unknown part $part (cifar10, celeba, dp)" >&2; exit 2 ;;
  esac
done
$bin/python -m bench.strength_report
