"""Sparse kNN-graph kernels against their dense references (pycsa.ops.reference)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pycsa
from pycsa.ops import reference


def _random_csr(n, max_per_row, seed, empty_rows=True):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0 if empty_rows else 1, max_per_row + 1, (n,), generator=g).clamp(max=n)
    cols = [torch.randperm(n, generator=g)[:c].sort().values for c in counts.tolist()]
    rowptr = torch.zeros(n + 1, dtype=torch.int64)
    rowptr[1:] = counts.cumsum(0)
    col = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.int64)
    val = torch.rand(int(rowptr[-1]), generator=g)
    return rowptr, col.long(), val


def _dense(csr):
    return reference.csr_to_dense(*(t.cpu() for t in csr))


def _to(device, *tensors):
    return [t.to(device) for t in tensors]


@pytest.mark.parametrize("n, per_row", [(1, 1), (2, 2), (13, 4), (97, 11), (301, 7)])
def test_add_transpose(n, per_row, device):
    A = _random_csr(n, per_row, seed=n)
    out = pycsa.ops.csr_add_transpose(*_to(device, *A))
    assert all(t.device.type == device for t in out)
    D = _dense(A)
    assert torch.allclose(_dense(out), D + D.T, atol=1e-6)
    rowptr, col, _ = (t.cpu() for t in out)
    for r in range(n):  # rows stay sorted and free of duplicates
        c = col[rowptr[r]:rowptr[r + 1]]
        assert torch.all(c[1:] > c[:-1])


@pytest.mark.parametrize("n, per_row, k", [(1, 1, 1), (13, 4, 3), (97, 11, 7), (301, 7, 5)])
def test_propagate(n, per_row, k, device):
    A = _random_csr(n, per_row, seed=3 * n)
    g = torch.Generator().manual_seed(n)
    nbr = torch.randint(0, n, (n, k), generator=g)
    w = torch.rand(n, k, generator=g)
    out = pycsa.ops.gnn_propagate(*_to(device, *A, nbr, w))
    if device != "cpu":  # the same CSR structure as the CPU kernel
        cpu = pycsa.ops.gnn_propagate(*A, nbr, w)
        assert torch.equal(out[0].cpu(), cpu[0]) and torch.equal(out[1].cpu(), cpu[1])
    want = reference.gnn_propagate(_dense(A).double(), nbr, w.double())
    assert torch.allclose(_dense(out).double(), want, atol=1e-6)


@pytest.mark.parametrize("n, split", [(1, 0), (1, 1), (2, 1), (50, 7), (211, 100)])
def test_cross_dense(n, split, device):
    A = _random_csr(n, 9, seed=n + split)
    out = pycsa.ops.csr_cross_dense(*_to(device, *A), split).cpu()
    want = reference.csr_cross_dense(_dense(A).double(), split)
    assert out.shape == (split, n - split)
    assert torch.allclose(out.double(), want, atol=1e-5)


@pytest.mark.parametrize("n, per_row, k, split", [(1, 1, 1, 0), (1, 1, 1, 1), (2, 2, 2, 1), (13, 4, 3, 5),
                                                  (97, 11, 7, 31), (301, 7, 5, 300)])
def test_propagate_cross_equals_propagate_then_cross(n, per_row, k, split, device):
    A = _random_csr(n, per_row, seed=5 * n + split)  # empty rows too: their u_j = 0 gives 0
    g = torch.Generator().manual_seed(n + k)
    nbr = torch.randint(0, n, (n, k), generator=g)
    w = torch.rand(n, k, generator=g)
    w[0] = 0  # a row whose mix is all zero
    out = pycsa.ops.gnn_propagate_cross(*_to(device, *A, nbr, w), split)
    assert out.device.type == device
    out = out.cpu()
    want = reference.gnn_propagate_cross(_dense(A).double(), nbr, w.double(), split)
    assert out.shape == (split, n - split) and out.dtype == torch.float32
    assert torch.allclose(out.double(), want, atol=1e-5)


def test_bad_graphs_raise(device):
    rowptr, col, val = _to(device, *_random_csr(10, 3, seed=0, empty_rows=False))
    with pytest.raises(IndexError, match="col"):
        pycsa.ops.csr_add_transpose(rowptr, col + 10, val)
    with pytest.raises(ValueError, match="rowptr"):
        pycsa.ops.csr_add_transpose(rowptr[:-1], col, val)
    with pytest.raises(ValueError, match="val"):
        pycsa.ops.csr_add_transpose(rowptr, col, val[:-1])
    with pytest.raises(TypeError, match="val"):
        pycsa.ops.csr_add_transpose(rowptr, col, val.double())
    with pytest.raises(IndexError, match="nbr"):
        pycsa.ops.gnn_propagate(rowptr, col, val, *_to(device, torch.full((10, 2), 10), torch.ones(10, 2)))
    with pytest.raises(ValueError, match="weight"):
        pycsa.ops.gnn_propagate(rowptr, col, val, *_to(device, torch.zeros(10, 2, dtype=torch.int64),
                                                       torch.ones(10, 3)))
    with pytest.raises(ValueError, match="split"):
        pycsa.ops.csr_cross_dense(rowptr, col, val, 11)
    nbr, w = _to(device, torch.zeros(10, 2, dtype=torch.int64), torch.ones(10, 2))
    with pytest.raises(ValueError, match="split"):
        pycsa.ops.gnn_propagate_cross(rowptr, col, val, nbr, w, -1)
    with pytest.raises(IndexError, match="nbr"):
        pycsa.ops.gnn_propagate_cross(rowptr, col, val, nbr - 1, w, 3)
    with pytest.raises(ValueError, match="weight"):
        pycsa.ops.gnn_propagate_cross(rowptr, col, val, nbr, w[:, :1], 3)


@pytest.mark.parametrize("cols", [[0, 0, 0], [0, 1, 1], [1, 1, 0]])
def test_rows_must_list_each_column_once_in_order(cols, device):
    # row 1 holds columns cols[1:]: a repeat would make the CUDA cross kernel's threads
    # race on one output, and the merges assume ascending rows
    rowptr, col, val = _to(device, torch.tensor([0, 1, 3]), torch.tensor(cols), torch.ones(3))
    for call in (lambda: pycsa.ops.csr_add_transpose(rowptr, col, val),
                 lambda: pycsa.ops.csr_cross_dense(rowptr, col, val, 1),
                 lambda: pycsa.ops.gnn_propagate(rowptr, col, val, *_to(device, torch.zeros(2, 1, dtype=torch.long),
                                                                        torch.ones(2, 1)))):
        with pytest.raises(ValueError, match="col: must be strictly ascending"):
            call()
    # the last entry of a row may exceed the first of the next
    ok = _to(device, torch.tensor([0, 2, 3]), torch.tensor([0, 1, 0]), torch.ones(3))
    assert pycsa.ops.csr_cross_dense(*ok, 1).tolist() == [[1.0]]


def test_tiny_rows_normalise_as_on_the_cpu(device):
    # a row norm of 1e-40 (subnormal): dividing gives 1, multiplying by 1/norm would overflow
    rowptr, col, val = _to(device, torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1e-20]))
    out = pycsa.ops.gnn_propagate(rowptr, col, val, *_to(device, torch.zeros(1, 1, dtype=torch.long),
                                                         torch.tensor([[1e-20]])))
    assert out[2].cpu().tolist() == [1.0]


def test_inputs_on_two_devices_raise():
    rowptr, col, val = _random_csr(10, 3, seed=0)
    with pytest.raises(ValueError, match="one device"):
        pycsa.ops.csr_add_transpose(rowptr, col, val.to("meta"))


def _layer_inputs(n=10, seed=0):
    A = _random_csr(n, 3, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return A, torch.randint(0, n, (n, 2), generator=g), torch.rand(n, 2, generator=g)


def test_numpy_in_numpy_out():
    A, nbr, w = _layer_inputs()
    arrays = [t.numpy() for t in (*A, nbr, w)]
    calls = [
        (pycsa.ops.csr_add_transpose, 3, ()),
        (pycsa.ops.gnn_propagate, 5, ()),
        (pycsa.ops.csr_cross_dense, 3, (4,)),
        (pycsa.ops.gnn_propagate_cross, 5, (np.int64(4),)),  # numpy ints are ints
    ]
    for op, n_arrays, extra in calls:
        got = op(*arrays[:n_arrays], *extra)
        want = op(*(torch.from_numpy(a) for a in arrays[:n_arrays]), *extra)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for g, t in zip(got, want):
            assert isinstance(g, np.ndarray)
            np.testing.assert_array_equal(g, t.numpy())


@pytest.mark.parametrize("split, exc", [(4.7, TypeError), (4.0, TypeError), (True, TypeError), ("4", TypeError),
                                        (-1, ValueError), (11, ValueError)])
def test_split_must_be_an_int_within_the_rows(split, exc):
    A, nbr, w = _layer_inputs()
    with pytest.raises(exc, match="split"):
        pycsa.ops.csr_cross_dense(*A, split)
    with pytest.raises(exc, match="split"):
        pycsa.ops.gnn_propagate_cross(*A, nbr, w, split)


def _bad_layouts():
    (rowptr, col, val), nbr, w = _layer_inputs()
    meta = torch.device("meta")
    return [
        (dict(rowptr=rowptr.reshape(1, -1)), ValueError, "rowptr"),
        (dict(rowptr=rowptr[:0]), ValueError, "rowptr"),
        (dict(rowptr=rowptr.int()), TypeError, "rowptr"),
        (dict(col=col.reshape(1, -1)), ValueError, "col"),
        (dict(col=col.float()), TypeError, "col"),
        (dict(val=val[:-1]), ValueError, "val"),
        (dict(val=val.double()), TypeError, "val"),
        (dict(val=val.tolist()), TypeError, "val"),
        (dict(col=col.to(meta)), ValueError, "col: on meta"),
        (dict(val=val.to(meta)), ValueError, "val: on meta"),
        (dict(nbr=nbr[:-1]), ValueError, "nbr"),
        (dict(nbr=nbr[:, 0]), ValueError, "nbr"),
        (dict(nbr=nbr.int()), TypeError, "nbr"),
        (dict(weight=w[:, :1]), ValueError, "weight"),
        (dict(weight=w.double()), TypeError, "weight"),
        (dict(nbr=nbr.to(meta)), ValueError, "nbr: on meta"),
        (dict(weight=w.to(meta)), ValueError, "weight: on meta"),
    ]


@pytest.mark.parametrize("change, exc, word", _bad_layouts())
def test_bad_layouts_name_the_argument(change, exc, word):
    (rowptr, col, val), nbr, w = _layer_inputs()
    args = dict(rowptr=rowptr, col=col, val=val, nbr=nbr, weight=w)
    args.update(change)
    csr = [args["rowptr"], args["col"], args["val"]]
    layer = csr + [args["nbr"], args["weight"]]
    calls = [lambda: pycsa.ops.gnn_propagate(*layer), lambda: pycsa.ops.gnn_propagate_cross(*layer, 4)]
    if not {"nbr", "weight"} & set(change):
        calls += [lambda: pycsa.ops.csr_add_transpose(*csr), lambda: pycsa.ops.csr_cross_dense(*csr, 4)]
    for call in calls:
        with pytest.raises(exc, match=f"^{word}"):
            call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_layer_inputs_raise(bad):
    # the kernels would write a row whose norm is NaN as an empty row, silently
    (rowptr, col, val), nbr, w = _layer_inputs()
    for name in ("val", "weight"):
        args = dict(rowptr=rowptr, col=col, val=val.clone(), nbr=nbr, weight=w.clone())
        args[name][1] = bad
        with pytest.raises(ValueError, match=f"{name}: contains NaN or inf"):
            pycsa.ops.gnn_propagate(**args)
        with pytest.raises(ValueError, match=f"{name}: contains NaN or inf"):
            pycsa.ops.gnn_propagate_cross(**args, split=4)
