#!/usr/bin/env bash
# Retrain every shipped checkpoint of the given categories at once on one machine:
#   i3ad        the benchmark inpainting U-Net (base width 32; its first two levels without GroupNorm, which runs it
#               faster, losing no more than a training run moves: results/norm_free_levels_check.csv), trained with
#               synthetic defects on half its images and detecting at T = 2 with shrinking masks re-painted in step
#               0's grid cells (results/README.md, item 9)
#   i3ad-small  the CPU demo's inpainting U-Net (base width 16), trained with synthetic defects on half its images
#               and detecting at T = 0, iterating (T > 0) by the rules of i3ad (results/README.md, item 11)
#   ae          the AE-SSIM baseline
# usage: scripts/train_all.sh DATA_ROOT CHECKPOINTS_ROOT CATEGORY...
# Checkpoints already in CHECKPOINTS_ROOT under these names are replaced (train --overwrite).
# Environment (defaults in brackets):
#   STEPS [8000], BATCH [32]   optimiser steps and batch size of every run
#   MINUTES []                 a time budget per run: the step count is cut to what fits (see --max-minutes)
#   LOG_DIR [train-logs]       where each run's log goes
#   DEVICES [auto]             devices, taken in turn by the runs in this order: every category's i3ad, then every
#                              i3ad-small, then every ae; e.g. "cuda:0 cuda:1 cuda:2 cuda:3 cuda:3 cuda:3" gives three
#                              categories' i3ad runs a GPU each and puts the six light runs on the fourth
#   GEOMETRY [auto]            the input geometry of every run: stretch, fit, or auto (fit for a category whose
#                              training images are not all square, such as magnetic_tile; stretch otherwise)
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: $0 DATA_ROOT CHECKPOINTS_ROOT CATEGORY..." >&2; exit 2; fi
data=$1 out=$2; shift 2
read -r -a devices <<< "${DEVICES:-auto}"
common=(--data-root "$data" --out "$out" --steps "${STEPS:-8000}" --batch-size "${BATCH:-32}" --save-fp16 --quiet --overwrite)
[ -n "${MINUTES:-}" ] && common+=(--max-minutes "$MINUTES")
# One thread per run: several runs share the machine, and more threads only make them wait on each other.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
logs=${LOG_DIR:-train-logs}
mkdir -p "$out" "$logs"
pids=() job=0
launch() {  # CATEGORY ARGS...: one training run on the next device in turn, logged to LOG_DIR/CATEGORY-NAME.log
  local category=$1 norm=none; shift
  # magnetic_tile: strong illumination changes between its images
  [ "$category" = magnetic_tile ] && norm=standardize
  local device=${devices[$((job % ${#devices[@]}))]}
  python -m i3ad train "${common[@]}" --category "$category" --normalization "$norm" --geometry "${GEOMETRY:-auto}" \
    --device "$device" "$@" > "$logs/$category-${*: -1}.log" 2>&1 &
  pids+=($!) job=$((job + 1))
}
# Background jobs of a script ignore Ctrl-C; stop them with it (and with kill) rather than leave them training.
trap 'kill "${pids[@]}" 2> /dev/null; exit 130' INT TERM
for category in "$@"; do
  launch "$category" --model i3ad --base-width 32 --norm-free-levels 2 --synthetic-defects 0.5 \
    --iterations 2 --shrinking-masks --iteration-painting cells --name i3ad
done
for category in "$@"; do
  launch "$category" --model i3ad --base-width 16 --synthetic-defects 0.5 \
    --iterations 0 --shrinking-masks --iteration-painting cells --name i3ad-small
done
for category in "$@"; do launch "$category" --model ae --base-width 32 --name ae; done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
tail -n 3 "$logs"/*.log
if [ "$failed" -gt 0 ]; then echo "$failed training run(s) failed" >&2; exit 1; fi
