// CPU exact inner-product top-k. Queries go through in blocks of kQueryBlock
// rows; for each, the database in blocks of kDbBlock rows: one GEMM writes the
// block's scores (kQueryBlock x kDbBlock, 4 MB in float32), then each query row
// keeps its best k in a buffer of up to 4k (2k for large k), compacted with nth_element when full.
// After the first compaction a score must beat the row's current k-th best to
// enter, and 16 scores are skipped at once when none does: most of the q x n
// scores cost one vector max. Scores equal to the k-th best lose: rows are
// scanned in index order, so the earlier (lower) index keeps its place.
// A NaN score ranks as -inf (last). Peak extra memory: the score block plus
// 256 query rows x (up to 4k) values and indices.
#include "../topk.h"
#include "isa.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace pycsa {
namespace {

constexpr int64_t kQueryBlock = 256;
constexpr int64_t kDbBlock = 4096;
constexpr int64_t kSkip = 16;
// Up to this k a row keeps its best in a sorted array, one insertion per score that enters:
// cheaper than filling a 4k buffer and compacting it when rows are short (SuperGlobal's
// within-list search: k = 10 of 400).
constexpr int64_t kSmallK = 16;

// The first chunk of kSkip scores from s[j] on whose largest beats kth (a NaN never does),
// or the end of the whole chunks: the compare that nearly every score costs, per ISA.
PYCSA_ALWAYS_INLINE int64_t next_chunk_above_body(const float* s, int64_t j, int64_t n, float kth) {
  for (; j + kSkip <= n; j += kSkip) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < kSkip; ++t) m = s[j + t] > m ? s[j + t] : m;
    if (m > kth) return j;
  }
  return j;
}
PYCSA_ISA_VARIANTS(, , int64_t, next_chunk_above, (const float* s, int64_t j, int64_t n, float kth), (s, j, n, kth))

// The best k (score, index) pairs seen so far for one query row.
// Scratch of compact() and write(), one per thread: no allocation per call, and no copy
// per row (k may be large: the search's bfloat16 prefilter asks for up to n / 2).
struct Scratch {
  std::vector<int64_t> order;
  std::vector<float> kept_score;
  std::vector<int64_t> kept_index;
};
inline Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

struct RowTopK {
  std::vector<float> score;
  std::vector<int64_t> index;
  int64_t count = 0;
  int64_t k = 0;
  bool compacted = false;  // once true, kth holds the k-th best score so far
  bool small = false;      // k <= kSmallK: score/index hold the best so far, sorted
  float kth = -std::numeric_limits<float>::infinity();

  void reset(int64_t k_) {
    k = k_;
    small = k <= kSmallK;
    if (small) {
      score.resize(k);
      index.resize(k);
      count = 0;
      compacted = false;
      kth = -std::numeric_limits<float>::infinity();
      return;
    }
    // room for up to 4k before a compaction (one nth_element per 3k entries that pass kth);
    // 2k for large k, which bounds the memory of q rows at 2k pairs each, as before
    const int64_t room = k + std::min(3 * k, std::max<int64_t>(k, 4096));
    score.resize(room);
    index.resize(room);
    count = 0;
    compacted = false;
    kth = -std::numeric_limits<float>::infinity();
  }

  // (score desc, index asc): the order of the result
  bool better(int64_t a, int64_t b) const {
    return score[a] > score[b] || (score[a] == score[b] && index[a] < index[b]);
  }

  // Keeps the best k of the buffer at its front.
  void compact() {
    Scratch& sc = scratch();
    auto& order = sc.order;
    auto& kept_score = sc.kept_score;
    auto& kept_index = sc.kept_index;
    order.resize(count);
    kept_score.resize(k);
    kept_index.resize(k);
    for (int64_t i = 0; i < count; ++i) order[i] = i;
    std::nth_element(order.begin(), order.begin() + (k - 1), order.begin() + count,
                     [&](int64_t a, int64_t b) { return better(a, b); });
    for (int64_t i = 0; i < k; ++i) {
      kept_score[i] = score[order[i]];
      kept_index[i] = index[order[i]];
    }
    std::copy(kept_score.begin(), kept_score.begin() + k, score.begin());
    std::copy(kept_index.begin(), kept_index.begin() + k, index.begin());
    count = k;
    kth = *std::min_element(kept_score.begin(), kept_score.begin() + k);
    compacted = true;
  }

  // Sorted insertion (small k). Indices arrive in increasing order, so an equal score
  // goes after those already in: the lower index keeps its place.
  void push_small(float s, int64_t i) {
    if (count == k) {
      if (!(s > kth)) return;
      --count;  // the worst leaves
    }
    int64_t p = count;
    for (; p > 0 && s > score[p - 1]; --p) {
      score[p] = score[p - 1];
      index[p] = index[p - 1];
    }
    score[p] = s;
    index[p] = i;
    if (++count == k) {
      compacted = true;
      kth = score[k - 1];
    }
  }

  void push(float s, int64_t i) {
    if (small) return push_small(s, i);
    if (count == static_cast<int64_t>(score.size())) compact();
    if (compacted && !(s > kth)) return;  // kth may have risen in compact()
    score[count] = s;
    index[count] = i;
    ++count;
  }

