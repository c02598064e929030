// out[r] = Σ_j weight[r, j] · source[index[r, j]]: the weighted neighbour sum behind
// query expansion, database augmentation and SuperGlobal, without materialising the
// r x k x d gathered rows.
#pragma once

#include <ATen/ATen.h>

namespace pycsa {

at::Tensor weighted_gather_sum_cpu(const at::Tensor& source, const at::Tensor& index, const at::Tensor& weight);

}  // namespace pycsa
