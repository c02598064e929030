// Argument and device checks of the CUDA host functions whose messages carry numbers.
//
// They live in a .cpp file, compiled by the C++ compiler: on the H200 machine (nvcc 13.0
// with g++ 13.3, torch 2.11) a TORCH_CHECK in a .cu file that formatted an integer into
// its message crashed the process (SIGSEGV inside std::ostream::_M_insert<long>, reached
// from pycsa/_C) instead of raising. So .cu files give TORCH_CHECK string literals only,
// and call these for the rest (tests/test_cuda_sources.py holds them to it).
#pragma once

#include <cstdint>

namespace pycsa {

// float16/bfloat16 kernels use tensor-core instructions of compute capability 8.0+.
void check_half_precision_capability(const char* op, int major, const char* remedy);
// A launch grid's y dimension is at most 65535: `what` names the argument and its size.
void check_grid_y(int64_t blocks, const char* what, int64_t size);
// The attention kernel is compiled for head dims 32 and 64.
void check_attention_head_dim(int64_t head_dim);

}  // namespace pycsa
