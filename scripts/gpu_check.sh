#!/usr/bin/env bash
# The GPU measurements of issue 9 in one run (≤ 6 minutes on an H100), then one summary table.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        (default: $OUT, else ./gpu-results)
#
# Works on a GPU host with its own PyTorch preinstalled and no network: the project on
# PYTHONPATH is enough (the benchmarks need torch, torchvision, numpy and Triton only).
# Each stage has its own time limit so that one slow stage cannot eat the others; a failed
# stage is reported in the summary, and the script goes on.
set -u
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

stage losses 50 "$PY" bench/losses.py --device cuda --quick --json "$OUT_DIR/losses.json"
stage fast_step 110 "$PY" bench/fast_step.py --device cuda --quick --json "$OUT_DIR/fast_step.json"
stage train_step 50 "$PY" bench/train_step.py --device cuda --quick --json "$OUT_DIR/train_step.json"
stage epoch 80 "$PY" bench/epoch.py --device cuda --epochs 2 --eager-images 5000 --json "$OUT_DIR/epoch.json"
stage jobs 100 "$PY" bench/jobs_per_gpu.py --device cuda --ks 1,2,4 --epochs 2 --json "$OUT_DIR/jobs.json"
"$PY" scripts/gpu_summary.py "$OUT_DIR" | tee "$OUT_DIR/summary.md"
