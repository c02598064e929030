#!/usr/bin/env bash
# Everything the CUDA side still owes, for one lent GPU machine (the device tool's `run`),
# in stages that each fit one call (<= 10 min); the build persists while the machine is warm.
#   bash bench/gpu_session.sh wheels     # HERE, not there: download the pure-Python test/bench dependencies
#                                        # for Python 3.12 into .gpu-wheels/ (carry it: carry=[".gpu-wheels"])
#   bash bench/gpu_session.sh build      # PYCSA_WITH_CUDA=1 editable install for sm_90 (no registry needed);
#                                        # installs what is missing from .gpu-wheels/ first
#   bash bench/gpu_session.sh test       # every CUDA test case (tests/ -k cuda)
#   bash bench/gpu_session.sh sanitize   # compute-sanitizer memcheck/racecheck/synccheck on the kernels
#   bash bench/gpu_session.sh bench      # affinity + attention + RRT benchmarks, CSA latency per K,
#                                        # GNN / k-reciprocal at Market size (bench/reid_cuda.py),
#                                        # SuperGlobal batched against the per-query loop
#   bash bench/gpu_session.sh all        # build, test, bench, then sanitize with the time that is left,
#                                        # in one call of at most BUDGET seconds (default 470); every
#                                        # log and table goes into one $OUT/gpu-<commit>.tgz, and a
#                                        # summary is printed last
# Writes logs and result tables under $OUT (the device tool brings $OUT back).
# The device image has numpy, tqdm, pytest, pytest-benchmark and ninja (seen 2026-11): the
# wheels stage is only for an image without them.
# COMMIT=<short hash> names the result files (the device copy has no .git).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/pycsa-gpu}
C=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export COMMIT=$C
mkdir -p "$OUT"
PY=${PY:-python3}
# a stage's step with a time cap, so that one hung step leaves the others their time; --foreground
# keeps it in the caller's process group, so that the "all" stage's own cap still reaches it
capped() { local cap=$1; shift; timeout --foreground -k 10 "$cap" "$@"; local rc=$?; [ $rc -eq 124 ] && echo "TIMED OUT after ${cap}s: $*"; return $rc; }
case "${1:-all}" in
  wheels)
    rm -rf .gpu-wheels
    $PY -m pip download -q -d .gpu-wheels --only-binary=:all: --python-version 3.12 \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      numpy tqdm pytest pytest-benchmark ninja && du -sh .gpu-wheels
    ;;
  build)
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
    # the device has torch but no registry: install the missing test/bench dependencies
    missing=$($PY -c "import importlib.util as u
print(' '.join(p for m, p in [('numpy', 'numpy'), ('tqdm', 'tqdm'), ('pytest', 'pytest'),
      ('pytest_benchmark', 'pytest-benchmark'), ('ninja', 'ninja')] if u.find_spec(m) is None))")
    if [ -n "$missing" ]; then
      echo "installing from .gpu-wheels: $missing"
      $PY -m pip install -q --no-index --find-links .gpu-wheels $missing \
        || { echo "missing $missing: run 'bash bench/gpu_session.sh wheels' here and carry .gpu-wheels"; exit 1; }
    fi
    command -v compute-sanitizer > /dev/null || echo "compute-sanitizer not on PATH; sanitize uses \$CUDA_HOME/bin"
    t0=$SECONDS
    # The image sets CXX=/opt/gcc/bin/g++, whose link put a private copy of parts of libstdc++
    # into _C (every C++ error message with a number then crashed: pycsa/_linkcheck.py); the
    # system compilers match the libstdc++ that Python loads. setup.py refuses such a build.
    export CC=${GPU_CC:-/usr/bin/gcc} CXX=${GPU_CXX:-/usr/bin/g++}
    PYCSA_WITH_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 \
      $PY -m pip install --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1 \
      || { tail -60 "$OUT/build.log"; exit 1; }
    echo "build: $((SECONDS - t0)) s"
    $PY -c "import pycsa, torch; print('with_cuda', pycsa.ops.has_cuda_kernels(), torch.cuda.get_device_name())"
    ;;
  test)
    # the emulated kernels are CI's (CPU) business; here every test with a CUDA case runs on the GPU
    tmo=$($PY -c "import pytest_timeout" 2>/dev/null && echo "--timeout=120")
    $PY -m pytest -q -rfE -p no:cacheprovider $tmo --durations=15 tests --ignore=tests/test_cuda_emulated.py -k cuda \
      2>&1 | tee "$OUT/tests-cuda-$C.log" | tail -40
    ;;
  sanitize)
    # memcheck on float32 and bfloat16 cases, racecheck and synccheck on the bfloat16 (tensor-core)
    # ones; each tool gets SAN_CAP seconds
    SAN=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
    KERNELS="masked or propagate or cross or add_transpose or baseline or features_route"
    for tool in memcheck racecheck synccheck; do
      dt="bfloat16"; [ $tool = memcheck ] && dt="bfloat16 or float32"
      capped "${SAN_CAP:-150}" "$SAN" --tool $tool --error-exitcode 9 $PY -m pytest -q -x -p no:cacheprovider \
        tests/test_ops_attention.py tests/test_ops_affinity.py tests/test_ops_graph.py tests/test_kreciprocal.py \
        -k "cuda and ((matches_float64 and ($dt)) or $KERNELS)" \
        > "$OUT/sanitizer-$tool-$C.log" 2>&1
      echo "$tool: rc=$? ($(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitizer-$tool-$C.log") clean summaries)"
      tail -3 "$OUT/sanitizer-$tool-$C.log"
    done
    ;;
  bench)
    capped 200 $PY -m pytest -q -p no:cacheprovider bench/test_bench_affinity.py bench/test_bench_attention.py \
      bench/test_bench_rrt.py -k cuda --benchmark-columns=min,median,max,rounds \
      --benchmark-json "$OUT/bench-cuda-$C.json" 2>&1 | tee "$OUT/bench-cuda-$C.log" | tail -50
    $PY bench/attention_table.py "$OUT/bench-cuda-$C.json" > "$OUT/attention-cuda-$C.md"
    capped 120 $PY bench/csa_latency.py --device cuda --out "$OUT/csa-latency-cuda-$C.md" 2>&1 | tail -12
    capped 120 $PY bench/reid_cuda.py --out "$OUT/reid-cuda-$C.md" 2>&1 | tail -14
    (cd bench && capped 120 $PY superglobal_side_by_side.py --device cuda --repeat 5 --plain-queries 2) \
      2>&1 | tee "$OUT/superglobal-cuda-$C.log"
    ;;
  all)
    START=$SECONDS; BUDGET=${BUDGET:-470}
    R="$OUT/r"; mkdir -p "$R"
    # the stages write into $R; one archive comes back (the tool returns at most 8 files)
    step() {  # step NAME CAP: run stage NAME for at most CAP s, or what is left of BUDGET
      local left=$((BUDGET - (SECONDS - START))) cap=$2
      [ "$cap" -gt "$left" ] && cap=$left
      if [ "$cap" -lt 30 ]; then echo "== $1: skipped, ${left}s left" | tee -a "$R/summary.txt"; return; fi
      echo "== $1 (cap ${cap}s, at $((SECONDS - START))s)"
      local t0=$SECONDS
      OUT="$R" SAN_CAP=$((cap / 3 - 5)) timeout -k 10 "$cap" bash "$0" "$1" 2>&1 | tee "$R/stage-$1.log"
      echo "== $1: rc ${PIPESTATUS[0]} in $((SECONDS - t0))s" | tee -a "$R/summary.txt"
    }
    step build 240
    if ! $PY -c "import pycsa, sys; sys.exit(0 if pycsa.ops.has_cuda_kernels() else 1)" 2>/dev/null; then
      echo "no CUDA build: stopping"; tail -40 "$R/build.log"
    else
      step test 150; step bench 260; step sanitize 400
    fi
    tar czf "$OUT/gpu-$C.tgz" -C "$R" . && rm -rf "$R"
    echo "== summary"; tar xzOf "$OUT/gpu-$C.tgz" ./summary.txt
    tar xzOf "$OUT/gpu-$C.tgz" "./tests-cuda-$C.log" 2>/dev/null | grep -E "passed|failed|error" | tail -3
    for f in "attention-cuda-$C.md" "csa-latency-cuda-$C.md" "reid-cuda-$C.md" "superglobal-cuda-$C.log"; do
      echo "== $f"; tar xzOf "$OUT/gpu-$C.tgz" "./$f" 2>/dev/null | head -40
    done
    ;;
  *) echo "usage: $0 wheels|build|test|sanitize|bench|all"; exit 2 ;;
esac
