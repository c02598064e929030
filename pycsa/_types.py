"""Names for the kinds of argument the public API takes (annotations only)."""
from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]
"""Rows as items: a torch tensor or a numpy array; results come back in the same kind."""

PathLike = Union[str, "os.PathLike[str]"]
Device = Union[str, torch.device, None]
"""cpu, cuda, cuda:1, a torch.device, or None for the default (CUDA when present)."""

DType = Union[str, torch.dtype, None]

__all__ = ["ArrayLike", "PathLike", "Device", "DType"]
