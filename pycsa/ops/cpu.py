"""Which instruction set the CPU kernels run with, and which path attention takes.

The C++ kernels' vectorised loops exist in three builds (generic x86-64, AVX2+FMA,
AVX-512) and run the best one this CPU has; ``PYCSA_CPU_CAPABILITY=default|avx2|avx512``
in the environment, or :func:`set_cpu_capability`, picks a lower one (to compare them).
The variants agree to rounding, not bit for bit: wider vectors sum in another order, and
the AVX2 and AVX-512 builds fuse multiply-adds. BLAS calls inside the kernels choose their own
code per CPU. Without the compiled extension there is nothing to choose: "reference".
"""
from __future__ import annotations

import torch

from . import _extension


def cpu_capability() -> str:
    """The instruction set in use: "default", "avx2", "avx512" (or "reference")."""
    return _extension._C.cpu_capability() if _extension.has_cpu_kernels() else "reference"


def supported_cpu_capabilities() -> list[str]:
    """The instruction sets this CPU can run, lowest first."""
    return list(_extension._C.supported_cpu_capabilities()) if _extension.has_cpu_kernels() else []


def set_cpu_capability(capability: str) -> None:
    """Run the kernels' loops with ``capability`` (one of :func:`supported_cpu_capabilities`)."""
    if not isinstance(capability, str):
        raise TypeError(f"capability: expected a string, got {type(capability).__name__}")
    if not _extension.has_cpu_kernels():
        raise RuntimeError("capability: the compiled CPU kernels are not available (pycsa runs its reference)")
    _extension._C.set_cpu_capability(capability)


def attention_cpu_path(q: torch.Tensor, lengths: torch.Tensor | None = None) -> str:
    """What :func:`pycsa.ops.attention` runs for these CPU inputs: "sdpa" (every sequence
    full: PyTorch's flash attention is faster there), "sdpa per sequence" (a ragged batch
    whose sequences average 32 tokens or more: SDPA on each sequence's valid part, which
    skips the padding), "pycsa" (the C++ kernel, for shorter sequences) or "reference"
    (float64, or no compiled kernels)."""
    if q.dtype == torch.float64 or q.numel() == 0:
        return "reference"
    if lengths is None:
        return "sdpa"
    if not _extension.has_cpu_kernels():
        return "reference"
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    return _extension._C.attention_cpu_path(q, lengths)
