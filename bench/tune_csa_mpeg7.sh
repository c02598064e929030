#!/usr/bin/env bash
# pycsa tune --method all --train csa on MPEG-7's first 35 classes (every training-free re-ranker,
# CSA and the chains ending in it, CSA trained inside tune with pycsa.tune_learned's recipes), then
# classes 35-69 at the defaults (the same models at their default K) and with the tuned settings.
# Writes bench/results/<date>-tune-csa-mpeg7-<commit>.md. ~40 min on a 2-core AVX2 EPYC, 35 of them
# training: tune trains 10 models, 4 folds and the final one for each recipe.
#   bash bench/tune_csa_mpeg7.sh [path/to/mpeg7_mobilenetv2_imagenet_gap1280.npz]
set -euo pipefail
M=${1:-../shared/data/mpeg7/mpeg7_mobilenetv2_imagenet_gap1280.npz}
C=$(git rev-parse --short HEAD)
OUT=bench/results/$(date +%F)-tune-csa-mpeg7-$C
DIR=$(mktemp -d)
run() { echo '```'; echo "\$ $*"; "$@" 2>/dev/null; echo '```'; echo; }
{
  echo "# pycsa tune --train csa on MPEG-7: tuned on classes 0-34, evaluated on classes 35-69 (commit $C)"
  echo
  echo "\`bash bench/tune_csa_mpeg7.sh\`; every command below ran as shown ($(bash bench/machine.sh))."
  echo
  echo "## Tuning (and training) on the first half of the classes"
  run pycsa tune --features "$M" --class-split first --method all --train csa --out "$DIR/tuned.json"
  echo "## The other half at the defaults (CSA: the models tune wrote, at the default K)"
  run pycsa eval --features "$M" --class-split second --method all,csa,gnn+csa,alpha_qe_dba+csa \
      --checkpoint "csa=$DIR/tuned.csa.pt"
  run pycsa eval --features "$M" --class-split second --method k_reciprocal+csa \
      --checkpoint "csa=$DIR/tuned.k_reciprocal+csa.pt"
  echo "## The other half with the tuned settings"
  run pycsa eval --features "$M" --class-split second --config "$DIR/tuned.json" --method all
} > "$OUT.md"
echo "wrote $OUT.md"
