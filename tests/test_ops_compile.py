"""Every pycsa op under torch.library.opcheck, and the public wrappers under torch.compile."""
from __future__ import annotations

import pytest
import torch

import pycsa
from pycsa.ops import reference

pytestmark = pytest.mark.skipif(not pycsa.ops.has_cpu_kernels(), reason="needs the compiled kernels")

OPS = ["affinity", "attention", "k_reciprocal", "k_reciprocal_features", "k_reciprocal_self", "weighted_gather_sum",
       "csr_add_transpose", "gnn_propagate", "csr_cross_dense", "gnn_propagate_cross", "inner_product_topk"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, grad=False):
    return torch.randn(*shape, generator=_gen(seed)).requires_grad_(grad)


def _csr(n=9, per_row=3, seed=0):
    """A random square CSR graph with sorted, distinct columns (some rows empty)."""
    g = _gen(seed)
    counts = torch.randint(0, per_row + 1, (n,), generator=g)
    col = torch.cat([torch.randperm(n, generator=g)[:c].sort().values for c in counts.tolist()])
    rowptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    return rowptr, col, torch.rand(col.numel(), generator=g)


def _neighbours(n=9, k=3, seed=1):
    g = _gen(seed)
    return torch.randint(0, n, (n, k), generator=g), torch.rand(n, k, generator=g)


def _op_args(name):
    """Small valid CPU inputs; the float ones require grad, so that opcheck also checks
    the autograd registration (and, for the differentiable ops, the gradients)."""
    if name == "affinity":
        ranks = torch.randint(0, 11, (2, 5), generator=_gen())
        return _randn(11, 6, grad=True), ranks, 3, _randn(2, 6, seed=1, grad=True)
    if name == "attention":
        q, k, v = (_randn(2, 2, 7, 8, seed=s, grad=True) for s in range(3))
        return q, k, v, torch.tensor([7, 4]), None
    if name == "k_reciprocal":
        Q, G = _randn(3, 4), _randn(6, 4, seed=1)
        dist = [torch.cdist(a, b).requires_grad_() for a, b in ((Q, G), (Q, Q), (G, G))]
        return (*dist, 3, 2, 0.3)
    if name == "k_reciprocal_features":
        return _randn(3, 4, grad=True), _randn(6, 4, seed=1, grad=True), 3, 2, 0.3
    if name == "k_reciprocal_self":
        return _randn(7, 4, grad=True), 3, 2, 0.3
    if name == "weighted_gather_sum":
        return _randn(9, 5, grad=True), torch.randint(0, 9, (4, 3), generator=_gen()), _randn(4, 3, seed=1, grad=True)
    rowptr, col, val = _csr()
    nbr, weight = _neighbours()
    val.requires_grad_()
    weight.requires_grad_()
    if name == "csr_add_transpose":
        return rowptr, col, val
    if name == "gnn_propagate":
        return rowptr, col, val, nbr, weight
    if name == "csr_cross_dense":
        return rowptr, col, val, 4
    if name == "gnn_propagate_cross":
        return rowptr, col, val, nbr, weight, 4
    if name == "inner_product_topk":
        return _randn(3, 5, grad=True), _randn(10, 5, seed=1, grad=True), 4
    raise KeyError(name)


def test_every_op_is_listed():
    registered = {name for name in dir(torch.ops.pycsa)
                  if isinstance(getattr(torch.ops.pycsa, name), torch._ops.OpOverloadPacket)}
    assert set(OPS) == registered


@pytest.mark.parametrize("name", OPS)
def test_opcheck(name):
    results = torch.library.opcheck(getattr(torch.ops.pycsa, name).default, _op_args(name))
    assert set(results.values()) == {"SUCCESS"} and "test_aot_dispatch_dynamic" in results


def _gnn_layers(rowptr, col, val, nbr, weight):
    """Two GNN layers as pycsa.rerank.gnn runs them: sizes of the middle graphs depend on data."""
    A = pycsa.ops.gnn_propagate(*pycsa.ops.csr_add_transpose(rowptr, col, val), nbr, weight)
    return pycsa.ops.gnn_propagate_cross(*pycsa.ops.csr_add_transpose(*A), nbr, weight, 4)


