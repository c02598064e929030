// The Python module pycsa._C. Importing it loads the operators registered in
// registration.cpp (and the CUDA kernels when built); this file only adds the
// build facts Python needs.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pycsa C++/CUDA kernels; use them through pycsa.ops";
#ifdef PYCSA_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
