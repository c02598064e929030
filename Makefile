# Two commands for a fresh machine: `make demo` and `make test`. Each sets up what
# it needs: a virtual environment in .venv, torch 2.13 (CPU build) when the
# environment has no torch, the other dependencies, and the pycsa build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pycsa-built
SOURCES := setup.py $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu)

.PHONY: install demo test bench cuda-check clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install numpy pybind11 ninja tqdm faiss-cpu scipy matplotlib pytest pytest-benchmark setuptools wheel
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/pycsa demo

test: install
	$(PY) -m pytest -q tests bench --benchmark-disable

bench: install
	$(PY) -m pytest bench --benchmark-group-by=param:case --benchmark-columns=min,median,max,rounds

# Compiles the CUDA sources with nvcc (against the CPU torch headers when torch has no CUDA).
cuda-check: install
	cmake -S . -B build-cmake -G Ninja -DPython3_EXECUTABLE=$(abspath $(PY))
	cmake --build build-cmake -j

clean:
	rm -rf build build-cmake pycsa/_C*.so pycsa.egg-info
