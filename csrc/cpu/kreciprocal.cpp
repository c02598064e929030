// CPU k-reciprocal re-ranking with a sparse V (SPEC §4).
//
// The joint distance matrix D = [[q_q, q_g], [q_gᵀ, g_g]] is never formed: its
// entries are read from the three inputs, or computed from the features a block
// of rows at a time (then no N x N matrix exists at all). Numerics follow the widely copied
// numpy code: squared distances in float32, each column divided by its maximum
// (the original works on the transposed, column-normalised matrix, so row i
// below is column i of D), exp/softmax weights, Jaccard 1 - s / (2 - s).
//
// Memory beyond the inputs and the q x g output: the top-m ranks (N x m),
// V and its local expansion in CSR (N x a few k1 each), and per thread a
// 256 x N float32 staging block plus O(N) scratch (about 96 MB per thread at N = 94k); from
// features, pass 1 holds instead a 256 x 1024 tile and N x 4m candidate pairs per thread
// (32 bytes per row and m, at most 512 MB in all, else it stages rows as from matrices).
// Ties in a row's ranking go to the lower index (the original's argsort leaves them unspecified).
#include "../kreciprocal.h"
#include "isa.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <memory>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

namespace pycsa {
namespace {

constexpr int64_t kBlock = 256;  // columns of D staged together: long contiguous reads per row
constexpr int64_t kTile = 1024;   // columns of a pass-1 tile from features: 1 MB with kBlock rows
std::atomic<int64_t> symmetric_heap_limit{int64_t{1} << 29};  // bytes; tests lower it
std::atomic<double> seed_scale{1.0};  // pass 1's starting bounds times this; below 0: none (tests)

inline float squared(double v) { return static_cast<float>(v * v); }

// Row of squared distances from its inner products, in place: max(0, |a|² + |b_j|² - 2 a·b_j).
PYCSA_ALWAYS_INLINE void products_to_squared_body(float* row, float norm_a, const float* norms, int64_t n) {
  for (int64_t j = 0; j < n; ++j) row[j] = std::max(0.f, norm_a + norms[j] - 2.f * row[j]);
}
PYCSA_ISA_VARIANTS(, , void, products_to_squared, (float* row, float norm_a, const float* norms, int64_t n),
                   (row, norm_a, norms, n))

// One query's final row: (1 - λ)·Jaccard + λ·(original distance / the column's maximum).
PYCSA_ALWAYS_INLINE void final_row_body(const float* acc, const float* d2, float mx, float w_jac, float w_orig,
                                        float* out, int64_t g) {
  for (int64_t j = 0; j < g; ++j) {
    const float s = acc[j];
    const float original = mx > 0 ? d2[j] / mx : 0.f;
    out[j] = (1.f - s / (2.f - s)) * w_jac + original * w_orig;
  }
}
PYCSA_ISA_VARIANTS(, , void, final_row,
                   (const float* acc, const float* d2, float mx, float w_jac, float w_orig, float* out, int64_t g),
                   (acc, d2, mx, w_jac, w_orig, out, g))

// Squared distances read from the three matrices the original takes.
template <typename T>
struct MatrixDistances {
  static constexpr bool kScansRows = true;
  static constexpr bool kSymmetric = false;
  const T* qg;
  const T* qq;
  const T* gg;
  int64_t q, g;

