#include "attention.h"

#include <c10/util/Exception.h>

namespace pycsa {

void check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& lengths) {
  TORCH_CHECK_VALUE(q.dim() == 4, "q: expected a 4-D (batch, heads, tokens, head_dim) tensor, got ",
                    q.dim(), "-D");
  TORCH_CHECK_VALUE(k.sizes() == q.sizes(), "k: expected the shape of q ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK_VALUE(v.sizes() == q.sizes(), "v: expected the shape of q ", q.sizes(), ", got ", v.sizes());
  const auto dt = q.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
                   "q: expected float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK_TYPE(k.scalar_type() == dt, "k: dtype ", k.scalar_type(), " differs from q dtype ", dt);
  TORCH_CHECK_TYPE(v.scalar_type() == dt, "v: dtype ", v.scalar_type(), " differs from q dtype ", dt);
  TORCH_CHECK_VALUE(k.device() == q.device(), "k: on ", k.device(), " but q is on ", q.device());
  TORCH_CHECK_VALUE(v.device() == q.device(), "v: on ", v.device(), " but q is on ", q.device());
  if (!lengths.has_value()) return;
  const auto& len = *lengths;
  TORCH_CHECK_VALUE(len.dim() == 1 && len.size(0) == q.size(0), "lengths: expected shape (", q.size(0),
                    "), one length per sequence, got ", len.sizes());
  TORCH_CHECK_TYPE(len.scalar_type() == at::kLong, "lengths: expected int64, got ", len.scalar_type());
  TORCH_CHECK_VALUE(len.device() == q.device(), "lengths: on ", len.device(), " but q is on ", q.device());
  if (len.is_cpu() && len.numel() > 0) {
    const auto [lo, hi] = at::aminmax(len);
    const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
    TORCH_CHECK_VALUE(lo_v >= 0 && hi_v <= q.size(2), "lengths: must lie in [0, ", q.size(2),
                      "] (the token count), found [", lo_v, ", ", hi_v, "]");
  }
}

AttentionInputs attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const std::optional<at::Tensor>& lengths) {
  auto dense_last = [](const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); };
  return {dense_last(q), dense_last(k), dense_last(v), lengths.has_value() ? lengths->contiguous() : at::Tensor()};
}

}  // namespace pycsa
