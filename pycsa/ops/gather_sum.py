"""Weighted gather-sum: out[r] = Σ_j weight[r, j]·source[index[r, j]] (QE, DBA, SuperGlobal)."""
from __future__ import annotations

import torch

from .._tensors import as_tensor, to_caller
from .._types import ArrayLike
from . import _extension, reference
from ._inputs import indices, real_floating, same_device, tensor


def weighted_gather_sum(source: ArrayLike, index: ArrayLike, weight: ArrayLike) -> ArrayLike:
    """Sum of weighted source rows per output row, accumulated in float32 (float64 for float64).

    ``source`` and ``weight`` of real floating dtypes, ``index`` of an integer one. Accepts
    torch tensors or numpy arrays (the result is of the kind of ``source``).
    Differentiable with respect to ``source`` and ``weight``.
    CPU: a C++ kernel that never materialises the r x k x d gather. CUDA: the
    plain-PyTorch reference (a fused kernel is not written yet) in blocks of rows whose
    gather holds at most 2^26 values (256 MB in float32).
    """
    source, was_numpy = as_tensor(source, "source")
    index = tensor(index, "index")
    weight = tensor(weight, "weight")
    if source.dim() != 2:
        raise ValueError(f"source: expected a 2-D (n x d) array, got shape {tuple(source.shape)}")
    real_floating(source, "source")
    if index.dim() != 2:
        raise ValueError(f"index: expected a 2-D (r x k) array, got shape {tuple(index.shape)}")
    index = indices(index, "index")
    if weight.shape != index.shape:
        raise ValueError(f"weight: expected the shape of index {tuple(index.shape)}, got {tuple(weight.shape)}")
    real_floating(weight, "weight")
    same_device("source", source, index=index, weight=weight)
    if source.device.type == "cpu" and _extension.use_kernels("weighted_gather_sum", source.device):
        return to_caller(torch.ops.pycsa.weighted_gather_sum(source, index, weight), was_numpy)
    # Reading the range back breaks a compiled graph; there the gather's own bounds
    # check guards the reference instead (with a less specific message).
    if index.numel() and not torch.compiler.is_compiling():
        lo, hi = (int(v) for v in torch.aminmax(index))
        if lo < 0 or hi >= source.shape[0]:
            raise IndexError(f"index: must lie in [0, {source.shape[0]}) (source rows), found [{lo}, {hi}]")
    # in blocks of rows, so the r x k x d gather is never held whole (DBA over 1M x 2048
    # with k = 10 would be 82 GB); a block holds at most ~2^26 gathered values
    step = max(1, (1 << 26) // max(1, index.shape[1] * source.shape[1]))
    if index.shape[0] <= step:
        out = reference.weighted_gather_sum(source, index, weight)
    else:
        out = torch.cat([reference.weighted_gather_sum(source, index[s:s + step], weight[s:s + step])
                         for s in range(0, index.shape[0], step)])
    return to_caller(out, was_numpy)


def _register_autograd_and_fake() -> None:
    @torch.library.register_fake("pycsa::weighted_gather_sum")
    def _(source, index, weight):
        acc = torch.float64 if source.dtype == torch.float64 else torch.float32
        return source.new_empty((index.shape[0], source.shape[1]), dtype=acc)

    def setup_context(ctx, inputs, output):
        source, index, weight = inputs
        ctx.save_for_backward(source, index, weight)

    def backward(ctx, grad):
        # out[r] = Σ_j w[r, j]·s[i[r, j]] is linear in each: s[i[r, j]] collects w[r, j]·grad[r],
        # and w[r, j] gets <grad[r], s[i[r, j]]> (a gather the size of the forward's, plain PyTorch).
        source, index, weight = ctx.saved_tensors
        g_source = g_weight = None
        if ctx.needs_input_grad[0]:
            rows = (weight.to(grad.dtype).unsqueeze(-1) * grad.unsqueeze(1)).reshape(-1, grad.shape[1])
            g_source = torch.zeros_like(source).index_add_(0, index.reshape(-1), rows.to(source.dtype))
        if ctx.needs_input_grad[2]:
            g_weight = torch.einsum("rd,rkd->rk", grad, source[index].to(grad.dtype)).to(weight.dtype)
        return g_source, None, g_weight

    torch.library.register_autograd("pycsa::weighted_gather_sum", backward, setup_context=setup_context)


if _extension.has_cpu_kernels():
    _register_autograd_and_fake()
