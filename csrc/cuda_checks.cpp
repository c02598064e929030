// See cuda_checks.h for why these are not in the .cu files.
#include "cuda_checks.h"

#include <c10/util/Exception.h>

namespace pycsa {

void check_half_precision_capability(const char* op, int major, const char* remedy) {
  TORCH_CHECK(major >= 8, op, ": float16/bfloat16 on CUDA needs compute capability 8.0+, this device has ",
              major, ".x; ", remedy);
}

void check_grid_y(int64_t blocks, const char* what, int64_t size) {
  TORCH_CHECK_VALUE(blocks <= 65535, what, " ", size, " is more than the CUDA kernel handles");
}

void check_attention_head_dim(int64_t head_dim) {
  TORCH_CHECK_VALUE(head_dim == 32 || head_dim == 64, "q: head_dim ", head_dim,
                    " is not compiled for CUDA (32 and 64 are); pycsa.ops.attention falls back to PyTorch SDPA for it");
}

}  // namespace pycsa
