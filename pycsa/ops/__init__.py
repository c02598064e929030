"""The Python face of pycsa's kernels: validation, device dispatch, torch.library registration.

Every op has a plain-PyTorch twin in :mod:`pycsa.ops.reference`.
"""
from . import _kreciprocal, reference  # _kreciprocal: fakes of the ops wrapped in pycsa.rerank
from ._extension import has_cpu_kernels, has_cuda_kernels
from .affinity import affinity
from .attention import attention
from .cpu import attention_cpu_path, cpu_capability, set_cpu_capability, supported_cpu_capabilities
from .gather_sum import weighted_gather_sum
from .graph import csr_add_transpose, csr_cross_dense, gnn_propagate, gnn_propagate_cross
from .topk import inner_product_topk

__all__ = ["affinity", "attention", "weighted_gather_sum", "csr_add_transpose", "gnn_propagate", "gnn_propagate_cross", "csr_cross_dense", "inner_product_topk", "reference", "has_cpu_kernels", "has_cuda_kernels",
           "cpu_capability", "supported_cpu_capabilities", "set_cpu_capability", "attention_cpu_path"]