  int64_t n() const { return q + g; }
  int64_t goff() const { return q; }  // the gallery's first row in D
  T at(int64_t r, int64_t c) const {
    if (r < q) return c < q ? qq[r * q + c] : qg[r * g + (c - q)];
    return c < q ? qg[c * g + (r - q)] : gg[(r - q) * g + (c - q)];
  }
  // Column i of D² (the original's row i after its transpose).
  float d2(int64_t i, int64_t j) const { return squared(at(j, i)); }
  // stage[ii * N + j] = d2(i0 + ii, j) for a block of rows, one quadrant of D at a
  // time so that every inner loop reads its source contiguously.
  void stage(int64_t i0, int64_t nb, float* out) const {
    const int64_t N = n(), i1 = i0 + nb, split = std::clamp(q, i0, i1);
    if (i0 < split) {  // columns i < q: D(j, i) is q_q[j, i] then q_g[i, j - q]
      for (int64_t j = 0; j < q; ++j) {
        const T* src = qq + j * q;
        for (int64_t i = i0; i < split; ++i) out[(i - i0) * N + j] = squared(src[i]);
      }
      for (int64_t i = i0; i < split; ++i) {
        const T* src = qg + i * g;
        float* dst = out + (i - i0) * N + q;
        for (int64_t j = 0; j < g; ++j) dst[j] = squared(src[j]);
      }
    }
    if (split < i1) {  // columns i >= q: D(j, i) is q_g[j, i - q] then g_g[j - q, i - q]
      for (int64_t j = 0; j < N; ++j) {
        const T* src = (j < q ? qg + j * g : gg + (j - q) * g) - q;
        for (int64_t i = split; i < i1; ++i) out[(i - i0) * N + j] = squared(src[i]);
      }
    }
  }
};

// Columns [c0, c1) of D² with c >= q, scanned row by row (every read contiguous):
// the maximum and the m smallest (value, row) of each column. heaps holds m
// pairs per column, a max-heap on (value, row); a later row never wins a tie.
template <typename T>
void scan_gallery_columns(const MatrixDistances<T>& D, int64_t c0, int64_t c1, int64_t m, float* colmax,
                          std::pair<float, int32_t>* heaps) {
  const int64_t N = D.n(), q = D.q, g = D.g, w = c1 - c0;
  std::vector<float> top(w);  // the heap's largest value per column: one compare per element
  for (int64_t j = 0; j < N; ++j) {
    const T* src = (j < q ? D.qg + j * g : D.gg + (j - q) * g) + (c0 - q);
    for (int64_t c = 0; c < w; ++c) {
      const float v = squared(src[c]);
      colmax[c] = j == 0 ? v : std::max(colmax[c], v);
      std::pair<float, int32_t>* h = heaps + c * m;
      if (j < m) {
        h[j] = {v, static_cast<int32_t>(j)};
        if (j == m - 1) {
          std::make_heap(h, h + m);
          top[c] = h[0].first;
        }
      } else if (v < top[c]) {
        std::pop_heap(h, h + m);
        h[m - 1] = {v, static_cast<int32_t>(j)};
        std::push_heap(h, h + m);
        top[c] = h[0].first;
      }
    }
  }
  for (int64_t c = 0; c < w; ++c) std::sort_heap(heaps + c * m, heaps + (c + 1) * m);
}

// a·b accumulated in float64 (pass 2 weighs each expanded neighbour by its exact distance)
PYCSA_ALWAYS_INLINE double dot_double_body(const float* a, const float* b, int64_t d) {
  double dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(a[c]) * b[c];
  return dot;
}
PYCSA_ISA_VARIANTS(, , double, dot_double, (const float* a, const float* b, int64_t d), (a, b, d))

// Squared Euclidean distances computed from features Z = [Q; G] (N x d, float32),
// a block of rows at a time with one GEMM: D is never held. With every item a query
// against all items (leave-one-out), Z = G: the queries are rows [0, q = N) and the
// gallery starts at row gallery_row = 0.
struct FeatureDistances {
  static constexpr bool kScansRows = false;
  static constexpr bool kSymmetric = true;  // pass 1 computes each pair once (rank_symmetric)
  at::Tensor z;      // N x d
  at::Tensor norms;  // N, squared row norms
  int64_t q, g, gallery_row;

  int64_t n() const { return z.size(0); }
  int64_t goff() const { return gallery_row; }
  float d2(int64_t i, int64_t j) const {
    const int64_t d = z.size(1);
    const float* a = z.data_ptr<float>() + i * d;
    const float* b = z.data_ptr<float>() + j * d;
    const double dot = dot_double(a, b, d);
    const float* nr = norms.data_ptr<float>();
    return std::max(0.f, static_cast<float>(nr[i] + nr[j] - 2.0 * dot));
  }
  // out[ii * w + j] = d²(i0 + ii, c0 + j): rows [i0, i0 + nb) against columns [c0, c0 + w).
  void panel(int64_t i0, int64_t nb, int64_t c0, int64_t w, float* out) const {
    at::Tensor dst = at::from_blob(out, {nb, w}, z.options());
    at::mm_out(dst, z.narrow(0, i0, nb), z.narrow(0, c0, w).t());
    const float* nr = norms.data_ptr<float>();
    for (int64_t ii = 0; ii < nb; ++ii) products_to_squared(out + ii * w, nr[i0 + ii], nr + c0, w);
  }
  void stage(int64_t i0, int64_t nb, float* out) const { panel(i0, nb, 0, n(), out); }
  // out[a * N + j] = d²(rows[a], j) for nb listed rows against every column.
  void rows_panel(const int64_t* rows, int64_t nb, float* out) const {
    at::Tensor dst = at::from_blob(out, {nb, n()}, z.options());
    const at::Tensor idx = at::from_blob(const_cast<int64_t*>(rows), {nb}, at::kLong);
    at::mm_out(dst, z.index_select(0, idx), z.t());
    const float* nr = norms.data_ptr<float>();
    for (int64_t a = 0; a < nb; ++a) products_to_squared(out + a * n(), nr[rows[a]], nr, n());
  }
};

// Sparse rows: row r holds cols[ptr[r]..ptr[r+1]) ascending, with vals alongside.
struct Csr {
  std::vector<int64_t> ptr;
  std::vector<int32_t> cols;
  std::vector<float> vals;
};

Csr rows_to_csr(std::vector<std::vector<std::pair<int32_t, float>>>& rows) {
  Csr m;
  m.ptr.assign(rows.size() + 1, 0);
  for (size_t r = 0; r < rows.size(); ++r) m.ptr[r + 1] = m.ptr[r] + static_cast<int64_t>(rows[r].size());
  m.cols.resize(m.ptr.back());
  m.vals.resize(m.ptr.back());
  at::parallel_for(0, static_cast<int64_t>(rows.size()), 256, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      int64_t o = m.ptr[r];
      for (const auto& [c, v] : rows[r]) {
        m.cols[o] = c;
        m.vals[o++] = v;
      }
      std::vector<std::pair<int32_t, float>>().swap(rows[r]);
    }
  });
  return m;
}

