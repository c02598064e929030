"""Products that must stay exact in float32 whatever the user set globally.

``torch.set_float32_matmul_precision("high")`` (or ``allow_tf32``) makes float32 GEMMs
on Ampere and later GPUs run in TF32, a 10-bit mantissa: scores move by ~1e-3 and
near-ties reorder. pycsa's searches and re-rankers promise float32 results that agree
with the CPU (ties by the lower index), so their products go through :func:`matmul`,
which disables TF32 for that call only (a thread-local guard in the extension) and
leaves the user's setting untouched.
"""
from __future__ import annotations

import torch

from .ops import _extension


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``; for float32 on CUDA, never in TF32 (without the extension: plain matmul,
    though the CUDA paths need the extension anyway)."""
    if a.is_cuda and a.dtype == torch.float32 and _extension.has_cpu_kernels():
        return _extension._C.matmul_ieee(a, b)
    return a @ b
