# Two commands for a fresh machine: `make demo` and `make test`. Each sets up what
# it needs: a virtual environment in .venv, torch 2.13 (CPU build) when the
# environment has no torch, the other dependencies, and the pycsa build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pycsa-built
SOURCES := setup.py $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu)

.PHONY: install demo test test-cuda test-cuda-sanitize test-cuda-mutations bench cuda-check clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install numpy pybind11 ninja tqdm faiss-cpu scipy matplotlib pillow pytest pytest-benchmark hypothesis setuptools wheel
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/pycsa demo

test: install
	$(PY) -m pytest -q tests bench --benchmark-disable --durations=25

# The CUDA kernels executed on the CPU: csrc/cuda built on the emulator (csrc/emu) and
# tested through each op's host function (tests/test_cuda_emulated.py; `make test` runs it too).
# --capture=sys: a kernel that crashes the process is named on stderr, not swallowed.
test-cuda: install
	PYCSA_REQUIRE_EMU=1 $(PY) -m pytest -q --capture=sys tests/test_cuda_emulated.py

# The same on sanitizer builds: ThreadSanitizer (each CUDA thread a fiber; races between the
# threads of a block) and AddressSanitizer + UBSan (global out-of-bounds, misaligned loads).
# The sanitizer runtime must come first in the process, hence LD_PRELOAD (and libstdc++ with
# ASan, whose C++-exception interceptor needs it at start-up: python does not link it); one schedule
# suffices there (the plain run compares the schedules); one OpenMP thread, because TSan
# does not see libgomp's barriers and would report the CPU twins' parallel loops.
SAN_ENV = PYCSA_REQUIRE_EMU=1 CUEMU_SCHEDULES=random:7 OMP_NUM_THREADS=1
test-cuda-sanitize: install
	$(SAN_ENV) PYCSA_EMU_SANITIZE=thread TSAN_OPTIONS="halt_on_error=1 report_signal_unsafe=0" \
	  LD_PRELOAD=$$($(CXX) -print-file-name=libtsan.so) $(PY) -m pytest -q --capture=sys -p no:cacheprovider tests/test_cuda_emulated.py
	$(SAN_ENV) PYCSA_EMU_SANITIZE=address,undefined ASAN_OPTIONS="detect_leaks=0" \
	  LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libstdc++.so)" \
	  $(PY) -m pytest -q --capture=sys -p no:cacheprovider tests/test_cuda_emulated.py

# Classic CUDA bugs injected one at a time into a copy of csrc/ (csrc/emu/mutations.py):
# the emulated tests must fail on each, and pass on the unmutated copy.
test-cuda-mutations: install
	$(PY) csrc/emu/mutations.py

bench: install
	$(PY) -m pytest bench --benchmark-group-by=param:case --benchmark-columns=min,median,max,rounds

# Compiles the CUDA sources with nvcc (against the CPU torch headers when torch has no CUDA).
cuda-check: install
	cmake -S . -B build-cmake -G Ninja -DPython3_EXECUTABLE=$(abspath $(PY))
	cmake --build build-cmake -j

clean:
	rm -rf build build-cmake pycsa/_C*.so pycsa.egg-info
