#!/usr/bin/env bash
# pycsa tune on MPEG-7's first 35 classes, then every re-ranker on the other 35 classes at its
# defaults and with the tuned settings (every image a query against the others).
# Writes bench/results/<date>-tune-mpeg7-<commit>.md (+ the tuned JSON). ~2 min on 2 CPU cores.
#   bash bench/tune_mpeg7.sh [path/to/mpeg7_mobilenetv2_imagenet_gap1280.npz]
set -euo pipefail
M=${1:-../shared/data/mpeg7/mpeg7_mobilenetv2_imagenet_gap1280.npz}
C=$(git rev-parse --short HEAD)
OUT=bench/results/$(date +%F)-tune-mpeg7-$C
run() { echo '```'; echo "\$ $*"; "$@" 2>/dev/null; echo '```'; echo; }
{
  echo "# pycsa tune on MPEG-7: tuned on classes 0-34, evaluated on classes 35-69 (commit $C)"
  echo
  echo "\`bash bench/tune_mpeg7.sh\`; every command below ran as shown ($(bash bench/machine.sh))."
  echo
  echo "## Tuning on the first half of the classes"
  run pycsa tune --features "$M" --class-split first --out "$OUT.json"
  echo "## The other half at the defaults"
  run pycsa eval --features "$M" --class-split second --method "$(python -c "import json,sys; print(','.join(json.load(open(sys.argv[1]))['methods']))" "$OUT.json")"
  echo "## The other half with the tuned settings"
  run pycsa eval --features "$M" --class-split second --config "$OUT.json"
} > "$OUT.md"
echo "wrote $OUT.md"