// Column-major copy (CSC) of m with n columns: the inverted index of the original.
Csr transpose(const Csr& m, int64_t n) {
  Csr t;
  t.ptr.assign(n + 1, 0);
  for (int32_t c : m.cols) ++t.ptr[c + 1];
  for (int64_t c = 0; c < n; ++c) t.ptr[c + 1] += t.ptr[c];
  t.cols.resize(m.cols.size());
  t.vals.resize(m.vals.size());
  std::vector<int64_t> next(t.ptr.begin(), t.ptr.end() - 1);
  const int64_t rows = static_cast<int64_t>(m.ptr.size()) - 1;
  for (int64_t r = 0; r < rows; ++r) {  // rows in order: each column's list is ascending
    for (int64_t o = m.ptr[r]; o < m.ptr[r + 1]; ++o) {
      const int64_t dst = next[m.cols[o]]++;
      t.cols[dst] = static_cast<int32_t>(r);
      t.vals[dst] = m.vals[o];
    }
  }
  return t;
}

// The m smallest of row[0..n) into out, ascending, equal values by lower index.
// One pass with a max-heap of the best m so far: most values fail the first
// comparison, so this is ~n comparisons (a full sort per row was the bottleneck).
void smallest(const float* row, int64_t n, int64_t m, int32_t* out, std::vector<std::pair<float, int32_t>>& heap) {
  heap.clear();
  for (int64_t j = 0; j < m; ++j) heap.emplace_back(row[j], static_cast<int32_t>(j));
  std::make_heap(heap.begin(), heap.end());  // pair order: (value, index), largest on top
  for (int64_t j = m; j < n; ++j) {
    // A later index never wins a tie, so only a strictly smaller value enters.
    if (row[j] < heap.front().first) {
      std::pop_heap(heap.begin(), heap.end());
      heap.back() = {row[j], static_cast<int32_t>(j)};
      std::push_heap(heap.begin(), heap.end());
    }
  }
  std::sort_heap(heap.begin(), heap.end());
  for (int64_t j = 0; j < m; ++j) out[j] = heap[j].second;
}

// Per thread: each row's m best (value, column) pairs so far, among at most 4m kept unsorted,
// and the bound a new value must not exceed. A value within the bound is appended; a full
// buffer is cut back to its m best by nth_element, which tightens the bound. That is a store
// per candidate where a heap of m took a pop and a push (its cache lines missed, one row's
// heap after another's): the heaps took as long as the GEMM. Pairs arrive in any column
// order, and (value, column) order keeps the lower column on a tie, as a row scan does.
struct RowCandidates {
  static constexpr int64_t kSlack = 4;  // the buffer holds kSlack·m pairs
  int64_t m, cap;
  std::vector<std::pair<float, int32_t>> pairs;  // N x cap, the first size[r] in use
  std::vector<int32_t> size;                    // N
  std::vector<float> worst;                     // N: the m-th best value at the last cut, +inf before
  std::vector<float> max;                       // N

  RowCandidates(int64_t n, int64_t m_)
      : m(m_), cap(kSlack * m_), pairs(n * kSlack * m_), size(n, 0), worst(n, std::numeric_limits<float>::infinity()),
        max(n, 0.f) {}

  // The caller has checked v <= worst[r]; an equal value may still hold a lower column.
  PYCSA_ALWAYS_INLINE void push(int64_t r, float v, int32_t c) {
    std::pair<float, int32_t>* h = pairs.data() + r * cap;
    int32_t& s = size[r];
    h[s++] = {v, c};
    if (s == cap) {
      std::nth_element(h, h + (m - 1), h + cap);
      s = static_cast<int32_t>(m);
      worst[r] = h[m - 1].first;
    }
  }
};

// max(start, row[0..n)) with eight running maxima: a single one is a dependency chain that
// GCC leaves scalar (4 cycles a value, a third of pass 1 from features). No NaN reaches here.
PYCSA_ALWAYS_INLINE float largest(const float* row, int64_t n, float start) {
  float lane[8];
  for (int l = 0; l < 8; ++l) lane[l] = start;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) lane[l] = lane[l] < row[j + l] ? row[j + l] : lane[l];
  for (; j < n; ++j) start = start < row[j] ? row[j] : start;
  for (int l = 0; l < 8; ++l) start = start < lane[l] ? lane[l] : start;
  return start;
}

