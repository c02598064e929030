import pytest
import torch


def _cuda_param():
    return pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))


@pytest.fixture(params=["cpu", _cuda_param()])
def device(request) -> str:
    return request.param


@pytest.fixture
def timed(device):
    """timed(fn): fn wrapped so a benchmark round covers the GPU work, not just its launch."""

    def wrap(fn):
        if device != "cuda":
            return fn

        def run():
            out = fn()
            torch.cuda.synchronize()
            return out

        return run

    return wrap
