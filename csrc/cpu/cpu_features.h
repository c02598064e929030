// What the CPU's instruction set makes fast, asked once.
#pragma once

#include <ATen/cpu/Utils.h>

#include "isa.h"

namespace pycsa {

// bfloat16 GEMMs run natively (fp32 accumulation inside oneDNN) where the CPU has
// bf16 dot-product instructions, about 3x faster than fp32; elsewhere they are
// slow, so bfloat16 is widened to float32 there. float16 GEMMs on CPU are slow
// everywhere torch runs today, so float16 is always widened.
inline bool cpu_has(const char* name) {
  const auto caps = at::cpu::get_cpu_capabilities();
  auto it = caps.find(name);
  return it != caps.end() && it->second.isBool() && it->second.toBool();
}

// Both are AVX-512 extensions: with the kernels capped below AVX-512 (PYCSA_CPU_CAPABILITY,
// isa.h) pycsa takes the paths a CPU without them takes.
inline bool native_bf16_gemm() {
  static const bool yes = cpu_has("avx512_bf16") || cpu_has("amx_bf16");
  return yes && cpu_isa() == Isa::kAvx512;
}

// AMX tile units: bfloat16 GEMMs much faster than float32 even for small blocks.
inline bool native_bf16_tiles() {
  static const bool yes = cpu_has("amx_bf16");
  return yes && cpu_isa() == Isa::kAvx512;
}

}  // namespace pycsa
