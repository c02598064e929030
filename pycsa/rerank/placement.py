"""Putting a learned re-ranker's model where the data is, without changing the original."""
from __future__ import annotations

import copy

import torch

from ..ops._extension import half_kernels


def placed(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model on ``device`` in ``dtype``, as a copy when that differs from where it is:
    ``Module.to`` works in place, and a round trip through bfloat16 would round the weights."""
    p = next(model.parameters())
    if p.device == device and p.dtype == dtype:
        return model.eval()
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()


def serving_dtype(device: torch.device) -> torch.dtype:
    """The default precision of a learned re-ranker: bfloat16 on GPUs whose tensor cores
    the half-precision kernels use (compute capability 8.0+), float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" and half_kernels(device) else torch.float32


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def serving_dtype_arg(value, name: str = "dtype") -> torch.dtype | None:
    """A learned re-ranker's ``dtype``: None, a floating torch dtype the model's kernels run, or
    its name. Checked when the re-ranker is built: torch would refuse a numpy type or a string
    only at the first rerank."""
    if value is None or (isinstance(value, torch.dtype) and value in _DTYPES.values()):
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in _DTYPES:
        return _DTYPES[value.removeprefix("torch.")]
    raise TypeError(f"{name}: expected None or torch.{', torch.'.join(_DTYPES)} (or its name), "
                    f"got {value!r} ({type(value).__name__})")
