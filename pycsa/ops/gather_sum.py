"""Weighted gather-sum: out[r] = Σ_j weight[r, j]·source[index[r, j]] (QE, DBA, SuperGlobal)."""
from __future__ import annotations

import torch

from . import _extension, reference


def weighted_gather_sum(source: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Sum of weighted source rows per output row, accumulated in float32 (float64 for float64).

    CPU: a C++ kernel that never materialises the r x k x d gather. CUDA: the
    plain-PyTorch reference (a fused kernel is not written yet) in blocks of rows whose
    gather holds at most 2^26 values (256 MB in float32).
    """
    if source.dim() != 2:
        raise ValueError(f"source: expected a 2-D (n x d) tensor, got shape {tuple(source.shape)}")
    if index.dim() != 2 or tuple(weight.shape) != tuple(index.shape):
        raise ValueError(f"index/weight: expected two r x k tensors, got {tuple(index.shape)} and {tuple(weight.shape)}")
    if index.is_floating_point():
        raise TypeError(f"index: expected integers, got {index.dtype}")
    if not (source.device == index.device == weight.device):
        raise ValueError("index/weight: must be on the source's device")
    index = index.long()
    if source.device.type == "cpu" and _extension.use_kernels("weighted_gather_sum", source.device):
        return torch.ops.pycsa.weighted_gather_sum(source, index, weight)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= source.shape[0]):
        raise IndexError(f"index: must lie in [0, {source.shape[0]})")
    # in blocks of rows, so the r x k x d gather is never held whole (DBA over 1M x 2048
    # with k = 10 would be 82 GB); a block holds at most ~2^26 gathered values
    step = max(1, (1 << 26) // max(1, index.shape[1] * source.shape[1]))
    if index.shape[0] <= step:
        return reference.weighted_gather_sum(source, index, weight)
    return torch.cat([reference.weighted_gather_sum(source, index[s:s + step], weight[s:s + step])
                      for s in range(0, index.shape[0], step)])
