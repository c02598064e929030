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
#                                        # GNN / k-reciprocal at Market size (bench/reid_cuda.py)
# Writes logs and result tables under $OUT (the device tool brings $OUT back).
# COMMIT=<short hash> names the result files (the device copy has no .git).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/pycsa-gpu}
C=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export COMMIT=$C
mkdir -p "$OUT"
PY=python3
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
    PYCSA_WITH_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 \
      $PY -m pip install --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1 \
      || { tail -60 "$OUT/build.log"; exit 1; }
    $PY -c "import pycsa, torch; print('with_cuda', pycsa.ops.has_cuda_kernels(), torch.cuda.get_device_name())"
    ;;
  test)
    $PY -m pytest -q -p no:cacheprovider tests -k cuda 2>&1 | tee "$OUT/tests-cuda-$C.log" | tail -30
    ;;
  sanitize)
    SAN=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
    for tool in memcheck racecheck synccheck; do
      "$SAN" --tool $tool --error-exitcode 9 $PY -m pytest -q -x -p no:cacheprovider \
        tests/test_ops_attention.py tests/test_ops_affinity.py tests/test_ops_graph.py tests/test_kreciprocal.py \
        -k "cuda and (matches_float64 or masked or propagate or cross or add_transpose or baseline or features_route)" \
        > "$OUT/sanitizer-$tool-$C.log" 2>&1
      echo "$tool: rc=$? ($(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitizer-$tool-$C.log") clean summaries)"
      tail -3 "$OUT/sanitizer-$tool-$C.log"
    done
    ;;
  bench)
    $PY -m pytest -q -p no:cacheprovider bench/test_bench_affinity.py bench/test_bench_attention.py \
      bench/test_bench_rrt.py -k cuda --benchmark-json "$OUT/bench-cuda-$C.json" 2>&1 | tail -40
    $PY bench/attention_table.py "$OUT/bench-cuda-$C.json" > "$OUT/attention-cuda-$C.md"
    $PY bench/csa_latency.py --device cuda --out "$OUT/csa-latency-cuda-$C.md" 2>&1 | tail -12
    $PY bench/reid_cuda.py --out "$OUT/reid-cuda-$C.md" 2>&1 | tail -12
    ;;
  *) echo "usage: $0 wheels|build|test|sanitize|bench"; exit 2 ;;
esac