// One row of a pass-1 tile (row i, columns c0..c0 + w): every value to row i's best, and
// the values from `nb` on (past the diagonal block) to their columns' best. A chunk of 16
// values is compared with the bounds first: nearly every chunk has no candidate, so the
// per-value work is a vector compare.
PYCSA_ALWAYS_INLINE void panel_row_body(RowCandidates& H, const float* row, int64_t i, int64_t c0, int64_t nb,
                                        int64_t w) {
  constexpr int64_t kChunk = 16;
  H.max[i] = largest(row, w, H.max[i]);
  for (int64_t j0 = 0; j0 < w; j0 += kChunk) {
    const int64_t n = std::min(kChunk, w - j0);
    const float bound = H.worst[i];
    uint32_t mask = 0;
    for (int64_t j = 0; j < n; ++j) mask |= static_cast<uint32_t>(row[j0 + j] <= bound) << j;
    // only the chunk's candidates, lowest column first; a cut may tighten the bound meanwhile
    for (; mask; mask &= mask - 1) {
      const int64_t j = j0 + __builtin_ctz(mask);
      if (row[j] <= H.worst[i]) H.push(i, row[j], static_cast<int32_t>(c0 + j));
    }
  }
  float* cmax = H.max.data() + c0;
  const float* cworst = H.worst.data() + c0;
#pragma omp simd
  for (int64_t j = nb; j < w; ++j) cmax[j] = std::max(cmax[j], row[j]);
  for (int64_t j0 = nb; j0 < w; j0 += kChunk) {
    const int64_t n = std::min(kChunk, w - j0);
    uint32_t mask = 0;
    for (int64_t j = 0; j < n; ++j) mask |= static_cast<uint32_t>(row[j0 + j] <= cworst[j0 + j]) << j;
    for (; mask; mask &= mask - 1) {  // each a different column: no bound changes under us
      const int64_t j = j0 + __builtin_ctz(mask);
      H.push(c0 + j, row[j], static_cast<int32_t>(i));
    }
  }
}
#if defined(__x86_64__) && defined(__GNUC__)
// panel_row_body with the compares 8 at a time and their masks from movemask: GCC builds the
// portable loop's masks a bit at a time and its maxima scalar. With the seeded bounds below,
// 3 % of the whole call at Market size (AVX2). The AVX-512 build runs the same 8-wide code.
PYCSA_TARGET_AVX2 void panel_row_vec8(RowCandidates& H, const float* row, int64_t i, int64_t c0, int64_t nb,
                                             int64_t w) {
  float bound = H.worst[i];
  __m256 vbound = _mm256_set1_ps(bound), vmax = _mm256_set1_ps(H.max[i]);
  int64_t j = 0;
  for (; j + 8 <= w; j += 8) {
    const __m256 v = _mm256_loadu_ps(row + j);
    vmax = _mm256_max_ps(vmax, v);
    unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, vbound, _CMP_LE_OQ)));
    if (!mask) continue;
    for (; mask; mask &= mask - 1) {  // lowest column first; a cut may tighten the bound meanwhile
      const int64_t jj = j + __builtin_ctz(mask);
      if (row[jj] <= H.worst[i]) H.push(i, row[jj], static_cast<int32_t>(c0 + jj));
    }
    bound = H.worst[i];
    vbound = _mm256_set1_ps(bound);
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, vmax);
  float mx = lanes[0];
  for (int l = 1; l < 8; ++l) mx = std::max(mx, lanes[l]);
  for (; j < w; ++j) {
    mx = std::max(mx, row[j]);
    if (row[j] <= H.worst[i]) H.push(i, row[j], static_cast<int32_t>(c0 + j));
  }
  H.max[i] = mx;
  float* cmax = H.max.data() + c0;
  const float* cworst = H.worst.data() + c0;
  j = nb;
  for (; j + 8 <= w; j += 8) {
    const __m256 v = _mm256_loadu_ps(row + j);
    _mm256_storeu_ps(cmax + j, _mm256_max_ps(_mm256_loadu_ps(cmax + j), v));
    unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_loadu_ps(cworst + j), _CMP_LE_OQ)));
    for (; mask; mask &= mask - 1) {  // each a different column: no bound changes under us
      const int64_t jj = j + __builtin_ctz(mask);
      H.push(c0 + jj, row[jj], static_cast<int32_t>(i));
    }
  }
  for (; j < w; ++j) {
    cmax[j] = std::max(cmax[j], row[j]);
    if (row[j] <= cworst[j]) H.push(c0 + j, row[j], static_cast<int32_t>(i));
  }
}
#endif
// The AVX2 and AVX-512 builds scan with panel_row_vec8, the generic one with the portable body.
void panel_row(RowCandidates& H, const float* row, int64_t i, int64_t c0, int64_t nb, int64_t w) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_isa() != Isa::kDefault) return panel_row_vec8(H, row, i, c0, nb, w);
#endif
  panel_row_body(H, row, i, c0, nb, w);
}