def _wrapper_cases():
    q, k, v = (_randn(2, 2, 7, 8, seed=s) for s in range(3))
    X, Q, ranks = _randn(11, 6), _randn(2, 6, seed=1), torch.randint(0, 11, (2, 5), generator=_gen())
    A, (nbr, weight) = _csr(), _neighbours()
    ops = pycsa.ops
    return {
        "affinity": (lambda x, r, qq: ops.affinity(x, r, 3, queries=qq), (X, ranks, Q)),
        "attention": (lambda a, b, c, n: ops.attention(a, b, c, n), (q, k, v, torch.tensor([7, 4]))),
        "attention_scaled": (lambda a, b, c: ops.attention(a, b, c, scale=0.3), (q, k, v)),
        "weighted_gather_sum": (ops.weighted_gather_sum, (X, torch.randint(0, 11, (4, 3), generator=_gen()),
                                                          _randn(4, 3, seed=2))),
        "csr_add_transpose": (ops.csr_add_transpose, A),
        "gnn_propagate": (ops.gnn_propagate, (*A, nbr, weight)),
        "csr_cross_dense": (lambda a, b, c: ops.csr_cross_dense(a, b, c, 4), A),
        "gnn_propagate_cross": (lambda *t: ops.gnn_propagate_cross(*t, 4), (*A, nbr, weight)),
        "gnn_layers": (_gnn_layers, (*A, nbr, weight)),
        "inner_product_topk": (lambda a, b: ops.inner_product_topk(a, b, 4), (Q, X)),
    }


@pytest.mark.parametrize("name", list(_wrapper_cases()))
def test_wrapper_compiles_fullgraph(name):
    fn, args = _wrapper_cases()[name]
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), fn(*args), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["affinity", "gnn_layers"])
def test_wrapper_compiles_with_inductor(name):
    fn, args = _wrapper_cases()[name]
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="inductor", fullgraph=True)
    torch.testing.assert_close(compiled(*args), fn(*args), rtol=1e-6, atol=1e-6)


def test_compiled_affinity_still_checks_finiteness():
    # in a graph the check is an assert: a RuntimeError with the eager ValueError's message
    compiled = torch.compile(lambda x, r: pycsa.ops.affinity(x, r, 2), backend="aot_eager", fullgraph=True)
    X = _randn(5, 3)
    X[1, 1] = float("nan")
    assert torch.equal(compiled(X, torch.tensor([[0, 2]])), pycsa.ops.affinity(X, torch.tensor([[0, 2]]), 2))
    with pytest.raises(RuntimeError, match="database/queries: .* NaN or inf"):
        compiled(X, torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="database/queries: .* NaN or inf"):
        pycsa.ops.affinity(X, torch.tensor([[1, 2]]), 2)


def test_compiled_attention_gradients_match_eager():
    q, k, v = (_randn(2, 2, 7, 8, seed=s, grad=True) for s in range(3))
    lengths = torch.tensor([7, 4])
    compiled = torch.compile(pycsa.ops.attention, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(q, k, v, lengths).sum(), (q, k, v))
    want = torch.autograd.grad(pycsa.ops.attention(q, k, v, lengths).sum(), (q, k, v))
    torch.testing.assert_close(got, want)


def test_graph_ops_results_do_not_require_grad():
    rowptr, col, val = _csr()
    nbr, weight = _neighbours()
    val.requires_grad_()
    outs = [*pycsa.ops.csr_add_transpose(rowptr, col, val), *pycsa.ops.gnn_propagate(rowptr, col, val, nbr, weight),
            pycsa.ops.csr_cross_dense(rowptr, col, val, 4),
            pycsa.ops.gnn_propagate_cross(rowptr, col, val, nbr, weight, 4)]
    assert not any(t.requires_grad for t in outs)


def test_weighted_gather_sum_gradients():
    source = _randn(9, 5, grad=True).double()
    weight = _randn(4, 3, seed=1).double().requires_grad_()
    index = torch.tensor([[0, 3, 3], [8, 1, 0], [2, 2, 2], [5, 6, 7]])
    assert torch.autograd.gradcheck(lambda s, w: torch.ops.pycsa.weighted_gather_sum(s, index, w), (source, weight))


def test_inner_product_topk_gradients_match_reference():
    Q, X = _randn(3, 5, grad=True), _randn(10, 5, seed=1, grad=True)
    scores, idx = pycsa.ops.inner_product_topk(Q, X, 4)
    g = torch.randn(scores.shape, generator=_gen(2))
    got = torch.autograd.grad(scores, (Q, X), g)
    ref_scores, ref_idx = reference.inner_product_topk(Q, X, 4)
    assert torch.equal(idx, ref_idx) and not idx.requires_grad
    torch.testing.assert_close(got, torch.autograd.grad(ref_scores, (Q, X), g))


def test_dynamic_shapes_and_split():
    # one graph for several sizes: the checks must not pin a shape or the split
    torch._dynamo.reset()
    cross = torch.compile(pycsa.ops.csr_cross_dense, backend="aot_eager", fullgraph=True, dynamic=True)
    attend = torch.compile(pycsa.ops.attention, backend="aot_eager", fullgraph=True, dynamic=True)
    for n, split in ((9, 2), (12, 5), (15, 15)):
        A = _csr(n, seed=n)
        assert torch.equal(cross(*A, split), pycsa.ops.csr_cross_dense(*A, split))
        q, k, v = (_randn(2, 2, n, 8, seed=s) for s in range(3))
        lengths = torch.tensor([n, split])
        torch.testing.assert_close(attend(q, k, v, lengths), pycsa.ops.attention(q, k, v, lengths))
