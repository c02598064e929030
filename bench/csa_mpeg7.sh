#!/usr/bin/env bash
# CSA against cosine, alpha-QE and the other re-rankers on MPEG-7, class-disjoint:
# trained on the first 35 classes, evaluated on the other 35 (every image a query).
# Two trainings: the paper's optimiser (SGD) and AdamW, same model and budget.
# Writes bench/results/csa-mpeg7-<commit>.md (+ .json/.png per evaluation). ~3 min on 2 CPU cores.
#   bash bench/csa_mpeg7.sh [path/to/mpeg7_mobilenetv2_imagenet_gap1280.npz]
set -euo pipefail
M=${1:-../shared/data/mpeg7/mpeg7_mobilenetv2_imagenet_gap1280.npz}
C=$(git rev-parse --short HEAD)
OUT=bench/results/$(date +%F)-csa-mpeg7-$C
DIR=$(mktemp -d)
MODEL=(--K 128 --L 128 --dim 64 --heads 1 --epochs 6 --batch-size 16 --dropout 0 --drop-path 0 --seed 0)
run() { echo '```'; echo "\$ $*"; "$@" 2>/dev/null; echo '```'; echo; }
{
  echo "# CSA on MPEG-7, trained on classes 0-34, tested on classes 35-69 (commit $C)"
  echo
  echo "\`bash bench/csa_mpeg7.sh\`; every command below ran as shown. val mAP is measured on the test"
  echo "half for the learning curve only: the last epoch's model is used, no selection. Dropout off"
  echo "(700 training images, 6 epochs; CPU dropout would double the time)."
  echo
  echo "## Training-free baselines"
  run pycsa eval --features "$M" --class-split second --method alpha_qe,alpha_dba,diffusion,superglobal --json "$OUT-baselines.json"
  for opt in sgd adamw; do
    lr=$([ $opt = sgd ] && echo 0.03 || echo 3e-4)
    echo "## CSA, $opt"
    run pycsa train --features "$M" --class-split first --val-features "$M" --val-class-split second \
        "${MODEL[@]}" --optimizer $opt --lr $lr --out "$DIR/csa-$opt.pt"
    run pycsa eval --features "$M" --class-split second --method csa,alpha_qe+csa --checkpoint "$DIR/csa-$opt.pt" \
        --csa-k 128 --json "$OUT-$opt.json"
  done
} | tee "$OUT.md"