// Upper bounds on each row's m-th smallest d² (the value pass 1 keeps a row's candidates
// under), from a small subset of columns: rows are put in cells by their nearest of N/128
// landmark rows, and each row's d² to its cell mates (a GEMM per cell, at most kSeedChunk rows
// at a time) gives, at its m-th smallest, a bound. Pass 1 starts each row's candidates under it
// instead of +inf, and appends far fewer of them (3.4M instead of 10.5M at Market size: the
// appends and cuts cost more than the scan itself). A row whose cell is smaller than m keeps
// +inf. The bound is raised by `margin` times the two norms: the same pair's d² computed by
// pass 1's GEMM may differ by rounding (each product within γ_d·|a||b| of the exact one, so
// the two d² within 4γ_d·|a||b| <= 2γ_d·(|a|² + |b|²), plus a few ulps of |a|² + |b|² for
// the sums). Pass 1 checks the bounds anyway: a row left with fewer than m candidates had too
// low a bound, and is ranked again from its full row (its d² then come from another GEMM,
// which may round a near-tie differently; with this margin no row has been seen to need it).
constexpr int64_t kSeedCell = 128;   // rows per landmark
constexpr int64_t kSeedChunk = 512;  // cell mates a row is compared with, at most

std::vector<float> seed_bounds(const FeatureDistances& D, int64_t m) {
  const int64_t N = D.n(), d = D.z.size(1);
  std::vector<float> bound(N, std::numeric_limits<float>::infinity());
  const int64_t P = std::max<int64_t>(1, N / kSeedCell);
  const double scale = seed_scale.load();
  if (N < 2 * m || scale < 0) return bound;
  const float* nr = D.norms.data_ptr<float>();
  const float max_norm = *std::max_element(nr, nr + N);
  const double u = std::ldexp(1.0, -24), gamma = d * u / (1 - d * u);
  const float margin = static_cast<float>(2 * (2 * gamma + 8 * u));  // twice the rounding bound above

  // each row's cell: its nearest landmark (evenly spaced rows), ties to the lower landmark
  std::vector<int32_t> cell(N, 0);
  if (P > 1) {
    at::Tensor idx = at::arange(P, at::kLong).mul_(N).div_(P, "floor");
    at::Tensor L = D.z.index_select(0, idx);
    at::Tensor lnorm = D.norms.index_select(0, idx);
    const float* ln = lnorm.data_ptr<float>();
    at::parallel_for(0, N, kBlock, [&](int64_t lo, int64_t hi) {
      std::vector<float> prod(kBlock * P);  // a block of rows at a time: N x P would be N² / 128
      for (int64_t r0 = lo; r0 < hi; r0 += kBlock) {
        const int64_t nb = std::min(kBlock, hi - r0);
        // mm_out: a plain mm would follow the caller's autocast into bfloat16
        at::Tensor dst = at::from_blob(prod.data(), {nb, P}, D.z.options());
        at::mm_out(dst, D.z.narrow(0, r0, nb), L.t());
        for (int64_t r = r0; r < r0 + nb; ++r) {
          const float* row = prod.data() + (r - r0) * P;
          int32_t best = 0;
          float best_v = ln[0] - 2.f * row[0];
          for (int64_t k = 1; k < P; ++k) {
            const float v = ln[k] - 2.f * row[k];
            if (v < best_v) best_v = v, best = static_cast<int32_t>(k);
          }
          cell[r] = best;
        }
      }
    });
  }
  std::vector<int64_t> start(P + 1, 0);
  for (int32_t c : cell) ++start[c + 1];
  for (int64_t c = 0; c < P; ++c) start[c + 1] += start[c];
  std::vector<int64_t> members(N), next(start.begin(), start.end() - 1);
  for (int64_t r = 0; r < N; ++r) members[next[cell[r]]++] = r;

  at::parallel_for(0, P, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> vals, gram;
    for (int64_t c = lo; c < hi; ++c) {
      const int64_t s = start[c + 1] - start[c];
      if (s < m) continue;
      // near-equal chunks of at least s / chunks rows: past kSeedChunk / 2 that may be below m,
      // and such a chunk's rows keep +inf
      const int64_t chunks = (s + kSeedChunk - 1) / kSeedChunk;
      for (int64_t k = 0; k < chunks; ++k) {
        const int64_t a0 = start[c] + k * s / chunks, a1 = start[c] + (k + 1) * s / chunks, w = a1 - a0;
        if (w < m) continue;
        at::Tensor rows = at::from_blob(members.data() + a0, {w}, at::kLong);
        at::Tensor Zc = D.z.index_select(0, rows);
        gram.resize(w * w);
        at::Tensor G = at::from_blob(gram.data(), {w, w}, D.z.options());
        at::mm_out(G, Zc, Zc.t());
        const float* gp = gram.data();
        vals.resize(w);
        for (int64_t a = 0; a < w; ++a) {
          const int64_t ra = members[a0 + a];
          for (int64_t b = 0; b < w; ++b) vals[b] = std::max(0.f, nr[ra] + nr[members[a0 + b]] - 2.f * gp[a * w + b]);
          std::nth_element(vals.begin(), vals.begin() + (m - 1), vals.end());
          bound[ra] = static_cast<float>(scale * (vals[m - 1] + margin * (nr[ra] + max_norm)));
        }
      }
    }
  });
  return bound;
}

