// The Python module pycsa._C. Importing it loads the operators registered in
// registration.cpp (and the CUDA kernels when built); this file only adds the
// build facts Python needs.
#include <ATen/Context.h>
#include <torch/extension.h>
#include <torch/version.h>

#include "attention.h"
#include "kreciprocal.h"
#include "cpu/cpu_features.h"
#include "cpu/isa.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pycsa C++/CUDA kernels; use them through pycsa.ops";
#ifdef PYCSA_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  // The torch whose headers this was compiled against: its C++ ABI is only that release's,
  // so the import compares it with the running torch (pycsa/ops/_extension.py).
  m.attr("torch_version") = TORCH_VERSION;
  // Exact-search products must not run in TF32 (10-bit mantissa) because a user turned it
  // on globally; the guard is thread-local and leaves the user's setting as it was.
  m.def(
      "matmul_ieee",
      [](const at::Tensor& a, const at::Tensor& b) {
        const at::NoTF32Guard no_tf32;
        return at::matmul(a, b);
      },
      "a @ b with TF32 disabled for this call (float32 GEMMs on CUDA stay IEEE float32)");
  m.def("native_bf16_gemm", &pycsa::native_bf16_gemm,
        "True when the CPU has bfloat16 dot products (AVX512-BF16 or AMX) and its bf16 GEMM is at least "
        "1.2x its float32 one (bf16_gemm_speedup): the CPU kernels then multiply bfloat16 inputs as they are");
  m.def("bf16_dot_products", &pycsa::bf16_dot_products,
        "True when the CPU has bfloat16 dot products (AVX512-BF16 or AMX) and the kernels run AVX-512");
  m.def("bf16_gemm_speedup", &pycsa::bf16_gemm_speedup, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "float32 over bfloat16 time of a 256 x 4,096 x 512 GEMM on this CPU, measured once per process "
        "(PYCSA_BF16_GEMM=1 or 0: 1000 or 0 instead)");
  m.def("set_bf16_gemm_speedup", &pycsa::set_bf16_gemm_speedup, pybind11::arg("ratio"),
        "Replace the measured ratio (tests); below 0: measure again on next use");
  m.def("cpu_capability", [] { return std::string(pycsa::isa_name(pycsa::cpu_isa())); },
        "The instruction set the CPU kernels' vectorised loops run with: default, avx2 or avx512");
  m.def("supported_cpu_capabilities", &pycsa::supported_isas, "The instruction sets this CPU can run, lowest first");
  m.def("set_cpu_capability", &pycsa::set_cpu_isa, "Run the vectorised loops with this instruction set",
        pybind11::arg("capability"));
  m.def("attention_cpu_path", &pycsa::attention_cpu_path, pybind11::arg("q"),
        pybind11::arg("lengths") = pybind11::none());
  m.def("set_attention_cpu_to_sdpa", &pycsa::set_attention_cpu_to_sdpa, pybind11::arg("on"));
  m.def("set_k_reciprocal_heap_limit", &pycsa::set_k_reciprocal_heap_limit, pybind11::arg("bytes"));
  m.def("set_k_reciprocal_seed_scale", &pycsa::set_k_reciprocal_seed_scale, pybind11::arg("scale"));
}
