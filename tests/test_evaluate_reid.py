"""reid(): hand-computed CMC/mAP, stable tie order, junk identities, validation, and a per-query loop."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from pycsa.evaluate import reid

G_PIDS = np.array([1, 2, 1, 3, 1])
G_CAMS = np.array([0, 1, 1, 1, 2])
Q_PIDS = np.array([1, 2, 3])
Q_CAMS = np.array([0, 1, 0])
DIST = np.array([
    [0.1, 0.2, 0.3, 0.3, 0.5],  # gallery 2 and 3 tie: 2 must come first
    [0.5, 0.1, 0.2, 0.3, 0.4],  # its only same-pid item shares its camera: left out
    [0.9, 0.8, 0.7, 0.1, 0.2],
])


def test_hand_computed():
    cmc, m = reid(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    # query 0: gallery 0 dropped (same pid, same camera) -> [1, 2, 3, 4], hits at 2 and 4
    # query 2: hit at 1
    assert m == pytest.approx(((1 / 2 + 2 / 4) / 2 + 1.0) / 2)
    assert cmc.shape == (50,)
    assert cmc[0] == pytest.approx(0.5)
    np.testing.assert_allclose(cmc[1:], 1.0)


def test_ties_keep_lower_gallery_index_first():
    # had gallery 3 been put before 2, query 0's AP would be (1/3 + 2/4) / 2
    cmc, m = reid(DIST[:1], Q_PIDS[:1], G_PIDS, Q_CAMS[:1], G_CAMS, max_rank=3)
    assert m == pytest.approx(0.5)
    np.testing.assert_allclose(cmc, [0.0, 1.0, 1.0])


def test_junk_pids_are_dropped():
    g_pids = np.array([-1, 1, 2])
    g_cams = np.array([5, 1, 1])
    dist = np.array([[0.0, 0.5, 0.6]])
    _, with_junk = reid(dist, [1], g_pids, [0], g_cams)
    cmc, without = reid(dist, [1], g_pids, [0], g_cams, junk_pids=(-1,))
    assert with_junk == pytest.approx(0.5)
    assert without == pytest.approx(1.0) and cmc[0] == 1.0


def test_torch_inputs():
    cmc, m = reid(torch.tensor(DIST), torch.tensor(Q_PIDS), torch.tensor(G_PIDS),
                  torch.tensor(Q_CAMS), torch.tensor(G_CAMS), max_rank=5)
    assert m == pytest.approx(0.75)
    assert isinstance(cmc, np.ndarray) and cmc.shape == (5,)


def test_validation():
    with pytest.raises(ValueError, match="no query"):
        reid(DIST[1:2], Q_PIDS[1:2], G_PIDS, Q_CAMS[1:2], G_CAMS)
    with pytest.raises(ValueError, match="distmat"):
        reid(DIST[0], Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    with pytest.raises(ValueError, match="q_pids"):
        reid(DIST, Q_PIDS[:2], G_PIDS, Q_CAMS, G_CAMS)
    with pytest.raises(ValueError, match="g_camids"):
        reid(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS[:4])
    with pytest.raises(ValueError, match="g_pids"):
        reid(DIST, Q_PIDS, G_PIDS[:, None], Q_CAMS, G_CAMS)
    with pytest.raises(ValueError, match="distmat"):
        reid(np.where(DIST > 0.8, np.nan, DIST), Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    with pytest.raises(ValueError, match="max_rank"):
        reid(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=0)


def _loop_reid(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    firsts, aps = [], []
    for i in range(dist.shape[0]):
        order = sorted(range(dist.shape[1]), key=lambda j: (dist[i, j], j))
        kept = [j for j in order if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        hits = [pos for pos, j in enumerate(kept) if g_pids[j] == q_pids[i]]
        if not hits:
            continue
        firsts.append(hits[0])
        aps.append(sum((h + 1) / (pos + 1) for h, pos in enumerate(hits)) / len(hits))
    cmc = [sum(f <= r for f in firsts) / len(firsts) for r in range(max_rank)]
    return np.array(cmc), sum(aps) / len(aps)


def test_matches_loop_on_random_data(monkeypatch):
    mod = importlib.import_module("pycsa.evaluate.reid")  # the package attribute is the function
    rng = np.random.default_rng(3)
    nq, ng = 30, 80
    q_pids, g_pids = rng.integers(0, 12, nq), rng.integers(0, 12, ng)
    q_cams, g_cams = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    dist = np.round(rng.random((nq, ng)), 1)  # many ties
    want_cmc, want_map = _loop_reid(dist, q_pids, g_pids, q_cams, g_cams, 20)
    cmc, m = reid(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    np.testing.assert_allclose(cmc, want_cmc, atol=1e-12)
    assert m == pytest.approx(want_map, abs=1e-12)
    monkeypatch.setattr(mod, "_CELLS_PER_CHUNK", 3 * ng)  # three queries per chunk
    cmc2, m2 = reid(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    np.testing.assert_array_equal(cmc2, cmc)
    assert m2 == m