// Pass 1 from features. D is symmetric, so the rows of block I are multiplied only with
// the columns from I's first row on (half the GEMM work of staging every full row): each
// value goes to its row's candidates and, past the diagonal block, to its column's. They are
// per thread and merged at the end. Query rows' distances to the gallery are written into
// `out` (q x g), where pass 3 reads them instead of computing them again.
void rank_symmetric(const FeatureDistances& D, int64_t m, float* colmax, int32_t* rank, float* out) {
  const int64_t N = D.n(), q = D.q, g = D.g, goff = D.goff();
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  // Block b's panel is N - b·kBlock wide: task t takes blocks t and blocks-1-t, so every
  // task has the same products. Threads take the next task as they finish one: query rows
  // and candidate counts still vary (a static split left one thread idle 16 % of pass 1).
  const int64_t tasks = (blocks + 1) / 2;
  std::atomic<int64_t> next{0};
  const std::vector<float> seeds = seed_bounds(D, m);
  std::vector<std::unique_ptr<RowCandidates>> per_thread(at::get_num_threads());
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), tasks), 1, [&](int64_t, int64_t) {
    auto& mine = per_thread[at::get_thread_num()];
    if (!mine) {
      mine = std::make_unique<RowCandidates>(N, m);
      mine->worst = seeds;
    }
    RowCandidates& H = *mine;
    std::vector<float> tile(kBlock * kTile);
    for (int64_t t; (t = next.fetch_add(1)) < tasks;) {
      const int64_t pair[2] = {t, blocks - 1 - t};  // one block when the count is odd
      for (int64_t x = 0; x < (pair[0] == pair[1] ? 1 : 2); ++x) {
        const int64_t b = pair[x];
        const int64_t i0 = b * kBlock, nb = std::min(kBlock, N - i0);
        // the block's columns i0..N a tile at a time: each tile is scanned while in cache
        for (int64_t c0 = i0; c0 < N; c0 += kTile) {
          const int64_t w = std::min(kTile, N - c0);
          const int64_t diag = c0 == i0 ? nb : 0;  // the diagonal block's columns: rows' own
          D.panel(i0, nb, c0, w, tile.data());
          for (int64_t ii = 0; ii < nb; ++ii) {
            const int64_t i = i0 + ii;
            const float* row = tile.data() + ii * w;
            panel_row(H, row, i, c0, diag, w);
            if (i < q) {  // a query row: its distances to the gallery, for pass 3
              const int64_t c = std::max(goff, c0);
              if (c < c0 + w) std::copy(row + (c - c0), row + w, out + i * g + (c - goff));
            }
          }
          // query columns past this block meet the block's gallery rows here (leave-one-out:
          // goff = 0), written a column at a time: contiguous in out, read from the cached tile
          const int64_t r0 = std::max(i0, goff);
          for (int64_t c = std::max(i0 + nb, c0); c < std::min(q, c0 + w) && r0 < i0 + nb; ++c) {
            float* dst = out + c * g + (r0 - goff);
            for (int64_t i = r0; i < i0 + nb; ++i) *dst++ = tile[(i - i0) * w + (c - c0)];
          }
        }
      }
    }
  });
  at::parallel_for(0, N, 256, [&](int64_t lo, int64_t hi) {
    std::vector<std::pair<float, int32_t>> all;
    for (int64_t r = lo; r < hi; ++r) {
      all.clear();
      float mx = 0.f;
      for (const auto& H : per_thread) {
        if (!H) continue;
        const auto* h = H->pairs.data() + r * H->cap;
        all.insert(all.end(), h, h + H->size[r]);
        mx = std::max(mx, H->max[r]);
      }
      colmax[r] = mx;
      if (static_cast<int64_t>(all.size()) < m) {  // its starting bound was too low: below
        rank[r * m] = -1;
        continue;
      }
      std::partial_sort(all.begin(), all.begin() + m, all.end());
      for (int64_t a = 0; a < m; ++a) rank[r * m + a] = all[a].second;
    }
  });
  std::vector<int64_t> again;
  for (int64_t r = 0; r < N; ++r)
    if (rank[r * m] < 0) again.push_back(r);
  at::parallel_for(0, static_cast<int64_t>(again.size()), kBlock, [&](int64_t lo, int64_t hi) {
    std::vector<float> rows(std::min(kBlock, hi - lo) * N);
    std::vector<std::pair<float, int32_t>> heap;
    for (int64_t a0 = lo; a0 < hi; a0 += kBlock) {
      const int64_t nb = std::min(kBlock, hi - a0);
      D.rows_panel(again.data() + a0, nb, rows.data());
      for (int64_t a = 0; a < nb; ++a) smallest(rows.data() + a * N, N, m, rank + again[a0 + a] * m, heap);
    }
  });
}

