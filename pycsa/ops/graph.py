"""Sparse kNN-graph ops (SPEC §3) on CSR graphs: (rowptr int64, col int64, val float32).

Each has a dense twin in :mod:`pycsa.ops.reference`, a C++ kernel for CPU tensors and
a CUDA kernel for CUDA tensors (csrc/cuda/graph.cu; on CUDA the last GNN layer is
formed and then crossed, not fused).
"""
from __future__ import annotations

import torch

from . import _extension


def _require_kernels(op: str, *tensors: torch.Tensor) -> None:
    device = tensors[0].device
    for t in tensors[1:]:
        if t.device != device:
            raise ValueError(f"pycsa.ops.{op}: all inputs must be on one device, got {device} and {t.device}")
    if not _extension.use_kernels(op, device):
        raise RuntimeError(f"pycsa.ops.{op} needs the compiled extension (pycsa._C)")


def csr_add_transpose(rowptr, col, val):
    """A + Aᵀ of a square CSR matrix (duplicates summed); rows stay sorted."""
    _require_kernels("csr_add_transpose", rowptr, col, val)
    return torch.ops.pycsa.csr_add_transpose(rowptr, col, val)


def gnn_propagate(rowptr, col, val, nbr, weight):
    """One GNN layer: row i ← Σ_j weight[i, j]·A[nbr[i, j]], then L2-normalised.

    The output row i has at most Σ_j nnz(A[nbr[i, j]]) entries (bounded by
    k·max row nnz of A, and by n).
    """
    _require_kernels("gnn_propagate", rowptr, col, val, nbr, weight)
    return torch.ops.pycsa.gnn_propagate(rowptr, col, val, nbr, weight)


def csr_cross_dense(rowptr, col, val, split: int) -> torch.Tensor:
    """Dense A[:split]·A[split:]ᵀ (split x (n - split)): the query-gallery similarity."""
    _require_kernels("csr_cross_dense", rowptr, col, val)
    return torch.ops.pycsa.csr_cross_dense(rowptr, col, val, int(split))


def gnn_propagate_cross(rowptr, col, val, nbr, weight, split: int) -> torch.Tensor:
    """``csr_cross_dense(*gnn_propagate(rowptr, col, val, nbr, weight), split)`` in one pass.

    The last GNN layer's gallery rows (the largest sparse matrix of the method)
    are never formed: A'_i·A'_j = Σ_b weight[j, b]·(A·A'_iᵀ)[nbr[j, b]] / ||u_j||,
    so a query row costs one sparse A·A'_iᵀ (held as n dense floats) and k
    gathers per gallery item (2.6x fewer multiply-adds on Market-sized graphs).
    """
    _require_kernels("gnn_propagate_cross", rowptr, col, val, nbr, weight)
    return torch.ops.pycsa.gnn_propagate_cross(rowptr, col, val, nbr, weight, int(split))
