"""Hostile inputs to the ops, local descriptors, class evaluation and feature files: each is refused
with an error whose message starts with the argument's name (or the file's path), never a silent
NaN, a truncated index, a score above 1 or a library's unnamed error."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from pycsa import ops
from pycsa.cli import main
from pycsa.datasets import LocalDescriptors, load_retrieval_features
from pycsa.datasets.local import make_local_descriptors
from pycsa.evaluate import bullseye, class_map

BIG = 2**63 + 5  # a uint64 that int64 would read as a negative number


def _refused(kinds, name, fn, *args, **kwargs):
    with pytest.raises(kinds) as info:
        fn(*args, **kwargs)
    assert str(info.value).startswith(f"{name}:"), str(info.value)


# --------------------------------------------------------------------------- attention


def _qkv(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 2, 5, 8, generator=g, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")])
def test_attention_refuses_a_scale_that_is_not_finite(dtype, scale):
    _refused(ValueError, "scale", ops.attention, *_qkv(dtype), scale=scale)


@pytest.mark.parametrize("scale", ["abc", True, np.bool_(False), [0.5], torch.tensor(0.5)])
def test_attention_refuses_a_scale_that_is_not_a_number(scale):
    _refused((TypeError, ValueError), "scale", ops.attention, *_qkv(), scale=scale)


def test_attention_takes_numeric_scales():
    q, k, v = _qkv()
    want = ops.attention(q, k, v, scale=0.5)
    assert torch.equal(ops.attention(q, k, v, scale=np.float32(0.5)), want)
    assert torch.isfinite(ops.attention(q, k, v, scale=0)).all()


def test_attention_lengths_of_unsigned_dtypes():
    q, k, v = _qkv()
    want = ops.attention(q, k, v, torch.tensor([3, 5]))
    for dtype in (torch.uint8, torch.uint32, torch.uint64):  # aminmax has no uint32/uint64 kernel
        assert torch.equal(ops.attention(q, k, v, torch.tensor([3, 5], dtype=dtype)), want)
    _refused(IndexError, "lengths", ops.attention, q, k, v, np.array([3, BIG], dtype=np.uint64))


# --------------------------------------------------------------------------- graph ops


def _graph():
    rowptr = torch.tensor([0, 2, 3, 4])
    col = torch.tensor([0, 1, 2, 0])
    val = torch.tensor([1.0, 0.5, 2.0, 0.25])
    return rowptr, col, val


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_every_graph_op_refuses_nan_or_inf_values(bad):
    rowptr, col, val = _graph()
    val[1] = bad
    nbr, weight = torch.tensor([[0, 1], [1, 2], [2, 0]]), torch.ones(3, 2)
    _refused(ValueError, "val", ops.csr_add_transpose, rowptr, col, val)
    _refused(ValueError, "val", ops.csr_cross_dense, rowptr, col, val, 1)
    _refused(ValueError, "val", ops.gnn_propagate, rowptr, col, val, nbr, weight)
    _refused(ValueError, "val", ops.gnn_propagate_cross, rowptr, col, val, nbr, weight, 1)
    _refused(ValueError, "val", ops.csr_add_transpose, *(t.numpy() for t in (rowptr, col, val)))


# --------------------------------------------------------------------------- weighted_gather_sum


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool, torch.int32, torch.int64])
def test_gather_sum_weights_must_be_real_floats(dtype):
    source, index = torch.rand(5, 3), torch.tensor([[0, 1], [2, 4]])
    _refused(TypeError, "weight", ops.weighted_gather_sum, source, index, torch.ones(2, 2, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool, torch.int64])
def test_gather_sum_source_must_be_real_floats(dtype):
    source, index = torch.ones(5, 3, dtype=dtype), torch.tensor([[0, 1], [2, 4]])
    _refused(TypeError, "source", ops.weighted_gather_sum, source, index, torch.ones(2, 2))


def test_gather_sum_takes_every_real_float_weight():
    source, index = torch.rand(5, 3), torch.tensor([[0, 1], [2, 4]])
    want = ops.weighted_gather_sum(source, index, torch.full((2, 2), 0.5))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert torch.allclose(ops.weighted_gather_sum(source, index, torch.full((2, 2), 0.5, dtype=dtype)), want)


def test_gather_sum_uint64_indices():
    source, weight = torch.rand(5, 3), torch.ones(1, 2)
    want = ops.weighted_gather_sum(source, torch.tensor([[0, 4]]), weight)
    assert torch.equal(ops.weighted_gather_sum(source, torch.tensor([[0, 4]], dtype=torch.uint64), weight), want)
    with pytest.raises(IndexError, match=re.escape("index: holds uint64 values >= 2**63")):
        ops.weighted_gather_sum(source.numpy(), np.array([[0, BIG]], dtype=np.uint64), weight.numpy())


# --------------------------------------------------------------------------- affinity


@pytest.mark.parametrize("flag", ["no", "False", 0, 1, None, 1.0])
def test_affinity_check_finite_must_be_a_bool(flag):
    db, ranks = torch.rand(6, 4), torch.tensor([[1, 0, 2]])
    _refused((TypeError, ValueError), "check_finite", ops.affinity, db, ranks, 2, check_finite=flag)


def test_affinity_check_finite_takes_bools():
    db, ranks = torch.rand(6, 4), torch.tensor([[1, 0, 2]])
    db[1, 0] = float("nan")
    _refused(ValueError, "database/queries", ops.affinity, db, ranks, 2, check_finite=np.bool_(True))
    assert ops.affinity(db, ranks, 2, check_finite=False).isnan().any()


def test_affinity_uint64_ranks():
    db = np.random.default_rng(0).random((6, 4), dtype=np.float32)
    want = ops.affinity(db, np.array([[1, 0, 5]]), 2)
    np.testing.assert_array_equal(ops.affinity(db, np.array([[1, 0, 5]], dtype=np.uint64), 2), want)
    with pytest.raises(IndexError, match=re.escape("ranks: holds uint64 values >= 2**63")):
        ops.affinity(db, np.array([[1, 0, BIG]], dtype=np.uint64), 2)


# --------------------------------------------------------------------------- local descriptors


def _store():
    return LocalDescriptors(torch.rand(6, 4), torch.tensor([0, 2, 2, 6]), torch.zeros(6, dtype=torch.long))


def test_local_descriptors_refuse_float_offsets_and_scales():
    s = _store()
    _refused(TypeError, "offsets", LocalDescriptors, s.descriptors, torch.tensor([0.0, 2.5, 2.5, 6.0]), s.scales)
    _refused(TypeError, "offsets", LocalDescriptors, s.descriptors, np.array([0.0, 2.0, 2.0, 6.0]), s.scales)
    _refused(TypeError, "scales", LocalDescriptors, s.descriptors, s.offsets, torch.full((6,), 0.5))
    assert LocalDescriptors(s.descriptors, [0, 2, 2, 6], np.zeros(6, np.int32)).num_images == 3


@pytest.mark.parametrize("images, kind", [
    ([0.5], TypeError), (np.array([1.0]), TypeError), ([True, False], TypeError),
    ([-1], IndexError), ([3], IndexError), ([0, 7], IndexError), ([[0, 1]], ValueError),
])
def test_local_descriptors_subset_refuses_what_is_not_an_image(images, kind):
    _refused(kind, "images", _store().subset, images)


def test_local_descriptors_subset_of_valid_images():
    s = _store()
    sub = s.subset(np.array([2, 0], dtype=np.int32))
    assert sub.counts.tolist() == [4, 2] and torch.equal(sub.descriptors[:4], s.descriptors[2:])
    assert s.subset([]).num_images == 0


@pytest.mark.parametrize("kwargs, name", [
    (dict(min_count=5, max_count=2), "max_count"), (dict(min_count=-1), "min_count"),
    (dict(min_count=2.5), "min_count"), (dict(dim=0), "dim"), (dict(parts_per_class=0), "parts_per_class"),
    (dict(num_scales=0), "num_scales"), (dict(shared=1.5), "shared"), (dict(noise=float("nan")), "noise"),
])
def test_make_local_descriptors_names_bad_settings(kwargs, name):
    _refused((TypeError, ValueError), name, make_local_descriptors, [0, 0, 1], **kwargs)


def test_make_local_descriptors_takes_equal_counts():
    assert make_local_descriptors([0, 1, -1], dim=8, min_count=3, max_count=3).counts.tolist() == [3, 3, 3]


# --------------------------------------------------------------------------- class evaluation

LABELS = np.array([0, 0, 1, 1])
RANKS = np.array([[0, 2, 1, 3], [1, 0, 2, 3], [2, 3, 0, 1], [3, 0, 1, 2]])


def test_bullseye_refuses_a_class_size_below_what_a_query_can_find():
    # each class has 2 items within the top 2: a class size of 1 would score 6 / 4 = 1.5
    _refused(ValueError, "class_size", bullseye, RANKS, LABELS, LABELS, top=2, class_size=1)


def test_bullseye_class_size_bound_follows_the_ranking_depth():
    # only the first rank is counted, so at most 1 item of a class can be found
    assert bullseye(RANKS[:, :1], LABELS, LABELS, top=2, class_size=1) == pytest.approx(1.0)
    assert bullseye(RANKS, LABELS, LABELS, top=1, class_size=1) == pytest.approx(1.0)
    assert bullseye(RANKS, LABELS, LABELS, top=2, class_size=2) == pytest.approx(0.75)


def test_all_distractor_labels_are_refused_not_scored_100():
    labels = -np.ones(4, dtype=np.int64)
    _refused(ValueError, "q_labels", class_map, RANKS, labels, labels)
    _refused(ValueError, "q_labels", class_map, RANKS, labels, labels, exclude_self=True)
    _refused(ValueError, "q_labels", bullseye, RANKS, labels, labels)
    with pytest.raises(ValueError, match="q_labels: every query is a distractor"):
        class_map(RANKS, labels.astype(float), labels)


def test_distractors_are_no_class():
    labels = np.array([-1, 0, -1, 0])
    ranks = np.array([[0, 2, 1, 3], [0, 1, 2, 3]])
    m, aps = class_map(ranks, labels[:2], labels, return_aps=True)
    assert math.isnan(aps[0])  # the distractor query: no relevant item
    assert aps[1] == pytest.approx((1 / 2 + 2 / 4) / 2) == m  # the other -1 at rank 1 is not relevant
    assert bullseye(ranks, labels[:2], labels, top=2) == pytest.approx(0.5)  # the distractor query left out


def _labelled_file(path, labels):
    feats = np.random.default_rng(0).standard_normal((len(labels), 8)).astype(np.float32)
    np.savez(path, feats=feats, labels=np.asarray(labels))
    return str(path)


def test_cli_refuses_labels_that_are_all_distractors(tmp_path, monkeypatch):
    monkeypatch.setenv("PYCSA_TRACEBACK", "1")  # the exception itself, not the one-line report
    path = _labelled_file(tmp_path / "d.npz", [-1] * 12)
    out = tmp_path / "m.pt"
    for argv in (["eval", "--features", path, "--method", "alpha_qe"],
                 ["eval", "--features", path, "--labels", "--method", "alpha_qe"],
                 ["train", "--features", path, "--out", str(out), "--epochs", "1"],
                 ["train", "--method", "rrt", "--features", path, "--locals", "unread.npz", "--out", str(out)]):
        with pytest.raises(ValueError, match=f"^--features: {re.escape(path)}: every label is negative"):
            main(argv)
    assert not out.exists()
    good = _labelled_file(tmp_path / "g.npz", [0, 1] * 6)
    with pytest.raises(ValueError, match=f"^--val-features: {re.escape(path)}: every label is negative"):
        main(["train", "--features", good, "--val-features", path, "--out", str(out), "--epochs", "1"])
    assert not out.exists()


# --------------------------------------------------------------------------- feature files


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_feature_files_are_refused_by_name(tmp_path, layout):
    dense = torch.eye(6)
    sparse = dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()
    bare, in_dict = tmp_path / "bare.pt", tmp_path / "dict.pt"
    torch.save(sparse, bare)
    torch.save({"feats": sparse, "labels": torch.arange(6)}, in_dict)
    with pytest.raises(ValueError, match=f"^{re.escape(str(bare))}: holds a sparse tensor.*save a dense one"):
        load_retrieval_features(bare)
    with pytest.raises(ValueError, match=f"^{re.escape(str(in_dict))}\\['feats'\\]: holds a sparse tensor"):
        load_retrieval_features(in_dict)


def test_float8_feature_files_load(tmp_path):
    path = tmp_path / "f8.pt"
    torch.save(torch.eye(6).to(torch.float8_e4m3fn), path)
    np.testing.assert_array_equal(load_retrieval_features(path).database, np.eye(6, dtype=np.float32))


def test_compiled_attention_checks_scale_and_takes_new_values():
    q, k, v = _qkv()
    f = torch.compile(lambda q, k, v, s: ops.attention(q, k, v, scale=s))
    # the second value makes the scale a symbol in the recompiled graph, which math.isfinite cannot read
    for s in (0.3, 0.4):
        assert torch.allclose(f(q, k, v, s), ops.attention(q, k, v, scale=s), atol=1e-6)
    for s in (float("nan"), float("inf")):
        _refused(ValueError, "scale", f, q, k, v, s)
