#!/usr/bin/env bash
# RRT on MPEG-7, class-disjoint: trained on the first 35 classes, evaluated on the other
# 35 (every image a query, its top-100 re-ranked), against the global (cosine) ranking.
# Two trainings, same model and budget: with the matching initialisation, the signed-
# permutation augmentation and the learned global skip (the defaults), and as the paper
# trains (none of them).
# Writes bench/results/<date>-rrt-mpeg7-<commit>.md (+ .json, .png). ~25 min on 2 CPU cores.
#   bash bench/rrt_mpeg7.sh [features.npz] [locals.npz]
set -euo pipefail
M=${1:-../shared/data/mpeg7/mpeg7_mobilenetv2_imagenet_gap1280.npz}
L=${2:-../shared/data/mpeg7/mpeg7_mobilenetv2_local128.npz}
C=$(git rev-parse --short HEAD)
OUT=bench/results/$(date +%F)-rrt-mpeg7-$C
DIR=$(mktemp -d)
MODEL=(--depth 2 --heads 1 --ffn 256 --lr 5e-4 --epochs 4 --triplets-per-anchor 16 --val-topk 30 --seed 0)
run() { echo '```'; echo "\$ $*"; "$@" 2>/dev/null; echo '```'; echo; }
{
  echo "# RRT on MPEG-7, trained on classes 0-34, tested on classes 35-69 (commit $C)"
  echo
  echo "\`bash bench/rrt_mpeg7.sh\`; every command below ran as shown. val mAP (each test image's top-30"
  echo "re-ranked, for the learning curve only) is on the test half; the last epoch's model is used."
  echo "Model: 2 post-norm layers, 1 head, FFN 256 (the paper's d=128 and descriptors), 75 local"
  echo "descriptors per image; 16 triplets per anchor and epoch from its global top-100."
  echo
  echo "## With the matching initialisation, the augmentation and the global skip (defaults)"
  run pycsa train --method rrt --features "$M" --locals "$L" --class-split first --val-class-split second \
      "${MODEL[@]}" --out "$DIR/rrt.pt" --plot "$OUT.png"
  run pycsa eval --features "$M" --locals "$L" --class-split second --method rrt --checkpoint "rrt=$DIR/rrt.pt" \
      --json "$OUT.json"
  echo "## As the paper trains (plain initialisation, no augmentation, no global skip)"
  run pycsa train --method rrt --features "$M" --locals "$L" --class-split first --val-class-split second \
      "${MODEL[@]}" --match-init 0 --no-augment --global-skip 0 --out "$DIR/rrt-plain.pt"
  run pycsa eval --features "$M" --locals "$L" --class-split second --method rrt \
      --checkpoint "rrt=$DIR/rrt-plain.pt" --json "$OUT-plain.json"
} | tee "$OUT.md"
