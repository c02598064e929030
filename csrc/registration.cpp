// Operator schemas and CPU kernels, registered with the PyTorch dispatcher.
// Kept apart from the pybind11 module so C++ users (CMake build, libpycsa)
// get the ops without Python: torch::ops::load_library / torch.ops.load_library.
#include <torch/library.h>

#include "affinity.h"

TORCH_LIBRARY(pycsa, m) {
  m.def("affinity(Tensor database, Tensor ranks, int num_anchors, Tensor? queries=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(pycsa, CPU, m) { m.impl("affinity", &pycsa::affinity_cpu); }
