#!/usr/bin/env bash
# The residual CSA recipe (issue #18) on MPEG-7 and on data it never saw.
# 1. Trained on MPEG-7 classes 0-34, served on classes 35-69: alone and as the last stage of chains,
#    at K=128 and K=1,024 (700 images: the whole list), against the training-free re-rankers.
# 2. Do no harm: trained on all of MPEG-7 and served on a COIL-like set (bench/diffusion_truncated_side_by_side.py's:
#    20 objects x 72 views, synthetic) at K=128 and 1,024, against the input ranking; the paper's recipe beside it.
# 3. pycsa tune --train csa on classes 0-34, then eval --config on classes 35-69.
# Writes bench/results/<date>-csa-residual-mpeg7-<commit>.md. About 45 min on 2 CPU cores (estimated: ~25 before --dense).
#   bash bench/csa_residual_mpeg7.sh [path/to/mpeg7_mobilenetv2_imagenet_gap1280.npz]
set -euo pipefail
M=${1:-../shared/data/mpeg7/mpeg7_mobilenetv2_imagenet_gap1280.npz}
C=$(git rev-parse --short HEAD)
OUT=bench/results/$(date +%F)-csa-residual-mpeg7-$C
DIR=$(mktemp -d)
# the recipe of pycsa.tune_learned.CSA_RECIPE (before commit ea12b80 these flags: --K 128,256,512 --L 128 --dim 64
# --depth 2 --heads 1 --epochs 3 --batch-size 16 --dropout 0 --drop-path 0 --optimizer adamw --lr 3e-4
# --warmup-epochs 0 --tau 1 --lam 0 --loss positive --residual --standardize --perturb 2; now also --dense 2)
RECIPE=(--recipe residual)
PAPER=(--K 128 --L 128 --dim 64 --heads 1 --epochs 6 --batch-size 16 --dropout 0 --drop-path 0 --optimizer adamw --lr 3e-4)
source bench/csa_common.sh
write_coil "$DIR/coil.npz"
{
  echo "# Residual CSA on MPEG-7 and on unseen data (commit $C)"
  echo
  echo "\`bash bench/csa_residual_mpeg7.sh\`; every command below ran as shown ($(bash bench/machine.sh))."
  echo
  echo "## 1. Trained on classes 0-34, served on classes 35-69"
  run pycsa train --features "$M" --class-split first "${RECIPE[@]}" --out "$DIR/half.pt"
  for k in 128 1024; do
    run pycsa eval --features "$M" --class-split second --checkpoint "$DIR/half.pt" --csa-k $k \
        --method csa,alpha_qe+csa,dba+csa,alpha_qe_dba+csa,gnn+csa,k_reciprocal+csa,alpha_qe,dba,alpha_qe_dba,gnn,k_reciprocal
  done
  echo "## 2. Do no harm: trained on all of MPEG-7, served on the COIL-like set"
  run pycsa train --features "$M" "${RECIPE[@]}" --out "$DIR/all.pt"
  run pycsa train --features "$M" "${PAPER[@]}" --out "$DIR/all-paper.pt"
  for k in 128 1024; do
    run pycsa eval --features "$DIR/coil.npz" --checkpoint "$DIR/all.pt" --csa-k $k --method csa
    run pycsa eval --features "$DIR/coil.npz" --checkpoint "$DIR/all-paper.pt" --csa-k $k --method csa
  done
  echo "## 3. pycsa tune --train csa on classes 0-34, evaluated on classes 35-69"
  run pycsa tune --features "$M" --class-split first --method k_reciprocal,gnn,alpha_qe_dba,dba,csa,dba+csa,gnn+csa \
      --train csa --out "$DIR/tuned.json"
  run pycsa eval --features "$M" --class-split second --config "$DIR/tuned.json" --method all
} > "$OUT.md"
echo "wrote $OUT.md"
