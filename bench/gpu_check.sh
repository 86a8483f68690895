#!/usr/bin/env bash
# GPU check (under 5 minutes on one GPU): train a small target in bf16 for a few hundred steps, attack it
# with NA on CUDA and on the CPU with the same seed and compare the scores, and, with two GPUs or more,
# attack on two devices with DDP and compare again. On a machine without CUDA it says what it skipped and
# passes. Usage: make install && bench/gpu_check.sh
# GPU_CHECK_ACCELERATOR=cpu runs every step on the CPU instead (a rehearsal of this script, not a GPU check).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
[ -x $bin/mia-train ] || { echo "gpu_check: no .venv here; run make install first" >&2; exit 2; }
accel=${GPU_CHECK_ACCELERATOR:-gpu}
steps=${GPU_CHECK_STEPS:-300}
out=runs/gpu_check
fail() { tail -5 "$out/$2" >&2; echo "gpu_check: FAILED: $1 (see $out/$2)" >&2; exit 1; }
gpus=$($bin/python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$accel" = gpu ] && [ "$gpus" = 0 ]; then
  echo "gpu_check: no CUDA device (torch.cuda.device_count() = 0); skipped: bf16 training on CUDA,"
  echo "gpu_check:   the EMA-on-GPU check, the CUDA-vs-CPU score comparison and the two-device DDP attack"
  exit 0
fi
precision=$([ "$accel" = gpu ] && echo bf16-mixed || echo 32-true)
rm -rf "$out" && mkdir -p "$out"
quiet=(logger=none trainer.enable_progress_bar=false)

echo "gpu_check: training ddpm_small on digits, $steps steps, $precision on $accel"
$bin/mia-train data=digits target=ddpm_small trainer.accelerator="$accel" trainer.precision="$precision" \
  trainer.max_steps="$steps" trainer.val_check_interval=100 "${quiet[@]}" hydra.run.dir=$out/train \
  >$out/train.log 2>&1 || fail training train.log
grep -hE "EMA of the weights|trained [0-9]+ steps" $out/train.log | sed 's/^/gpu_check:   /'
device=$([ "$accel" = gpu ] && echo cuda || echo cpu)
grep -q "EMA of the weights kept on $device" $out/train.log || fail "the EMA average is not on $device" train.log

attack=(target.path=$out/train/target attack=na data.max_members=256 data.max_nonmembers=256 cache.enabled=false
        "${quiet[@]}")
echo "gpu_check: NA on 256 + 256 samples, on $accel and on the CPU, seed 0"
$bin/mia-attack "${attack[@]}" trainer.accelerator="$accel" hydra.run.dir=$out/attack_device >$out/attack.log 2>&1 \
  || fail "attack on $accel" attack.log
$bin/mia-attack "${attack[@]}" trainer.accelerator=cpu hydra.run.dir=$out/attack_cpu >>$out/attack.log 2>&1 \
  || fail "attack on the CPU" attack.log
if [ "$accel" = gpu ] && [ "$gpus" -ge 2 ]; then
  $bin/mia-attack "${attack[@]}" trainer.accelerator=gpu trainer.devices=2 ++trainer.strategy=ddp \
    hydra.run.dir=$out/attack_2dev >>$out/attack.log 2>&1 || fail "two-device attack" attack.log
else
  echo "gpu_check: skipped the two-device DDP attack: $gpus CUDA device(s) here, it needs 2"
fi

# Tolerance: 1e-3 in NA's score, -log of a mean squared distance between float32 noise predictions, i.e.
# 0.1% in that distance. Scoring turns TF32 off, so devices differ only by fp32 rounding (other kernels and
# summation orders, ~1e-6 relative in each prediction), which the differences between predictions along
# the path amplify by the inverse of their relative size; a device bug (TF32 or bf16 left on, other noise,
# other samples) moves scores by far more. The spread of the scores is printed next to it for scale.
$bin/python - "$out" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from mia.evaluation.result import AttackResult

TOLERANCE = 1e-3
out = Path(sys.argv[1])
reference = AttackResult.load(out / "attack_cpu")
failed = False
for name in ("attack_device", "attack_2dev"):
    if not (out / name).is_dir():
        continue
    other = AttackResult.load(out / name)
    assert other.ids == reference.ids and np.array_equal(other.labels, reference.labels), f"{name}: other samples"
    diff = np.abs(other.scores - reference.scores)
    aucs = [roc_auc_score(r.labels, r.scores) for r in (reference, other)]
    ok = bool(np.isfinite(other.scores).all() and diff.max() <= TOLERANCE)
    failed |= not ok
    print(f"gpu_check: {name} vs cpu: {len(diff)} scores, max |diff| {diff.max():.2e}, median {np.median(diff):.2e} "
          f"(tolerance {TOLERANCE:.0e}, score std {reference.scores.std():.2f}); AUC {aucs[1]:.4f} vs {aucs[0]:.4f}: {'ok' if ok else 'FAILED'}")
sys.exit(1 if failed else 0)
EOF
echo "gpu_check: passed"
