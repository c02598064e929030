"""revisited(): hand-computed AP / mP@k, layouts, validation, and agreement with a per-query loop on the real ground truth."""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from pycsa.datasets import load_gnd
from pycsa.evaluate import revisited

# query 0: junk at the top, positives of every kind
Q_JUNK_TOP = {"easy": [1, 3], "hard": [4], "junk": [0]}
# query 1: no hard positive, so it is left out of the Hard protocol
Q_NO_HARD = {"easy": [2], "hard": [], "junk": [0]}
RANKS = np.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]])


def test_hand_computed_junk_at_top():
    r = revisited(RANKS[:1], [Q_JUNK_TOP])
    # easy: junk {0, 4} removed -> [1, 2, 3, 5]; positives at 0 and 2 (0-based)
    ap_easy = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2
    assert r["easy"]["mAP"] == pytest.approx(ap_easy)
    assert r["easy"]["mP@1"] == pytest.approx(1.0)
    assert r["easy"]["mP@5"] == pytest.approx(2 / 3)  # k clipped to the last positive, 3
    assert r["easy"]["mP@10"] == pytest.approx(2 / 3)
    # medium: junk {0} removed -> [1, 2, 3, 4, 5]; positives at 0, 2, 3
    ap_med = (1 + (1 / 2 + 2 / 3) / 2 + (2 / 3 + 3 / 4) / 2) / 3
    assert r["medium"]["mAP"] == pytest.approx(ap_med)
    assert r["medium"]["mP@1"] == pytest.approx(1.0)
    assert r["medium"]["mP@5"] == pytest.approx(3 / 4)
    # hard: junk {0, 1, 3} removed -> [2, 4, 5]; the positive at 1
    assert r["hard"]["mAP"] == pytest.approx((0 + 1 / 2) / 2)
    assert r["hard"]["mP@1"] == pytest.approx(0.0)
    assert r["hard"]["mP@5"] == pytest.approx(1 / 2)


