#!/usr/bin/env bash
# CSA trained over k-reciprocal (issue #18): `pycsa train --stage k_reciprocal`, served last in k_reciprocal+csa.
# 1. Trained on MPEG-7 classes 0-34 (three seeds), served on classes 35-69 at K=128 and K=1,024 (700 images: the
#    whole list), against every training-free re-ranker at its defaults.
# 2. Do no harm: trained on all of MPEG-7, served on the COIL-like set (bench/diffusion_truncated_side_by_side.py's:
#    20 objects x 72 views, synthetic) after k-reciprocal, against k-reciprocal alone.
# Writes bench/results/<date>-csa-stage-mpeg7-<commit>.md. About 70 min on 2 CPU cores (estimated: ~35 before --dense).
#   bash bench/csa_stage_mpeg7.sh [path/to/mpeg7_mobilenetv2_imagenet_gap1280.npz]
set -euo pipefail
M=${1:-../shared/data/mpeg7/mpeg7_mobilenetv2_imagenet_gap1280.npz}
C=$(git rev-parse --short HEAD)
OUT=bench/results/$(date +%F)-csa-stage-mpeg7-$C
DIR=$(mktemp -d)
# pycsa.tune_learned.STAGE_RECIPES["k_reciprocal+csa"] (before commit ea12b80 these flags: --K 128,256,512 --L 128
# --dim 64 --depth 2 --heads 1 --epochs 3 --batch-size 16 --dropout 0 --drop-path 0 --optimizer adamw --lr 3e-4
# --warmup-epochs 0 --tau 1 --lam 0 --loss positive --residual --perturb 8 --stage k_reciprocal --standardize;
# now also --dense 2)
RECIPE=(--recipe k_reciprocal)
source bench/csa_common.sh
write_coil "$DIR/coil.npz"
{
  echo "# CSA over k-reciprocal on MPEG-7 and on unseen data (commit $C)"
  echo
  echo "\`bash bench/csa_stage_mpeg7.sh\`; every command below ran as shown ($(bash bench/machine.sh))."
  echo
  echo "## 1. Trained on classes 0-34, served on classes 35-69"
  for s in 0 1 2; do
    run pycsa train --features "$M" --class-split first "${RECIPE[@]}" --seed $s --out "$DIR/half$s.pt"
    for k in 128 1024; do
      run pycsa eval --features "$M" --class-split second --checkpoint "$DIR/half$s.pt" --csa-k $k \
          --method k_reciprocal+csa$([ $s = 0 ] && [ $k = 128 ] && echo ",alpha_qe,dba,alpha_dba,alpha_qe_dba,diffusion,superglobal,gnn,k_reciprocal" || echo ",k_reciprocal")
    done
  done
  echo "## 2. Do no harm: trained on all of MPEG-7, served on the COIL-like set after k-reciprocal"
  for s in 0 1 2; do
    run pycsa train --features "$M" "${RECIPE[@]}" --seed $s --out "$DIR/all$s.pt"
    for k in 128 1024; do
      run pycsa eval --features "$DIR/coil.npz" --checkpoint "$DIR/all$s.pt" --csa-k $k --method k_reciprocal+csa,k_reciprocal
    done
  done
} > "$OUT.md"
echo "wrote $OUT.md"
