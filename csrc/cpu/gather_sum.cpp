// CPU weighted gather-sum: each output row accumulates k source rows in float32
// (float64 for float64), parallel over output rows. Reads k·d values per row from
// the source, writes d: the gathered r x k x d tensor never exists.
#include "../gather_sum.h"
#include "isa.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <vector>

namespace pycsa {
namespace {

// Output rows [lo, hi): the row loop over d is what the compiler vectorises, per ISA.
template <typename scalar_t>
PYCSA_ALWAYS_INLINE void gather_rows_body(const scalar_t* s, int64_t stride, const int64_t* ip,
                                          const at::opmath_type<scalar_t>* wp, at::opmath_type<scalar_t>* op,
                                          int64_t k, int64_t d, int64_t lo, int64_t hi) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t row = lo; row < hi; ++row) {
    acc_t* dst = op + row * d;
    for (int64_t c = 0; c < d; ++c) dst[c] = 0;
    for (int64_t j = 0; j < k; ++j) {
      const acc_t wt = wp[row * k + j];
      const scalar_t* sr = s + ip[row * k + j] * stride;
      for (int64_t c = 0; c < d; ++c) dst[c] += wt * static_cast<acc_t>(sr[c]);
    }
  }
}

PYCSA_ISA_VARIANTS(template <typename scalar_t>, <scalar_t>, void, gather_rows,
                   (const scalar_t* s, int64_t stride, const int64_t* ip, const at::opmath_type<scalar_t>* wp,
                    at::opmath_type<scalar_t>* op, int64_t k, int64_t d, int64_t lo, int64_t hi),
                   (s, stride, ip, wp, op, k, d, lo, hi))

}  // namespace

at::Tensor weighted_gather_sum_cpu(const at::Tensor& source, const at::Tensor& index, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(source.dim() == 2, "source: expected a 2-D (n x d) tensor, got ", source.dim(), "-D");
  TORCH_CHECK_VALUE(index.dim() == 2, "index: expected a 2-D (r x k) tensor, got ", index.dim(), "-D");
  TORCH_CHECK_VALUE(weight.sizes() == index.sizes(), "weight: expected shape ", index.sizes(), ", got ",
                    weight.sizes());
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong, "index: expected int64, got ", index.scalar_type());
  TORCH_CHECK_VALUE(source.is_cpu() && index.is_cpu() && weight.is_cpu(), "source/index/weight: expected CPU tensors");
  const int64_t n = source.size(0), d = source.size(1), r = index.size(0), k = index.size(1);
  if (index.numel()) {
    const auto [lo, hi] = at::aminmax(index);
    TORCH_CHECK_INDEX(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < n, "index: must lie in [0, ", n, ")");
  }
  const at::Tensor src = source.stride(1) == 1 ? source : source.contiguous();
  const at::Tensor idx = index.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "weighted_gather_sum", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    out = at::empty({r, d}, src.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    const at::Tensor w = weight.to(out.scalar_type()).contiguous();
    const scalar_t* s = src.data_ptr<scalar_t>();
    const int64_t* ip = idx.data_ptr<int64_t>();
    const acc_t* wp = w.data_ptr<acc_t>();
    acc_t* op = out.data_ptr<acc_t>();
    const int64_t stride = src.stride(0);
    at::parallel_for(0, r, 16, [&](int64_t lo, int64_t hi) { gather_rows<scalar_t>(s, stride, ip, wp, op, k, d, lo, hi); });
  });
  return out;
}

}  // namespace pycsa
