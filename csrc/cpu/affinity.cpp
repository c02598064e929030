// CPU top-K affinity: gather each list's rows into a contiguous buffer in the
// GEMM's compute type, then one GEMM (torch's BLAS) per chunk of candidates
// against the anchors. Peak extra memory per worker: (L + kChunk) * d values of
// the compute type plus, when it differs from the output type, a kChunk x L
// staging block; never B x K x d.
#include "../affinity.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/Utils.h>

#include <algorithm>
#include <cstring>

namespace pycsa {
namespace {

constexpr int64_t kChunk = 256;  // candidate rows per GEMM: big enough for BLAS, small in cache

// bfloat16 GEMMs run natively (fp32 accumulation inside oneDNN) where the CPU has
// bf16 dot-product instructions, about 3x faster than fp32; elsewhere they are
// slow, so bfloat16 is widened to float32 there. float16 GEMMs on CPU are slow
// everywhere torch runs today, so float16 is always widened.
bool native_bf16_gemm() {
  static const bool yes = [] {
    const auto caps = at::cpu::get_cpu_capabilities();
    auto has = [&](const char* name) {
      auto it = caps.find(name);
      return it != caps.end() && it->second.isBool() && it->second.toBool();
    };
    return has("avx512_bf16") || has("amx_bf16");
  }();
  return yes;
}

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

  // Rows [first, first + count) of list b into dst (count x d, row-major).
  void operator()(int64_t b, int64_t first, int64_t count, acc_t* dst, bool parallel) const {
    auto body = [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const scalar_t* src = row(b, first + r);
        acc_t* out = dst + r * d;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          std::memcpy(out, src, sizeof(acc_t) * d);
        } else {
          for (int64_t c = 0; c < d; ++c) out[c] = static_cast<acc_t>(src[c]);
        }
      }
    };
    if (parallel) {
      at::parallel_for(0, count, 16, body);
    } else {
      body(0, count);
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
  constexpr bool write_direct = std::is_same_v<scalar_t, acc_t>;

  auto one_list = [&](int64_t b, bool parallel_inside) {
    at::Tensor anchors = at::empty({L, d}, acc_opts);
    gather(b, 0, L, anchors.data_ptr<acc_t>(), parallel_inside);
    const at::Tensor anchors_t = anchors.t();
    at::Tensor cand_buf;
    for (int64_t c0 = 0; c0 < K; c0 += kChunk) {
      const int64_t c = std::min(kChunk, K - c0);
      at::Tensor cand;
      if (c0 + c <= L) {
        cand = anchors.narrow(0, c0, c);  // these candidates are anchors: already gathered
      } else {
        if (!cand_buf.defined()) cand_buf = at::empty({kChunk, d}, acc_opts);
        cand = cand_buf.narrow(0, 0, c);
        gather(b, c0, c, cand.data_ptr<acc_t>(), parallel_inside);
      }
      at::Tensor dst = out.select(0, b).narrow(0, c0, c);
      if constexpr (write_direct) {
        at::mm_out(dst, cand, anchors_t);
      } else {
        dst.copy_(at::mm(cand, anchors_t));
      }
    }
  };

  if (B >= at::get_num_threads()) {
    // Enough lists to keep every thread busy: one list per task, BLAS single-threaded inside.
    at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) one_list(b, false);
    });
  } else {
    // Few lists: parallelism comes from the gather and the multi-threaded GEMM.
    for (int64_t b = 0; b < B; ++b) one_list(b, true);
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
