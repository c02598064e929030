"""Shared fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# the checkout sits beside ../shared, which holds data too large to commit
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips when absent, fails instead when PYCSA_REQUIRE_DATA=1."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("PYCSA_REQUIRE_DATA") == "1":
            pytest.fail(f"PYCSA_REQUIRE_DATA=1 but the shared data directory {SHARED_DATA} is missing")
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def _cuda_param():
    import torch

    return pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    )


@pytest.fixture(params=["cpu", _cuda_param()])
def device(request) -> str:
    """Runs a test on the CPU and, where a GPU is present, on CUDA."""
    return request.param
