// Which x86 instruction set the vectorised loops of the CPU kernels run with.
//
// The extension is compiled for plain x86-64, so a loop the compiler vectorises would
// use 128-bit SSE2 everywhere. Each hot loop is therefore compiled three times (generic,
// AVX2+FMA, AVX-512) from one always-inline body, and a call runs the variant that
// cpu_isa() names: the best the CPU (and its OS) supports, or a lower one chosen with
// PYCSA_CPU_CAPABILITY=default|avx2|avx512, as ATen's ATEN_CPU_CAPABILITY does, or at
// run time with set_cpu_isa (tests run every variant the CPU has). BLAS calls choose
// their own code per CPU.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pycsa {

enum class Isa : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_name(Isa isa);
Isa best_isa();                         // what this CPU can run
std::vector<std::string> supported_isas();  // names, lowest first
Isa cpu_isa();                          // what the kernels use now
void set_cpu_isa(const std::string& name);  // throws ValueError for unknown or unsupported names

}  // namespace pycsa

#if defined(__x86_64__) && defined(__GNUC__)
#define PYCSA_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define PYCSA_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#else
#define PYCSA_TARGET_AVX2
#define PYCSA_TARGET_AVX512
#endif
#define PYCSA_ALWAYS_INLINE inline __attribute__((always_inline))

// Defines NAME_avx512, NAME_avx2 and NAME_generic, each NAME_body (an always-inline
// function) compiled for its instruction set, and NAME, which calls the variant
// cpu_isa() names. TEMPLATE is empty or `template <typename T>`, TARGS empty or <T>.
#define PYCSA_ISA_VARIANTS(TEMPLATE, TARGS, RET, NAME, PARAMS, ARGS)       \
  TEMPLATE PYCSA_TARGET_AVX512 RET NAME##_avx512 PARAMS {                   \
    return NAME##_body TARGS ARGS;                                           \
  }                                                                          \
  TEMPLATE PYCSA_TARGET_AVX2 RET NAME##_avx2 PARAMS { return NAME##_body TARGS ARGS; } \
  TEMPLATE RET NAME##_generic PARAMS { return NAME##_body TARGS ARGS; }     \
  TEMPLATE RET NAME PARAMS {                                                 \
    switch (::pycsa::cpu_isa()) {                                            \
      case ::pycsa::Isa::kAvx512: return NAME##_avx512 TARGS ARGS;           \
      case ::pycsa::Isa::kAvx2: return NAME##_avx2 TARGS ARGS;               \
      default: return NAME##_generic TARGS ARGS;                             \
    }                                                                        \
  }
