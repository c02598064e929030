"""Loads the compiled kernels (pycsa._C) and says what is missing when they cannot serve."""
from __future__ import annotations

import warnings

import torch

try:
    from pycsa import _C  # registers the torch.ops.pycsa.* operators
    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # not built: CPU work falls back to the plain-PyTorch reference
    _C = None
    _IMPORT_ERROR = exc
    if "undefined symbol" in str(exc):  # what a torch other than the build's looks like
        _IMPORT_ERROR = ImportError(f"{exc}; pycsa was built against another torch than {torch.__version__}: "
                                    "rebuild it with `pip install --no-build-isolation -e .`")

BUILT_WITH_TORCH = getattr(_C, "torch_version", None)
"""The torch release whose headers pycsa._C was compiled against (None when not built)."""
if BUILT_WITH_TORCH is not None and BUILT_WITH_TORCH != torch.__version__.split("+")[0]:
    warnings.warn(f"pycsa: the compiled kernels were built against torch {BUILT_WITH_TORCH} but torch "
                  f"{torch.__version__} is running; if anything fails, rebuild with "
                  "`pip install --no-build-isolation -e .`", RuntimeWarning, stacklevel=2)

_warned = False


def has_cpu_kernels() -> bool:
    return _C is not None


def has_cuda_kernels() -> bool:
    return _C is not None and bool(_C.with_cuda)


def half_kernels(device: torch.device) -> bool:
    """Whether the CUDA kernels serve float16/bfloat16 on ``device``: they use the tensor
    cores of compute capability 8.0+ (A100, H100, RTX 30xx on); older GPUs (V100, T4)
    get the PyTorch path instead of an error."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def half_on_older_gpu(t: torch.Tensor) -> bool:
    """A float16/bfloat16 CUDA tensor on a GPU below compute capability 8.0: the op takes
    its PyTorch path there (the CUDA kernels' half path refuses such devices)."""
    return t.is_cuda and t.dtype in (torch.float16, torch.bfloat16) and not half_kernels(t.device)


def use_kernels(op: str, device: torch.device) -> bool:
    """True to run the compiled op on ``device``; False to run the reference (CPU only).

    Raises RuntimeError for a CUDA tensor when no CUDA kernels were built.
    """
    global _warned
    if device.type == "cuda":
        if has_cuda_kernels():
            return True
        why = (
            f"the extension failed to import ({_IMPORT_ERROR})"
            if _C is None
            else "the extension was built without CUDA (CPU-only torch or no nvcc at build time)"
        )
        raise RuntimeError(
            f"pycsa.ops.{op}: got CUDA tensors but {why}. Rebuild with a CUDA torch and nvcc: "
            "PYCSA_WITH_CUDA=1 pip install --no-build-isolation -e . (or move the inputs to the CPU)."
        )
    if device.type != "cpu":
        raise RuntimeError(f"pycsa.ops.{op}: device {device} is not supported (CPU and CUDA are)")
    if _C is None:
        if not _warned:
            warnings.warn(
                f"pycsa: compiled kernels unavailable ({_IMPORT_ERROR}); using the slower "
                "plain-PyTorch reference on CPU. Reinstall with `pip install --no-build-isolation -e .`.",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned = True
        return False
    return True


def register_non_differentiable(qualname: str) -> None:
    """Gives op ``qualname`` an autograd kernel whose results never require grad.

    Without one, torch's fallback marks float results as requiring grad and only warns
    (and drops the gradient) at backward; it also leaves autograd on inside the C++
    kernel, so a kernel calling an ``out=`` op fails on inputs that require grad.
    """
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*(output if isinstance(output, tuple) else (output,)))

    def backward(ctx, *grads):
        raise RuntimeError(f"{qualname} is not differentiable")  # unreachable: no result requires grad

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)
