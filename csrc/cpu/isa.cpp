#include "isa.h"

#include "cpu_features.h"
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>

namespace pycsa {
namespace {

constexpr const char* kNames[] = {"default", "avx2", "avx512"};

int parse(const std::string& name) {
  for (int i = 0; i < 3; ++i)
    if (name == kNames[i]) return i;
  return -1;
}

Isa detect() {
#if defined(__x86_64__)
  // cpuinfo (behind ATen's table) also checks that the OS saves the wide registers.
  if (cpu_has("avx512_f") && cpu_has("avx512_bw") && cpu_has("avx512_vl") && cpu_has("avx512_dq")) return Isa::kAvx512;
  if (cpu_has("avx2") && cpu_has("fma3")) return Isa::kAvx2;
#endif
  return Isa::kDefault;
}

int initial() {
  const int best = static_cast<int>(best_isa());
  const char* env = std::getenv("PYCSA_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return best;
  const int asked = parse(env);
  if (asked < 0) {
    TORCH_WARN("PYCSA_CPU_CAPABILITY=", env, " is not one of default, avx2, avx512; using ", kNames[best]);
    return best;
  }
  return asked < best ? asked : best;  // a CPU cannot run more than it has
}

std::atomic<int>& current() {
  static std::atomic<int> isa{initial()};
  return isa;
}

}  // namespace

const char* isa_name(Isa isa) { return kNames[static_cast<int>(isa)]; }

Isa best_isa() {
  static const Isa best = detect();
  return best;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (int i = 0; i <= static_cast<int>(best_isa()); ++i) out.emplace_back(kNames[i]);
  return out;
}

Isa cpu_isa() { return static_cast<Isa>(current().load(std::memory_order_relaxed)); }

void set_cpu_isa(const std::string& name) {
  const int asked = parse(name);
  TORCH_CHECK_VALUE(asked >= 0, "capability: expected 'default', 'avx2' or 'avx512', got '", name, "'");
  TORCH_CHECK_VALUE(asked <= static_cast<int>(best_isa()), "capability: this CPU cannot run '", name,
                    "' (it has up to '", isa_name(best_isa()), "')");
  current().store(asked, std::memory_order_relaxed);
}

}  // namespace pycsa
