"""αQE batched vs a per-query Python loop (small sizes; bench/qe_side_by_side.py runs the issue's size)."""
from __future__ import annotations

import numpy as np
import pytest

import pycsa
from qe_side_by_side import alpha_qe_loop


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5000, 128), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = X[:100].copy()
    sc, idx = pycsa.search(Q, X, 50)
    return Q, X, sc, idx


@pytest.mark.parametrize("impl", ["pycsa", "loop"])
def test_alpha_qe(benchmark, data, impl):
    Q, X, sc, idx = data
    if impl == "pycsa":
        r = pycsa.create("alpha_qe", k=10)
        out = benchmark(lambda: r.rerank(Q, X, pycsa.Ranking(idx, sc)).indices)
    else:
        out = benchmark(lambda: alpha_qe_loop(Q, X, idx, sc, 10, 50))
    assert out.shape == (100, 50)
