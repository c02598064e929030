// The Python module pycsa._C. Importing it loads the operators registered in
// registration.cpp (and the CUDA kernels when built); this file only adds the
// build facts Python needs.
#include <torch/extension.h>

#include "cpu/cpu_features.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pycsa C++/CUDA kernels; use them through pycsa.ops";
#ifdef PYCSA_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def("native_bf16_gemm", &pycsa::native_bf16_gemm,
        "True when the CPU has bfloat16 dot products (AVX512-BF16 or AMX): bf16 GEMMs beat float32 ones");
}
