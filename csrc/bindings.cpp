// The pycsa._C module: the operator schemas (registered with the PyTorch
// dispatcher so autograd, torch.compile and device dispatch work), the CPU
// kernels, and a few build facts for Python.
#include <torch/extension.h>
#include <torch/library.h>

#include "affinity.h"

TORCH_LIBRARY(pycsa, m) {
  m.def("affinity(Tensor database, Tensor ranks, int num_anchors, Tensor? queries=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(pycsa, CPU, m) { m.impl("affinity", &pycsa::affinity_cpu); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pycsa C++/CUDA kernels; use them through pycsa.ops";
#ifdef PYCSA_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
