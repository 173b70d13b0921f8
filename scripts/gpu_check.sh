#!/usr/bin/env bash
# The GPU measurements of issue 9 in one run (≤ 6 minutes on an H100), then one summary table.
#
#   bash scripts/gpu_check.sh [--targets | --dry-run] [OUT_DIR]   (default: $OUT, else ./gpu-results)
#
#   (no flag)   every stage: the WKD-L kernels, losses, fast and eager steps, epoch, jobs per GPU,
#               the latency table.
#   --targets   the loss and step targets only (≈ 3 minutes): bench/wkd_l_kernels.py (WKD-L
#               loss fwd+bwd, plain vs fused, eager and in a CUDA graph, parity on the GPU) and
#               the fast step of KD / WKD-L / WKD-F / WKD-LF on both pairs, ratios to KD, and
#               issue 11's latency table (bench/latency.py: ImageNet R34→R18, batch 256).
#   --dry-run   the --targets stages on the CPU with tiny sizes (Triton's interpreter for the
#               fused kernels): checks the script and the summary where there is no GPU.
#
# Works on a GPU host with its own PyTorch preinstalled and no network: the project on
# PYTHONPATH is enough (the benchmarks need torch, torchvision, numpy and Triton only).
# Each stage has its own time limit so that one slow stage cannot eat the others; a failed
# stage is reported in the summary, and the script goes on.
set -u
MODE=full
case "${1:-}" in
  --targets) MODE=targets; shift ;;
  --dry-run) MODE=dry-run; shift ;;
  -*) echo "unknown option $1 (use --targets or --dry-run)" >&2; exit 2 ;;
esac
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-$HERE/gpu-results}}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
cd "$HERE"

stage() {  # stage NAME LIMIT_S CMD...: run with a time limit, log to OUT_DIR/NAME.log
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$OUT_DIR/stages.txt"
  tail -n 40 "$OUT_DIR/$name.log"
}

: >"$OUT_DIR/stages.txt"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, torchvision, triton, sys; print(sys.version.split()[0], torch.__version__, torchvision.__version__, triton.__version__)"
} >"$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

STEP_METHODS=(--methods wkd_l,wkd_f,wkd_lf --no-eager)  # KD is always timed: the ratios' base
case $MODE in
  targets)
    stage wkd_l_kernels 90 "$PY" bench/wkd_l_kernels.py --device cuda --quick \
      --json "$OUT_DIR/wkd_l_kernels.json"
    stage fast_step 100 "$PY" bench/fast_step.py --device cuda --quick "${STEP_METHODS[@]}" \
      --json "$OUT_DIR/fast_step.json"
    stage latency 60 "$PY" bench/latency.py --device cuda --quick --json "$OUT_DIR/latency.json"
    ;;
  dry-run)
    stage wkd_l_kernels 600 env TRITON_INTERPRET=1 "$PY" bench/wkd_l_kernels.py --device cpu \
      --rounds 1 --cases 4x20,3x130 --tiles "" --json "$OUT_DIR/wkd_l_kernels.json"
    stage fast_step 1800 "$PY" bench/fast_step.py --device cpu --quick --pairs 1 --no-parity \
      "${STEP_METHODS[@]}" --json "$OUT_DIR/fast_step.json"
    stage latency 600 "$PY" bench/latency.py --device cpu --batch 2 --image-size 160 --rounds 1 \
      --json "$OUT_DIR/latency.json"
    ;;
  full)
    stage wkd_l_kernels 90 "$PY" bench/wkd_l_kernels.py --device cuda --quick \
      --json "$OUT_DIR/wkd_l_kernels.json"
    stage losses 50 "$PY" bench/losses.py --device cuda --quick --json "$OUT_DIR/losses.json"
    stage fast_step 110 "$PY" bench/fast_step.py --device cuda --quick \
      --json "$OUT_DIR/fast_step.json"
    stage train_step 50 "$PY" bench/train_step.py --device cuda --quick \
      --json "$OUT_DIR/train_step.json"
    stage epoch 80 "$PY" bench/epoch.py --device cuda --epochs 2 --eager-images 5000 \
      --json "$OUT_DIR/epoch.json"
    stage jobs 100 "$PY" bench/jobs_per_gpu.py --device cuda --ks 1,2,4 --epochs 2 \
      --json "$OUT_DIR/jobs.json"
    stage latency 60 "$PY" bench/latency.py --device cuda --quick --json "$OUT_DIR/latency.json"
    ;;
esac
"$PY" scripts/gpu_summary.py "$OUT_DIR" | tee "$OUT_DIR/summary.md"
