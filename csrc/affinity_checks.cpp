#include "affinity.h"

#include <c10/util/Exception.h>

namespace pycsa {

void check_affinity_args(const at::Tensor& database, const at::Tensor& ranks,
                         int64_t num_anchors, const std::optional<at::Tensor>& queries) {
  TORCH_CHECK_VALUE(database.dim() == 2, "database: expected a 2-D (n x d) tensor, got ",
                    database.dim(), "-D");
  TORCH_CHECK_VALUE(ranks.dim() == 2, "ranks: expected a 2-D (B x K) tensor, got ",
                    ranks.dim(), "-D");
  TORCH_CHECK_TYPE(ranks.scalar_type() == at::kLong, "ranks: expected int64, got ",
                   ranks.scalar_type());
  const auto dt = database.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
                   "database: expected float32, float64, float16 or bfloat16, got ", dt);
  TORCH_CHECK_VALUE(database.device() == ranks.device(), "ranks: on ", ranks.device(),
                    " but database is on ", database.device());
  if (queries.has_value()) {
    const auto& q = *queries;
    TORCH_CHECK_VALUE(q.dim() == 2 && q.size(0) == ranks.size(0) && q.size(1) == database.size(1),
                      "queries: expected shape (", ranks.size(0), ", ", database.size(1),
                      "), got ", q.sizes());
    TORCH_CHECK_TYPE(q.scalar_type() == dt, "queries: dtype ", q.scalar_type(),
                     " differs from database dtype ", dt);
    TORCH_CHECK_VALUE(q.device() == database.device(), "queries: on ", q.device(),
                      " but database is on ", database.device());
  }
  const int64_t k = affinity_list_length(ranks, queries);
  TORCH_CHECK_VALUE(num_anchors >= 1 && num_anchors <= k, "num_anchors: must lie in [1, ", k,
                    "] (the ranking list length), got ", num_anchors);
  if (ranks.numel() > 0) {
    // One pass over B*K indices is cheap next to the K*L*d product; it keeps every
    // later gather in bounds.
    const auto n = database.size(0);
    const auto [lo, hi] = at::aminmax(ranks);
    const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
    TORCH_CHECK_INDEX(lo_v >= 0 && hi_v < n, "ranks: indices must lie in [0, ", n,
                      ") (database rows), found [", lo_v, ", ", hi_v, "]");
  }
}

}  // namespace pycsa
