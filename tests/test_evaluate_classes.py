"""class_map() and bullseye(): hand-computed cases, validation, and the MPEG-7 cosine baseline."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pycsa.evaluate import bullseye, class_map


def test_class_map_hand_computed():
    # relevant at positions 2 and 4
    assert class_map([[1, 0, 3, 2]], [0], [0, 1, 0, 1]) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert class_map([[0, 2, 1, 3]], [0], [0, 1, 0, 1]) == pytest.approx(1.0)


def test_class_map_exclude_self():
    labels = np.array([0, 0, 1, 1, 0, 2])
    ranks = np.array([
        [0, 2, 1, 4, 3, 5],  # self removed -> [2, 1, 4, 3, 5]: hits at 2, 3
        [4, 1, 0, 2, 3, 5],  # -> [4, 0, 2, 3, 5]: hits at 1, 2
        [2, 3, 0, 1, 4, 5],
        [5, 0, 1, 2, 4, 3],  # -> [5, 0, 1, 2, 4]: hit at 4
        [4, 0, 1, 2, 3, 5],
        [5, 0, 1, 2, 3, 4],  # label 2 has no other member: left out
    ])
    m, aps = class_map(ranks, labels, labels, exclude_self=True, return_aps=True)
    assert aps[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert aps[1] == pytest.approx(1.0)
    assert aps[2] == pytest.approx(1.0)
    assert aps[3] == pytest.approx(1 / 4)
    assert aps[4] == pytest.approx(1.0)
    assert math.isnan(aps[5])
    assert m == pytest.approx(np.mean(aps[:5]))
    # without exclusion the query finds itself and counts it
    _, raw = class_map(ranks, labels, labels, return_aps=True)
    assert raw[5] == pytest.approx(1.0)


def test_class_map_ties_follow_the_stable_order():
    sims = np.array([[1.0, 0.5, 0.5, 0.5]])
    ranks = np.argsort(-sims, axis=1, kind="stable")  # 0, 1, 2, 3
    assert class_map(ranks, [7], [7, 3, 3, 7]) == pytest.approx((1 + 2 / 4) / 2)
    assert class_map(torch.from_numpy(ranks), ["a"], ["a", "b", "b", "a"]) == pytest.approx(0.75)


def test_class_map_validation():
    with pytest.raises(ValueError, match="ranks"):
        class_map([[0, 1]], [0], [0, 1, 0])  # not a full ranking
    with pytest.raises(ValueError, match="ranks"):
        class_map([[0, 1, 1]], [0], [0, 1, 0])
    with pytest.raises(ValueError, match="ranks"):
        class_map([[0, 1, 3]], [0], [0, 1, 0])
    with pytest.raises(ValueError, match="q_labels"):
        class_map([[0, 1, 2]], [0, 1], [0, 1, 0])
    with pytest.raises(ValueError, match="q_labels"):
        class_map([[1, 0, 2]], [1], [0, 1, 0], exclude_self=True)  # query 0 is item 0, label 0
    with pytest.raises(ValueError, match="relevant"):
        class_map([[0, 1]], [5], [0, 1])


def test_bullseye_hand_computed():
    labels = np.array([0, 0, 1, 1])
    ranks = np.array([[0, 2, 1, 3], [1, 0, 2, 3], [2, 3, 0, 1], [3, 0, 1, 2]])
    # top 2 hold the query's class: 1/2, 2/2, 2/2, 1/2
    assert bullseye(ranks, labels, labels, top=2) == pytest.approx(0.75)
    assert bullseye(ranks, labels, labels, top=2, class_size=4) == pytest.approx(0.375)
    assert bullseye(ranks, labels, labels, top=40) == pytest.approx(1.0)  # short rankings: all of them
    assert bullseye(ranks[:, :1], labels, labels, top=2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="q_labels"):
        bullseye(ranks[:1], [9], labels, top=2)
    with pytest.raises(ValueError, match="top"):
        bullseye(ranks, labels, labels, top=0)


@pytest.fixture(scope="module")
def mpeg7(shared_data):
    d = np.load(shared_data / "mpeg7" / "mpeg7_mobilenetv2_imagenet_gap1280.npz")
    feats, labels = d["feats"], d["labels"]
    sims = feats @ feats.T
    ranks = np.argsort(-sims, axis=1, kind="stable")
    return ranks, labels


def test_mpeg7_cosine_bullseye(mpeg7):
    ranks, labels = mpeg7
    assert ranks.shape == (1400, 1400)
    b = bullseye(ranks, labels, labels, top=40)
    assert b == pytest.approx(0.7475, abs=0.003)  # measured 74.75%
    assert round(100 * b, 1) == 74.8  # SPEC §10
    assert bullseye(ranks, labels, labels, top=40, class_size=20) == b


def test_mpeg7_class_map_matches_loop(mpeg7):
    ranks, labels = mpeg7
    m, aps = class_map(ranks, labels, labels, exclude_self=True, return_aps=True)
    want = []
    for i in range(0, 1400, 7):
        hits, total = 0, 0.0
        pos = 0
        for j in ranks[i]:
            if j == i:
                continue
            pos += 1
            if labels[j] == labels[i]:
                hits += 1
                total += hits / pos
        want.append(total / 19)
    np.testing.assert_allclose(aps[::7], want, atol=1e-12)
    assert 0.3 < m < 1.0
