// Exact top-k by inner product, the CPU search kernel under pycsa.search's
// bfloat16 prefilter: scores = queries · databaseᵀ computed block by block
// (one BLAS GEMM per block, float32 accumulation, never the full q x n matrix),
// each row's best k kept with ties to the lower database index.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pycsa {

// (scores q x k float32, indices q x k int64), best first. queries and database
// share a dtype: float32, or bfloat16 (products summed in float32, each score
// rounded to bfloat16 once: the scores returned are those bfloat16 values).
std::tuple<at::Tensor, at::Tensor> inner_product_topk_cpu(const at::Tensor& queries, const at::Tensor& database,
                                                          int64_t k);

}  // namespace pycsa
