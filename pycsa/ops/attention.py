"""Fused multi-head self-attention with per-sequence lengths (the CSA and RRT encoders)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._tensors import as_tensor, to_caller
from .._types import ArrayLike
from . import _extension, reference
from ._inputs import finite_number, indices

_KERNEL_TYPES = (torch.float32, torch.float16, torch.bfloat16)
_CUDA_HEAD_DIMS = (32, 64)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: ArrayLike | None = None, *,
              scale: float | None = None) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` for every (sequence, head), without a tokens x tokens matrix.

    ``q``, ``k``, ``v``: (batch, heads, tokens, head_dim), one dtype (float32, float16,
    bfloat16; float64 runs the plain-PyTorch reference), any strides. ``lengths``
    (batch,) gives each sequence's valid length: keys at or past it get no weight and
    output rows at or past it are zero, and the kernels do no work for them, so a
    ragged batch costs what its real tokens cost. What the padding holds (NaN or inf
    included) reaches neither the output nor the gradients. ``scale``, a finite number,
    defaults to 1/sqrt(head_dim).

    CPU: batches without padding go to PyTorch's SDPA (flash attention, as fast or faster
    there); ragged ones to our C++ kernel (blocked GEMMs and an online softmax, parallel over
    blocks of queries), which skips the padding SDPA would compute. Without ``lengths`` on
    the CPU the output is SDPA's own, in its (batch, tokens, heads, head_dim) memory layout:
    ``.transpose(1, 2).reshape(batch, tokens, -1)`` is then free, ``.view`` of other shapes
    may need ``.contiguous()`` first.
    CUDA: one kernel (tensor cores for the half types) for head_dim 32 and 64; other
    head dims, and the half types before compute capability 8.0, go to PyTorch's SDPA
    with a key mask. Differentiable: the
    backward recomputes the attention with PyTorch's SDPA (no fused backward of our own).
    """
    q, was_numpy = as_tensor(q, "q")
    k = as_tensor(k, "k")[0]
    v = as_tensor(v, "v")[0]
    lengths = _check(q, k, v, lengths)
    if scale is not None:
        # a NaN or inf scale turns every softmax into NaN (or, in float64, zeros) with no error
        scale = finite_number(scale, "scale")
    if q.dtype == torch.float64 or q.numel() == 0:
        out = reference.attention(q, k, v, lengths, scale)
    elif q.device.type == "cpu" and lengths is None:
        # No padding to skip: PyTorch's own flash attention is as fast or faster here, and
        # called directly its output keeps SDPA's (B, T, H, D) layout, so the usual
        # transpose back to tokens x features is free (pycsa.ops.attention_cpu_path).
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    elif q.is_cuda and (q.shape[-1] not in _CUDA_HEAD_DIMS or _extension.half_on_older_gpu(q)):
        out = sdpa_with_lengths(q, k, v, lengths, scale)
    elif _extension.use_kernels("attention", q.device):
        out = torch.ops.pycsa.attention(q, k, v, lengths, scale)
    else:
        out = reference.attention(q, k, v, lengths, scale)
    return to_caller(out, was_numpy)


def sdpa_with_lengths(q, k, v, lengths=None, scale=None):
    """The same maths through ``F.scaled_dot_product_attention`` with a padding mask.

    Used for the backward and as the baseline the benchmarks compare against.
    """
    if lengths is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    B, _, T, _ = q.shape
    valid = reference.key_mask(lengths, T, B, q.device)[:, None, :, None]
    # Padding may hold anything (NaN included): the mask alone would still multiply it by
    # zero weights, and 0·NaN poisons the output and every gradient, so it is zeroed first.
    q, k, v = (torch.where(valid, t, 0) for t in (q, k, v))
    # A length-0 sequence keeps key 0 so that its softmax is defined; its rows are zeroed.
    keys = reference.key_mask(lengths.clamp_min(1), T, B, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :], scale=scale)
    return torch.where(valid, out, 0)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths) -> torch.Tensor | None:
    if q.dim() != 4:
        raise ValueError(f"q: expected a 4-D (batch, heads, tokens, head_dim) array, got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name}: expected the shape of q {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} differs from q dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}: on {t.device} but q is on {q.device}")
    if q.dtype not in _KERNEL_TYPES + (torch.float64,):
        raise TypeError(f"q: expected float32, float16, bfloat16 or float64, got {q.dtype}")
    if q.shape[3] == 0:
        raise ValueError("q: head_dim (the last dimension) must be >= 1, got 0")
    if lengths is None:
        return None
    lengths = indices(as_tensor(lengths, "lengths")[0], "lengths")
    if lengths.shape != (q.shape[0],):
        raise ValueError(f"lengths: expected shape ({q.shape[0]},), one length per sequence, got {tuple(lengths.shape)}")
    if lengths.device != q.device:
        raise ValueError(f"lengths: on {lengths.device} but q is on {q.device}")
    # The range check reads lengths back to the host: that would break a compiled graph
    # and cannot happen while a CUDA graph is captured. Both then rely on the kernels:
    # the C++ one checks the range itself, the CUDA one clamps lengths to [0, tokens].
    skip = torch.compiler.is_compiling() or (q.is_cuda and torch.cuda.is_current_stream_capturing())
    if lengths.numel() and not skip:
        lo, hi = (int(x) for x in torch.aminmax(lengths))
        if lo < 0 or hi > q.shape[2]:
            raise ValueError(f"lengths: must lie in [0, {q.shape[2]}] (the token count), found [{lo}, {hi}]")
    return lengths


def _register_autograd_and_fake() -> None:
    @torch.library.register_fake("pycsa::attention")
    def _(q, k, v, lengths=None, scale=None):
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    def setup_context(ctx, inputs, output):
        q, k, v, lengths, scale = inputs
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, lengths)

    def backward(ctx, grad):
        # No fused backward yet: recompute through SDPA (itself memory-efficient) and
        # differentiate that.
        q, k, v, lengths = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) for t, need in zip((q, k, v), ctx.needs_input_grad[:3])]
            out = sdpa_with_lengths(*leaves, lengths, ctx.scale)
            wanted = [t for t in leaves if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad.to(out.dtype)))
        return (*(next(grads) if t.requires_grad else None for t in leaves), None, None)

    torch.library.register_autograd("pycsa::attention", backward, setup_context=setup_context)


if _extension.has_cpu_kernels():
    _register_autograd_and_fake()