template <typename Distances>
at::Tensor k_reciprocal_impl(const Distances& D, int64_t k1, int64_t k2, float lambda) {
  const int64_t N = D.n(), q = D.q, g = D.g, goff = D.goff();
  k1 = std::min(k1, N - 1);
  k2 = std::min(k2, N);
  const int64_t m = std::max(k1 + 1, k2);  // ranks kept per row
  // numpy's around() rounds half to even; so does nearbyint in the default mode.
  const int64_t half = std::min<int64_t>(static_cast<int64_t>(std::nearbyint(k1 / 2.0)), N - 1);

  // Pass 1: column maxima and the top-m ranks of every row of the normalised matrix
  // (dividing a row by its positive maximum keeps its order, so raw d² is ranked).
  std::vector<float> colmax(N);
  std::vector<int32_t> rank(N * m);
  auto rank_staged = [&](int64_t first, int64_t last) {  // rows [first, last) via D.stage
    at::parallel_for(first, last, kBlock, [&](int64_t lo, int64_t hi) {
      std::vector<float> stage(kBlock * N);
      std::vector<std::pair<float, int32_t>> heap;
      for (int64_t i0 = lo; i0 < hi; i0 += kBlock) {
        const int64_t nb = std::min(kBlock, hi - i0);
        D.stage(i0, nb, stage.data());
        for (int64_t ii = 0; ii < nb; ++ii) {
          const float* row = stage.data() + ii * N;
          colmax[i0 + ii] = *std::max_element(row, row + N);
          smallest(row, N, m, rank.data() + (i0 + ii) * m, heap);
        }
      }
    });
  };
  at::Tensor out = at::empty({q, g}, at::kFloat);
  float* o = out.data_ptr<float>();
  // The symmetric pass keeps N x kSlack·m candidate pairs per thread: beyond symmetric_heap_limit
  // bytes of them (a large k1 on a large set) it stages full rows instead, O(m) per thread.
  const double candidate_bytes = static_cast<double>(at::get_num_threads()) * N * m * RowCandidates::kSlack *
                                 sizeof(std::pair<float, int32_t>);
  const bool symmetric =
      Distances::kSymmetric && candidate_bytes <= static_cast<double>(symmetric_heap_limit.load());
  if (symmetric) {
    if constexpr (Distances::kSymmetric) rank_symmetric(D, m, colmax.data(), rank.data(), o);
  } else if constexpr (Distances::kScansRows) {
    // Columns of the query part are staged (their big part is a row of q_g); the
    // gallery columns are scanned row by row, so g_g is read once, contiguously.
    rank_staged(0, q);
    at::parallel_for(q, N, 256, [&](int64_t lo, int64_t hi) {
      std::vector<std::pair<float, int32_t>> heaps((hi - lo) * m);
      scan_gallery_columns(D, lo, hi, m, colmax.data() + lo, heaps.data());
      for (int64_t c = lo; c < hi; ++c)
        for (int64_t a = 0; a < m; ++a) rank[c * m + a] = heaps[(c - lo) * m + a].second;
    });
  } else {
    rank_staged(0, N);
  }
  auto orig = [&](int64_t i, int64_t j) {  // normalised distance, row i (= column i of D)
    return colmax[i] > 0 ? D.d2(i, j) / colmax[i] : 0.f;
  };
  auto in_top = [&](int64_t row, int64_t len, int64_t x) {
    const int32_t* r = rank.data() + row * m;
    return std::find(r, r + len, static_cast<int32_t>(x)) != r + len;
  };

  // Pass 2: V, one sparse row per item: softmax(-dist) over the expanded k-reciprocal set.
  std::vector<std::vector<std::pair<int32_t, float>>> rows(N);
  at::parallel_for(0, N, 64, [&](int64_t lo, int64_t hi) {
    std::vector<int32_t> recip, cand, expanded;
    for (int64_t i = lo; i < hi; ++i) {
      recip.clear();
      for (int64_t a = 0; a <= k1; ++a) {
        const int32_t c = rank[i * m + a];
        if (in_top(c, k1 + 1, i)) recip.push_back(c);
      }
      expanded = recip;
      std::vector<int32_t> recip_sorted = recip;
      std::sort(recip_sorted.begin(), recip_sorted.end());
      for (int32_t c : recip) {
        cand.clear();
        for (int64_t a = 0; a <= half; ++a) {
          const int32_t x = rank[c * m + a];
          if (in_top(x, half + 1, c)) cand.push_back(x);
        }
        int64_t common = 0;
        for (int32_t x : cand) common += std::binary_search(recip_sorted.begin(), recip_sorted.end(), x);
        if (static_cast<double>(common) > 2.0 / 3.0 * static_cast<double>(cand.size()))
          expanded.insert(expanded.end(), cand.begin(), cand.end());
      }
      std::sort(expanded.begin(), expanded.end());
      expanded.erase(std::unique(expanded.begin(), expanded.end()), expanded.end());
      auto& row = rows[i];
      row.reserve(expanded.size());
      float total = 0.f;
      for (int32_t j : expanded) {
        const float w = std::exp(-orig(i, j));
        row.emplace_back(j, w);
        total += w;
      }
      for (auto& e : row) e.second /= total;
    }
  });
  Csr V = rows_to_csr(rows);

  // Local query expansion: V[i] <- mean of V over the top-k2 of i.
  if (k2 != 1) {
    std::vector<std::vector<std::pair<int32_t, float>>> qe(N);
    at::parallel_for(0, N, 64, [&](int64_t lo, int64_t hi) {
      std::vector<float> acc(N, 0.f);
      std::vector<int32_t> touched;
      for (int64_t i = lo; i < hi; ++i) {
        touched.clear();
        for (int64_t a = 0; a < k2; ++a) {
          const int32_t r = rank[i * m + a];
          for (int64_t o = V.ptr[r]; o < V.ptr[r + 1]; ++o) {
            if (acc[V.cols[o]] == 0.f) touched.push_back(V.cols[o]);
            acc[V.cols[o]] += V.vals[o];
          }
        }
        std::sort(touched.begin(), touched.end());
        auto& row = qe[i];
        row.reserve(touched.size());
        for (int32_t c : touched) {
          row.emplace_back(c, acc[c] / static_cast<float>(k2));
          acc[c] = 0.f;
        }
      }
    });
    V = rows_to_csr(qe);
  }
  const Csr inv = transpose(V, N);

  // Pass 3: Jaccard distance of each query to every item, through the inverted index.
  const float w_jac = static_cast<float>(1.0 - lambda), w_orig = lambda;
  at::parallel_for(0, (q + kBlock - 1) / kBlock, 1, [&](int64_t blo, int64_t bhi) {
    std::vector<float> acc(N), stage(symmetric ? 0 : kBlock * N);
    for (int64_t blk = blo; blk < bhi; ++blk) {
      const int64_t i0 = blk * kBlock, nb = std::min(kBlock, q - i0);
      // the original distances of these queries (from features: already in out, pass 1)
      if (!symmetric) D.stage(i0, nb, stage.data());
      for (int64_t ii = 0; ii < nb; ++ii) {
        const int64_t i = i0 + ii;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t a = V.ptr[i]; a < V.ptr[i + 1]; ++a) {
          const int32_t l = V.cols[a];
          const float v = V.vals[a];
          for (int64_t b = inv.ptr[l]; b < inv.ptr[l + 1]; ++b) acc[inv.cols[b]] += std::min(v, inv.vals[b]);
        }
        const float* d2 = symmetric ? o + i * g : stage.data() + ii * N + goff;
        final_row(acc.data() + goff, d2, colmax[i], w_jac, w_orig, o + i * g, g);
      }
    }
  });
  return out;
}

}  // namespace

