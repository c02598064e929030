// What the CPU's instruction set makes fast, asked once.
#pragma once

#include <ATen/cpu/Utils.h>

#include "isa.h"

namespace pycsa {

// bfloat16 GEMMs run natively (fp32 accumulation inside oneDNN) where the CPU has bf16
// dot-product instructions and they are measurably faster than float32 ones; elsewhere
// bfloat16 is widened to float32. Having the instructions is not enough: on an Intel
// AVX512-BF16 VM without AMX, oneDNN's bf16 GEMM ran at 0.6-0.74x its float32 GEMM, and
// affinity on bf16 inputs took 1.3-1.6x longer native than widened. float16 GEMMs on CPU
// are slow everywhere torch runs today, so float16 is always widened.
inline bool cpu_has(const char* name) {
  const auto caps = at::cpu::get_cpu_capabilities();
  auto it = caps.find(name);
  return it != caps.end() && it->second.isBool() && it->second.toBool();
}

// This CPU's float32 GEMM time over its bfloat16 one (256 x 4,096 x 512), measured once per
// process on first use (0.1-0.4 s on 2 cores), so near the threshold two processes may take
// different paths (bfloat16 outputs that differ by rounding): PYCSA_BF16_GEMM=1 or 0 fixes
// it (read at that first use). set_bf16_gemm_speedup replaces it (tests; below 0: decide again).
double bf16_gemm_speedup();
void set_bf16_gemm_speedup(double ratio);

// Both are AVX-512 extensions: with the kernels capped below AVX-512 (PYCSA_CPU_CAPABILITY,
// isa.h) pycsa takes the paths a CPU without them takes. Native bfloat16 needs them and a
// GEMM at least 1.2x the float32 one (below that, the widened float32 products are as fast).
inline bool bf16_dot_products() {
  static const bool yes = cpu_has("avx512_bf16") || cpu_has("amx_bf16");
  return yes && cpu_isa() == Isa::kAvx512;
}
inline bool native_bf16_gemm() { return bf16_dot_products() && bf16_gemm_speedup() >= 1.2; }

// AMX tile units: bfloat16 GEMMs much faster than float32 even for small blocks.
inline bool native_bf16_tiles() {
  static const bool yes = cpu_has("amx_bf16");
  return yes && cpu_isa() == Isa::kAvx512;
}

}  // namespace pycsa