def test_query_without_positives_is_left_out():
    r = revisited(RANKS, [Q_JUNK_TOP, Q_NO_HARD])
    assert math.isnan(r["hard"]["aps"][1])
    assert r["hard"]["mAP"] == pytest.approx(0.25)  # not (0.25 + 0) / 2
    assert r["hard"]["mP@5"] == pytest.approx(0.5)
    # query 1 easy: junk {0} gone -> [1, 2, ...]; its positive at 1
    assert r["easy"]["aps"][1] == pytest.approx(0.25)
    assert r["easy"]["mAP"] == pytest.approx((0.7916666666666666 + 0.25) / 2)
    assert r["easy"]["mP@1"] == pytest.approx((1 + 0) / 2)
    assert r["easy"]["mP@5"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_all_queries_without_positives_give_nan():
    r = revisited(RANKS[:1], [Q_NO_HARD])
    assert math.isnan(r["hard"]["mAP"]) and math.isnan(r["hard"]["mP@1"])


def test_single_positive_first_is_perfect():
    r = revisited([[5, 0, 1]], [{"easy": [5], "hard": [], "junk": []}], n_db=6)
    assert r["easy"]["mAP"] == 1.0
    assert r["medium"]["mP@10"] == 1.0  # k clipped to 1


def test_partial_ranking_missing_positives_count_as_never_retrieved():
    gnd = [{"easy": [3, 5], "hard": [], "junk": []}, {"easy": [4], "hard": [], "junk": []}]
    r = revisited([[3, 0, 1], [0, 1, 2]], gnd, n_db=6)
    assert r["medium"]["aps"][0] == pytest.approx(0.5)  # 1 of 2 positives, found first
    assert r["medium"]["aps"][1] == 0.0  # positive not in the list at all
    assert r["medium"]["mP@5"] == pytest.approx((1.0 + 0.0) / 2)


def test_positive_that_is_also_junk_counts_as_positive():
    r = revisited([[0, 1]], [{"easy": [1], "hard": [], "junk": [1]}])
    assert r["easy"]["mAP"] == pytest.approx(0.25)


def test_fractions_and_keys():
    r = revisited(RANKS, [Q_JUNK_TOP, Q_NO_HARD], kappas=(1, 3))
    assert set(r) == {"easy", "medium", "hard"}
    assert set(r["easy"]) == {"mAP", "mP@1", "mP@3", "aps"}
    for p in r.values():
        assert 0.0 <= p["mAP"] <= 1.0
        assert isinstance(p["mAP"], float) and p["aps"].shape == (2,)


def test_layouts_and_input_kinds_agree():
    rng = np.random.default_rng(0)
    n, q = 50, 7
    gnd = []
    for _ in range(q):
        perm = rng.permutation(n)
        gnd.append({"easy": perm[:4].tolist(), "hard": perm[4:7].tolist(), "junk": perm[7:10].tolist()})
    ranks = np.stack([rng.permutation(n) for _ in range(q)])
    a = revisited(ranks, gnd)
    b = revisited(ranks.T.copy(), gnd, ranks_layout="nq")
    c = revisited(torch.from_numpy(ranks).int(), {"gnd": gnd, "imlist": list(range(n))})
    d = revisited(ranks.astype(np.uint16), [{k: np.array(v) for k, v in e.items()} for e in gnd])
    for other in (b, c, d):
        for p in a:
            for key in a[p]:
                np.testing.assert_allclose(other[p][key], a[p][key], rtol=0, atol=1e-12)


def test_validation():
    gnd = [Q_JUNK_TOP, Q_NO_HARD]
    with pytest.raises(ValueError, match="gnd"):
        revisited(RANKS[:1], gnd)  # 1 ranking row, 2 queries
    with pytest.raises(ValueError, match="gnd"):
        revisited(RANKS, gnd, ranks_layout="nq")  # 6 columns, 2 queries
    with pytest.raises(ValueError, match="ranks"):
        revisited(RANKS[0], gnd)
    with pytest.raises(ValueError, match="ranks"):
        revisited([[0, 1, 6], [0, 1, 2]], {"gnd": gnd, "imlist": list(range(6))})
    with pytest.raises(ValueError, match="ranks"):
        revisited([[0, 1, 5], [0, 1, 2]], gnd, n_db=5)
    with pytest.raises(ValueError, match="ranks"):
        revisited([[0, -1], [0, 1]], gnd)
    with pytest.raises(ValueError, match="ranks"):
        revisited([[0, 0], [0, 1]], gnd)  # an item listed twice
    with pytest.raises(TypeError, match="ranks"):
        revisited(RANKS.astype(float), gnd)
    with pytest.raises(ValueError, match="ranks_layout"):
        revisited(RANKS, gnd, ranks_layout="qd")
    with pytest.raises(ValueError, match=r"gnd\[1\]"):
        revisited(RANKS, [Q_JUNK_TOP, {"easy": [1], "junk": []}])
    with pytest.raises(ValueError, match=r"gnd\[0\]"):
        revisited(RANKS, [{"easy": [9], "hard": [], "junk": []}, Q_NO_HARD], n_db=6)
    with pytest.raises(ValueError, match="gnd"):
        revisited(RANKS, "gnd")
    with pytest.raises(ValueError, match="kappas"):
        revisited(RANKS, gnd, kappas=(0, 5))


# --- an independent, deliberately plain re-implementation of revisitop's protocol ---

def _loop_ap_and_pk(ranking, positives, junk, kappas):
    positives, junk = set(positives), set(junk) - set(positives)
    found = []  # 0-based junk-free positions of retrieved positives
    pos = 0
    for item in ranking:
        if item in junk:
            continue
        if item in positives:
            found.append(pos)
        pos += 1
    ap = 0.0
    for j, r in enumerate(found):
        before = 1.0 if r == 0 else j / r
        after = (j + 1) / (r + 1)
        ap += (before + after) / 2 / len(positives)
    pks = []
    for k in kappas:
        if not found:
            pks.append(0.0)
            continue
        kk = min(found[-1] + 1, k)
        pks.append(sum(1 for r in found if r + 1 <= kk) / kk)
    return ap, pks


def _loop_revisited(ranks_qn, gnd, kappas):
    spec = {"easy": (["easy"], ["junk", "hard"]),
            "medium": (["easy", "hard"], ["junk"]),
            "hard": (["hard"], ["junk", "easy"])}
    out = {}
    for name, (pk, jk) in spec.items():
        aps, pks = [], []
        for i, e in enumerate(gnd):
            positives = [x for k in pk for x in e[k]]
            if not positives:
                aps.append(float("nan"))
                continue
            ap, p = _loop_ap_and_pk(list(ranks_qn[i]), positives, [x for k in jk for x in e[k]], kappas)
            aps.append(ap)
            pks.append(p)
        valid = [a for a in aps if not math.isnan(a)]
        res = {"mAP": sum(valid) / len(valid), "aps": np.array(aps)}
        for c, k in enumerate(kappas):
            res[f"mP@{k}"] = sum(p[c] for p in pks) / len(pks)
        out[name] = res
    return out


@pytest.mark.parametrize("name", ["gnd_roxford5k.pkl", "gnd_rparis6k.pkl"])
@pytest.mark.parametrize("partial", [None, 800])
def test_matches_loop_on_real_ground_truth(shared_data, name, partial):
    g = load_gnd(shared_data / "revisited" / name)
    n, q = len(g["imlist"]), len(g["gnd"])
    rng = np.random.default_rng(1234)
    ranks = np.stack([rng.permutation(n) for _ in range(q)])
    # pull each query's positives towards the top so AP is far from the random floor
    for i, e in enumerate(g["gnd"][: q // 2]):
        rel = np.array(e["easy"] + e["hard"] + e["junk"])
        rest = ranks[i][~np.isin(ranks[i], rel)]
        ranks[i] = np.concatenate([rng.permutation(rel), rest])[: n]
        inter = rng.permutation(min(n, 3 * len(rel)))
        ranks[i, : len(inter)] = ranks[i, inter]
    if partial:
        ranks = ranks[:, :partial]
    kappas = (1, 5, 10)
    got = revisited(ranks.T, g, kappas=kappas, ranks_layout="nq")
    want = _loop_revisited(ranks, g["gnd"], kappas)
    for p in want:
        np.testing.assert_allclose(got[p]["aps"], want[p]["aps"], rtol=0, atol=1e-6)
        for key in ("mAP", "mP@1", "mP@5", "mP@10"):
            assert abs(got[p][key] - want[p][key]) < 1e-6, (p, key)
    if partial is None:
        assert got["medium"]["mAP"] > 0.1  # the planted half lifts it far above chance (about 0.01)


def test_chunked_path_agrees(monkeypatch):
    mod = importlib.import_module("pycsa.evaluate.revisited")  # the package attribute is the function
    rng = np.random.default_rng(5)
    n, q = 40, 9
    gnd = [{"easy": rng.choice(n, 3, replace=False).tolist(), "hard": [], "junk": [int(rng.integers(n))]}
           for _ in range(q)]
    ranks = np.stack([rng.permutation(n) for _ in range(q)])
    whole = revisited(ranks, gnd)
    monkeypatch.setattr(mod, "_CELLS_PER_CHUNK", 2 * n)  # two queries per chunk
    chunked = revisited(ranks, gnd)
    np.testing.assert_array_equal(chunked["medium"]["aps"], whole["medium"]["aps"])
    assert chunked["easy"]["mP@5"] == whole["easy"]["mP@5"]
