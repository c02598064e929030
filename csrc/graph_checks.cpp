// Argument checks shared by the CPU and CUDA graph kernels (devices and index ranges are
// checked by each, next to the data).
#include "graph.h"

#include <c10/util/Exception.h>

namespace pycsa {

void check_csr_layout(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val) {
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.numel() >= 1, "rowptr: expected a 1-D tensor of length n + 1");
  TORCH_CHECK_TYPE(rowptr.scalar_type() == at::kLong && col.scalar_type() == at::kLong,
                   "rowptr/col: expected int64");
  TORCH_CHECK_TYPE(val.scalar_type() == at::kFloat, "val: expected float32, got ", val.scalar_type());
  TORCH_CHECK_VALUE(col.dim() == 1 && val.dim() == 1 && col.numel() == val.numel(),
                    "col/val: expected 1-D tensors of equal length");
}

void check_neighbours_layout(int64_t n, const at::Tensor& nbr, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(nbr.dim() == 2 && nbr.size(0) == n, "nbr: expected shape (", n, ", k), got ", nbr.sizes());
  TORCH_CHECK_VALUE(weight.sizes() == nbr.sizes(), "weight: expected shape ", nbr.sizes(), ", got ", weight.sizes());
  TORCH_CHECK_TYPE(nbr.scalar_type() == at::kLong, "nbr: expected int64");
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat, "weight: expected float32");
}

}  // namespace pycsa