void set_k_reciprocal_heap_limit(int64_t bytes) { symmetric_heap_limit.store(bytes); }
void set_k_reciprocal_seed_scale(double scale) { seed_scale.store(scale); }

at::Tensor k_reciprocal_cpu(const at::Tensor& q_g, const at::Tensor& q_q, const at::Tensor& g_g,
                            int64_t k1, int64_t k2, double lambda) {
  check_k_reciprocal_matrices(q_g, q_q, g_g);
  TORCH_CHECK_VALUE(q_g.device().is_cpu(), "q_g_dist/q_q_dist/g_g_dist: expected CPU tensors");
  check_k_reciprocal_args(k1, k2, lambda);
  const int64_t q = q_g.size(0), g = q_g.size(1);
  const at::Tensor a = q_g.contiguous(), b = q_q.contiguous(), c = g_g.contiguous();
  if (a.scalar_type() == at::kDouble) {
    return k_reciprocal_impl(MatrixDistances<double>{a.data_ptr<double>(), b.data_ptr<double>(), c.data_ptr<double>(), q, g},
                             k1, k2, static_cast<float>(lambda));
  }
  TORCH_CHECK_TYPE(a.scalar_type() == at::kFloat, "q_g_dist: expected float32 or float64, got ", a.scalar_type());
  return k_reciprocal_impl(MatrixDistances<float>{a.data_ptr<float>(), b.data_ptr<float>(), c.data_ptr<float>(), q, g},
                           k1, k2, static_cast<float>(lambda));
}

at::Tensor k_reciprocal_features_cpu(const at::Tensor& query, const at::Tensor& gallery, int64_t k1, int64_t k2,
                                     double lambda) {
  check_k_reciprocal_features(query, gallery);
  TORCH_CHECK_VALUE(query.device().is_cpu(), "query_feats/gallery_feats: expected CPU tensors");
  check_k_reciprocal_args(k1, k2, lambda);
  at::Tensor z = at::cat({query, gallery}, 0).to(at::kFloat).contiguous();
  at::Tensor norms = z.mul(z).sum(1);
  return k_reciprocal_impl(FeatureDistances{z, norms, query.size(0), gallery.size(0), query.size(0)}, k1, k2,
                           static_cast<float>(lambda));
}

at::Tensor k_reciprocal_self_cpu(const at::Tensor& feats, int64_t k1, int64_t k2, double lambda) {
  check_k_reciprocal_features(feats, feats);
  TORCH_CHECK_VALUE(feats.device().is_cpu(), "feats: expected a CPU tensor");
  check_k_reciprocal_args(k1, k2, lambda);
  at::Tensor z = feats.to(at::kFloat).contiguous();
  at::Tensor norms = z.mul(z).sum(1);
  const int64_t n = z.size(0);
  return k_reciprocal_impl(FeatureDistances{z, norms, n, n, 0}, k1, k2, static_cast<float>(lambda));
}

}  // namespace pycsa
