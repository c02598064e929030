"""Putting a learned re-ranker's model where the data is, without changing the original."""
from __future__ import annotations

import copy

import torch


def placed(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model on ``device`` in ``dtype``, as a copy when that differs from where it is:
    ``Module.to`` works in place, and a round trip through bfloat16 would round the weights."""
    p = next(model.parameters())
    if p.device == device and p.dtype == dtype:
        return model.eval()
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()
