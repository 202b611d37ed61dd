#!/usr/bin/env bash
# Retrain every shipped checkpoint of the given categories at once on one machine (the GPU is shared by the runs):
#   i3ad        the benchmark inpainting U-Net (base width 32)
#   i3ad-small  the CPU demo's inpainting U-Net (base width 16)
#   ae          the AE-SSIM baseline
# usage: scripts/train_all.sh DATA_ROOT CHECKPOINTS_ROOT CATEGORY...   (STEPS, BATCH, DEVICE override the defaults)
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: $0 DATA_ROOT CHECKPOINTS_ROOT CATEGORY..." >&2; exit 2; fi
data=$1 out=$2; shift 2
steps=${STEPS:-3000} batch=${BATCH:-16} device=${DEVICE:-auto}
# One thread per run: several runs share the machine, and more threads only make them wait on each other.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
common=(--data-root "$data" --out "$out" --steps "$steps" --batch-size "$batch" --device "$device" --save-fp16 --quiet)
mkdir -p "$out"
pids=()
for category in "$@"; do
  norm=none
  [ "$category" = magnetic_tile ] && norm=standardize
  python -m i3ad train "${common[@]}" --category "$category" --normalization "$norm" --model i3ad --name i3ad --base-width 32 &
  pids+=($!)
  python -m i3ad train "${common[@]}" --category "$category" --normalization "$norm" --model i3ad --name i3ad-small --base-width 16 &
  pids+=($!)
  python -m i3ad train "${common[@]}" --category "$category" --normalization "$norm" --model ae --name ae --base-width 32 &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
if [ "$failed" -gt 0 ]; then echo "$failed training run(s) failed" >&2; exit 1; fi
