# Shared by bench/csa_residual_mpeg7.sh and bench/csa_stage_mpeg7.sh (sourced; run from the repository root).

# run CMD...: the command and its output as a markdown code block, progress lines left out
run() { echo '```'; echo "\$ $*"; "$@" 2>/dev/null | tr '\r' '\n' | grep -v -E '^(csa: training|tune|.*: (offline|re-rank)):'; echo '```'; echo; }

# write_coil PATH [SPREAD]: bench/diffusion_truncated_side_by_side.py's COIL-like set (20 objects x 72 views,
# synthetic) as an .npz of feats and labels, the unseen data of the do-no-harm checks. SPREAD (default 1) scales
# each object's curve of views: 1 gives cosine mAP 58.77, 0.59375 gives 90.76 (as a real COIL-20's, about 91)
write_coil() {
  python - "$1" "${2:-1}" <<'EOF'
import sys
import numpy as np
sys.path.insert(0, "bench")
from diffusion_truncated_side_by_side import coil_like
X, y = coil_like(spread=float(sys.argv[2]))
np.savez(sys.argv[1], feats=X, labels=y)
EOF
}
