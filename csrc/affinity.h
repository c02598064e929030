// Top-K affinity: out[b, i, j] = <item(b, i), item(b, j)> for i < K, j < L,
// where item(b, 0..K-1) are database rows picked by ranks[b] (optionally with
// the query of row b in front). Shared by the CPU and CUDA implementations.
#pragma once

#include <ATen/ATen.h>
#include <optional>

namespace pycsa {

// Validates what every backend needs; throws c10 errors that surface in Python
// as ValueError / TypeError / IndexError naming the argument.
void check_affinity_args(const at::Tensor& database, const at::Tensor& ranks,
                         int64_t num_anchors, const std::optional<at::Tensor>& queries);

// Number of items in each list: ranks.size(1), plus one when queries are given.
inline int64_t affinity_list_length(const at::Tensor& ranks,
                                    const std::optional<at::Tensor>& queries) {
  return ranks.size(1) + (queries.has_value() ? 1 : 0);
}

at::Tensor affinity_cpu(const at::Tensor& database, const at::Tensor& ranks,
                        int64_t num_anchors, const std::optional<at::Tensor>& queries);

}  // namespace pycsa
