// CPU top-K affinity: gather the rows of a group of lists into a contiguous
// buffer in the GEMM's compute type, then one batched GEMM (torch's BLAS) per
// chunk of candidates against the anchors. Peak extra memory: about
// 2 * max(kGroupElems, max(L, kChunk) * d) values of the compute type, plus a
// staging block of the output when the compute type differs; never B x K x d.
#include "../affinity.h"
#include "cpu_features.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

namespace pycsa {
namespace {

constexpr int64_t kChunk = 256;            // candidate rows per GEMM: big enough for BLAS, small in cache
constexpr int64_t kGroupElems = 1 << 22;  // gathered values per group of lists (16 MB in float32)

template <typename scalar_t, typename acc_t>
struct ListGather {
  const scalar_t* db;
  int64_t db_stride;
  const scalar_t* queries;  // nullptr when the lists are database rows only
  int64_t q_stride;
  const int64_t* ranks;
  int64_t ranks_cols;
  int64_t d;

  const scalar_t* row(int64_t b, int64_t i) const {
    if (queries != nullptr) {
      if (i == 0) return queries + b * q_stride;
      --i;
    }
    return db + ranks[b * ranks_cols + i] * db_stride;
  }

  // Row i of list b, converted to the compute type, into dst[0..d).
  void row_into(int64_t b, int64_t i, acc_t* dst) const {
    const scalar_t* src = row(b, i);
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      std::memcpy(dst, src, sizeof(acc_t) * d);
    } else {
      for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<acc_t>(src[c]);
    }
  }
};

template <typename scalar_t, typename acc_t>
void affinity_cpu_impl(const at::Tensor& db, const at::Tensor& ranks, int64_t L,
                       const at::Tensor* queries, at::Tensor& out) {
  const int64_t B = out.size(0), K = out.size(1), d = db.size(1);
  const ListGather<scalar_t, acc_t> gather{
      db.data_ptr<scalar_t>(), db.stride(0),
      queries ? queries->data_ptr<scalar_t>() : nullptr, queries ? queries->stride(0) : 0,
      ranks.data_ptr<int64_t>(), ranks.size(1), d};
  const auto acc_opts = db.options().dtype(c10::CppTypeToScalarType<acc_t>::value);

  // Lists go through in groups of G, each group one batched GEMM, so that many
  // small lists share one BLAS call and one large list still uses every thread.
  // The first block of rows of a list holds its anchors and at least one chunk
  // of candidates (no row is gathered twice); later candidates come kChunk rows
  // at a time.
  const int64_t head = std::min(K, std::max(L, kChunk));
  const int64_t G = std::clamp<int64_t>(kGroupElems / std::max<int64_t>(1, head * d), 1, B);
  at::Tensor rows = at::empty({G, head, d}, acc_opts);
  at::Tensor cand_buf, prod;

  // Rows [first, first + count) of lists [b0, b0 + g) into dst (g x count x d).
  auto gather_group = [&](int64_t b0, int64_t g, int64_t first, int64_t count, acc_t* dst) {
    at::parallel_for(0, g * count, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t e = lo; e < hi; ++e) gather.row_into(b0 + e / count, first + e % count, dst + e * d);
    });
  };

  for (int64_t b0 = 0; b0 < B; b0 += G) {
    const int64_t g = std::min(G, B - b0);
    at::Tensor head_rows = rows.narrow(0, 0, g);
    gather_group(b0, g, 0, head, head_rows.data_ptr<acc_t>());
    const at::Tensor anchors_t = head_rows.narrow(1, 0, L).transpose(1, 2);
    for (int64_t c0 = 0; c0 < K;) {
      const int64_t c = c0 == 0 ? head : std::min(kChunk, K - c0);
      at::Tensor cand = head_rows;
      if (c0 > 0) {
        if (!cand_buf.defined()) cand_buf = at::empty({G * kChunk * d}, acc_opts);
        // a dense g x c x d view: the gather writes the rows back to back, so a last chunk
        // shorter than kChunk must not keep the buffer's kChunk-row stride between lists
        cand = cand_buf.narrow(0, 0, g * c * d).view({g, c, d});
        gather_group(b0, g, c0, c, cand.data_ptr<acc_t>());
      }
      at::Tensor dst = out.narrow(0, b0, g).narrow(1, c0, c);
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        at::bmm_out(dst, cand, anchors_t);
      } else {
        // bmm_out into the compute type: a plain bmm would follow the caller's autocast, and
        // multiply float16 inputs widened to float32 in bfloat16
        if (!prod.defined()) prod = at::empty({G * std::max(head, kChunk) * L}, acc_opts);
        at::Tensor p = prod.narrow(0, 0, g * c * L).view({g, c, L});
        at::bmm_out(p, cand, anchors_t);
        dst.copy_(p);
      }
      c0 += c;
    }
  }
}

}  // namespace

at::Tensor affinity_cpu(const at::Tensor& database, const at::Tensor& ranks, int64_t num_anchors,
                        const std::optional<at::Tensor>& queries) {
  check_affinity_args(database, ranks, num_anchors, queries);
  TORCH_CHECK_VALUE(database.device().is_cpu(), "database: expected a CPU tensor");
  // Rows may be strided (a slice of a larger matrix); the feature axis must be dense.
  const at::Tensor db = database.stride(1) == 1 ? database : database.contiguous();
  const at::Tensor rk = ranks.contiguous();
  at::Tensor q;
  if (queries.has_value()) q = queries->stride(1) == 1 ? *queries : queries->contiguous();

  const int64_t B = rk.size(0), K = affinity_list_length(rk, queries);
  at::Tensor out = at::empty({B, K, num_anchors}, database.options());
  if (out.numel() == 0) return out;
  if (db.size(1) == 0) return out.zero_();

  const at::Tensor* qp = q.defined() ? &q : nullptr;
  switch (db.scalar_type()) {
    case at::kFloat: affinity_cpu_impl<float, float>(db, rk, num_anchors, qp, out); break;
    case at::kDouble: affinity_cpu_impl<double, double>(db, rk, num_anchors, qp, out); break;
    case at::kHalf: affinity_cpu_impl<at::Half, float>(db, rk, num_anchors, qp, out); break;
    case at::kBFloat16:
      if (native_bf16_gemm()) {
        affinity_cpu_impl<at::BFloat16, at::BFloat16>(db, rk, num_anchors, qp, out);
      } else {
        affinity_cpu_impl<at::BFloat16, float>(db, rk, num_anchors, qp, out);
      }
      break;
    default: TORCH_CHECK_TYPE(false, "database: unsupported dtype ", db.scalar_type());
  }
  return out;
}

}  // namespace pycsa
