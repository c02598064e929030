// Argument checks shared by the CPU and CUDA k-reciprocal kernels (devices are checked by each).
#include "kreciprocal.h"

#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

namespace pycsa {

void check_k_reciprocal_args(int64_t k1, int64_t k2, double lambda) {
  TORCH_CHECK_VALUE(k1 >= 1, "k1: must be >= 1, got ", k1);
  TORCH_CHECK_VALUE(k2 >= 1, "k2: must be >= 1, got ", k2);
  TORCH_CHECK_VALUE(lambda >= 0.0 && lambda <= 1.0, "lambda_value: must lie in [0, 1], got ", lambda);
}

void check_k_reciprocal_matrices(const at::Tensor& q_g, const at::Tensor& q_q, const at::Tensor& g_g) {
  TORCH_CHECK_VALUE(q_g.dim() == 2, "q_g_dist: expected a 2-D (q x g) matrix, got ", q_g.dim(), "-D");
  const int64_t q = q_g.size(0), g = q_g.size(1);
  TORCH_CHECK_VALUE(q >= 1 && g >= 1, "q_g_dist: needs at least one query and one gallery item");
  TORCH_CHECK_VALUE(q_q.dim() == 2 && q_q.size(0) == q && q_q.size(1) == q,
                    "q_q_dist: expected shape (", q, ", ", q, "), got ", q_q.sizes());
  TORCH_CHECK_VALUE(g_g.dim() == 2 && g_g.size(0) == g && g_g.size(1) == g,
                    "g_g_dist: expected shape (", g, ", ", g, "), got ", g_g.sizes());
  TORCH_CHECK_TYPE(q_g.scalar_type() == q_q.scalar_type() && q_g.scalar_type() == g_g.scalar_type(),
                   "q_q_dist/g_g_dist: dtypes must match q_g_dist (", q_g.scalar_type(), ")");
  TORCH_CHECK_TYPE(q_g.scalar_type() == at::kFloat || q_g.scalar_type() == at::kDouble,
                   "q_g_dist: expected float32 or float64, got ", q_g.scalar_type());
  TORCH_CHECK_VALUE(q_q.device() == q_g.device() && g_g.device() == q_g.device(),
                    "q_q_dist/g_g_dist: must be on the device of q_g_dist (", q_g.device(), ")");
  TORCH_CHECK_VALUE(q + g <= std::numeric_limits<int32_t>::max(), "q_g_dist: more than 2^31 items");
}

void check_k_reciprocal_features(const at::Tensor& query, const at::Tensor& gallery) {
  TORCH_CHECK_VALUE(query.dim() == 2 && gallery.dim() == 2 && query.size(1) == gallery.size(1),
                    "query_feats/gallery_feats: expected 2-D arrays with the same number of columns, got ",
                    query.sizes(), " and ", gallery.sizes());
  TORCH_CHECK_VALUE(query.size(0) >= 1 && gallery.size(0) >= 1,
                    "query_feats/gallery_feats: needs at least one query and one gallery item");
  TORCH_CHECK_VALUE(gallery.device() == query.device(),
                    "gallery_feats: must be on the device of query_feats (", query.device(), ")");
}

}  // namespace pycsa