  // Scores of database rows first .. first + n - 1. One at a time until the buffer first
  // compacts (kth is known from then on), then kSkip at a time, skipping whole chunks that
  // cannot enter.
  template <typename score_t>
  void scan(const score_t* s, int64_t n, int64_t first) {
    int64_t j = 0;
    while (j < n) {
      if (compacted && j + kSkip <= n) {
        if constexpr (std::is_same_v<score_t, float>) {
          j = next_chunk_above(s, j, n, kth);
          if (j + kSkip > n) continue;  // no chunk left: the tail, one at a time
        } else {
          float m = -std::numeric_limits<float>::infinity();
          for (int64_t t = 0; t < kSkip; ++t) {
            const float v = static_cast<float>(s[j + t]);
            m = v > m ? v : m;  // a NaN never wins
          }
          if (!(m > kth)) {
            j += kSkip;
            continue;
          }
        }
        for (int64_t t = 0; t < kSkip; ++t) {
          const float v = static_cast<float>(s[j + t]);
          if (v > kth) push(v, first + j + t);  // kth rises as entries come in
        }
        j += kSkip;
        continue;
      }
      float v = static_cast<float>(s[j]);
      if (std::isnan(v)) v = -std::numeric_limits<float>::infinity();  // keeps the order strict-weak
      if (!compacted || v > kth) push(v, first + j);
      ++j;
    }
  }

  // The best k, best first, into out_s / out_i.
  void write(float* out_s, int64_t* out_i) {
    if (small) {  // already in order
      std::copy(score.begin(), score.begin() + k, out_s);
      std::copy(index.begin(), index.begin() + k, out_i);
      return;
    }
    auto& order = scratch().order;
    order.resize(count);
    for (int64_t i = 0; i < count; ++i) order[i] = i;
    std::sort(order.begin(), order.begin() + count, [&](int64_t a, int64_t b) { return better(a, b); });
    for (int64_t i = 0; i < k; ++i) {
      out_s[i] = score[order[i]];
      out_i[i] = index[order[i]];
    }
  }
};

template <typename scalar_t>
void topk_impl(const at::Tensor& Q, const at::Tensor& X, int64_t k, at::Tensor& out_s, at::Tensor& out_i) {
  const int64_t q = Q.size(0), n = X.size(0);
  // up to 2 x kQueryBlock queries in one block: one GEMM, not a full one and a remainder
  // (SuperGlobal calls this per list of 400 rows)
  const int64_t QB = q <= 2 * kQueryBlock ? q : kQueryBlock, NB = std::min(n, kDbBlock);
  // torch's GEMM (oneDNN/MKL, all threads) writes the block in the input dtype;
  // bfloat16 products are summed in float32 and rounded once at the end.
  at::Tensor block = at::empty({QB, NB}, Q.options());
  std::vector<RowTopK> rows(QB);
  float* os = out_s.data_ptr<float>();
  int64_t* oi = out_i.data_ptr<int64_t>();

  for (int64_t q0 = 0; q0 < q; q0 += QB) {
    const int64_t qb = std::min(QB, q - q0);
    const at::Tensor Qb = Q.narrow(0, q0, qb);
    for (int64_t r = 0; r < qb; ++r) rows[r].reset(k);
    for (int64_t n0 = 0; n0 < n; n0 += NB) {
      const int64_t nb = std::min(NB, n - n0);
      at::Tensor S = block.narrow(0, 0, qb).narrow(1, 0, nb);
      at::mm_out(S, Qb, X.narrow(0, n0, nb).t());
      const scalar_t* sp = S.data_ptr<scalar_t>();
      const int64_t lds = S.stride(0);
      at::parallel_for(0, qb, 8, [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) rows[r].scan(sp + r * lds, nb, n0);
      });
    }
    at::parallel_for(0, qb, 8, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) rows[r].write(os + (q0 + r) * k, oi + (q0 + r) * k);
    });
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> inner_product_topk_cpu(const at::Tensor& queries, const at::Tensor& database,
                                                          int64_t k) {
  TORCH_CHECK_VALUE(queries.dim() == 2, "queries: expected a 2-D (q x d) tensor, got ", queries.dim(), "-D");
  TORCH_CHECK_VALUE(database.dim() == 2, "database: expected a 2-D (n x d) tensor, got ", database.dim(), "-D");
  TORCH_CHECK_VALUE(queries.size(1) == database.size(1), "queries: dimension ", queries.size(1),
                    " differs from database dimension ", database.size(1));
  TORCH_CHECK_TYPE(queries.scalar_type() == database.scalar_type(), "queries: dtype ", queries.scalar_type(),
                   " differs from database dtype ", database.scalar_type());
  TORCH_CHECK_TYPE(queries.scalar_type() == at::kFloat || queries.scalar_type() == at::kBFloat16,
                   "queries: expected float32 or bfloat16, got ", queries.scalar_type());
  TORCH_CHECK_VALUE(queries.is_cpu() && database.is_cpu(), "queries/database: expected CPU tensors");
  TORCH_CHECK_VALUE(k >= 1 && k <= database.size(0), "k: must lie in [1, ", database.size(0),
                    "] (the database size), got ", k);
  // BLAS wants a dense feature axis; rows may be strided.
  const at::Tensor Q = queries.stride(1) == 1 ? queries : queries.contiguous();
  const at::Tensor X = database.stride(1) == 1 ? database : database.contiguous();
  auto out_s = at::empty({Q.size(0), k}, Q.options().dtype(at::kFloat));
  auto out_i = at::empty({Q.size(0), k}, Q.options().dtype(at::kLong));
  if (Q.size(0) == 0) return {out_s, out_i};
  if (Q.scalar_type() == at::kFloat) {
    topk_impl<float>(Q, X, k, out_s, out_i);
  } else {
    topk_impl<at::BFloat16>(Q, X, k, out_s, out_i);
  }
  return {out_s, out_i};
}

}  // namespace pycsa
