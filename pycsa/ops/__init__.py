"""The Python face of pycsa's kernels: validation, device dispatch, torch.library registration.

Every op has a plain-PyTorch twin in :mod:`pycsa.ops.reference`.
"""
from . import reference
from ._extension import has_cpu_kernels, has_cuda_kernels
from .affinity import affinity

__all__ = ["affinity", "reference", "has_cpu_kernels", "has_cuda_kernels"]
