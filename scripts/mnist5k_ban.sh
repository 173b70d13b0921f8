#!/usr/bin/env bash
# Born-Again self-distillation on mnist5k (docs/results.md): resnet8 → resnet8, generation 0
# trained alone, then two generations each distilled from the one before, with BAN's KD
# (mnist5k/ban-kd/resnet8: the KD term alone, T = 1), with that KD term plus cross-entropy
# (the same preset, ce_weight 1) and with WKD-L (mnist5k/ban-wkd_l/resnet8); three seeds.
#
# The setting of the mnist5k study (scripts/mnist5k_study.sh): 50 training digits per class,
# 30 epochs per generation (milestones 19/23/26), batch 64, lr 0.05; generation 0 is that
# study's vanilla student. WKD-L's cosine decay starts at epoch 19 of each generation.
#
# Usage: scripts/mnist5k_ban.sh [OUT_DIR]   (default runs/mnist5k-ban)
set -euo pipefail
OUT=${1:-runs/mnist5k-ban}
WKD=${WKD:-.venv/bin/wkd}
SEEDS=${SEEDS:-"0 1 2"}
mkdir -p "$OUT"
start=$(date +%s)
SCHEDULE=(--set training.epochs=30 --set 'training.lr_milestones=[19, 23, 26]'
          --set dataset.train_subset_per_class=50 --set training.num_workers=0)

one_seed() {
  local seed=$1 gen0="$OUT/gen0/seed$1"
  [ -f "$gen0/manifest.json" ] || "$WKD" train --arch resnet8 --dataset mnist5k --lr 0.05 \
    --no-progress "${SCHEDULE[@]}" --set training.batch_size=64 --set training.seed="$seed" \
    --out "$gen0" | tail -n 2
  for variant in kd kd_ce wkd_l; do
    case $variant in  # kd_ce: BAN's KD term plus the cross-entropy WKD-L's preset also has
      kd) extra=() ;;
      kd_ce) extra=(--set params.ce_weight=1.0) ;;
      wkd_l) extra=(--set params.cosine_decay_epoch=19) ;;
    esac
    "$WKD" distill --preset "mnist5k/ban-${variant%_ce}/resnet8" --dataset mnist5k \
      --teacher "$gen0/student.safetensors" --no-progress "${SCHEDULE[@]}" "${extra[@]}" \
      --set generations=2 --set training.seed="$seed" --out "$OUT/ban-$variant/seed$seed" \
      | tail -n 2
  done
}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for seed in $SEEDS; do one_seed "$seed" & done
wait
echo "BAN study took $(( $(date +%s) - start )) s"
.venv/bin/python scripts/summarize_ban.py "$OUT"
