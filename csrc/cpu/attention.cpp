// CPU attention, flash style: one work item is a block of kBlockQ query rows of one
// (sequence, head); it walks the valid keys kBlockK at a time, scores them with a
// BLAS GEMM, folds them into an online softmax and accumulates P·V with a second
// GEMM. Keys at or past a sequence's length are never read, so a ragged batch
// costs what its real tokens cost. Extra memory per thread: K^T and V of one
// (sequence, head) in the GEMM type, plus kBlockQ x (kBlockK + D) floats; never T x T.
#include "../attention.h"
#include "cpu_features.h"
#include "isa.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/scaled_dot_product_attention.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace pycsa {
namespace {

constexpr int64_t kBlockQ = 256;  // query rows per work item: BLAS packs each key block once per 256 rows
constexpr int64_t kBlockK = 512;   // keys per GEMM: 256 x 512 scores (512 KB) stay in L2

// exp(x), relative error < 2e-7 on [-87, 88]; branch-free so loops over it vectorise.
PYCSA_ALWAYS_INLINE float exp_fast(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float t = x * 1.44269504088896341f;
  // Round to nearest by the 1.5 * 2^23 trick: SSE2 has no vector floor.
  const float n = (t + 12582912.0f) - 12582912.0f;
  const float y = (t - n) * 0.693147180559945309f;  // |y| <= ln2 / 2
  const float p =
      1.0f + y * (1.0f + y * (0.5f + y * (1.0f / 6 + y * (1.0f / 24 + y * (1.0f / 120 + y * (1.0f / 720))))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(float));
  return p * two_n;
}

// Folds a block of scores s (rows x cols, leading dimension ld) into the running
// softmax of each row: running max m, running sum l, output accumulator o (rows x D)
// rescaled to the new max. s is overwritten with the unnormalised weights.
// Written so the compiler vectorises it; compiled per instruction set (isa.h).
PYCSA_ALWAYS_INLINE void online_softmax_block_body(float* s, int64_t rows, int64_t cols, int64_t ld, float scale,
                                                   float* m, float* l, float* o, int64_t D) {
  for (int64_t i = 0; i < rows; ++i) {
    float* si = s + i * ld;
    float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < cols; ++j) mx = std::max(mx, si[j]);
    const float m_new = std::max(m[i], mx * scale);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; ++j) {
      const float p = exp_fast(si[j] * scale - m_new);
      si[j] = p;
      sum += p;
    }
    const float corr = exp_fast(m[i] - m_new);  // m[i] = -inf on the first block: corr = 0
    m[i] = m_new;
    l[i] = l[i] * corr + sum;
    float* oi = o + i * D;
#pragma omp simd
    for (int64_t c = 0; c < D; ++c) oi[c] *= corr;
  }
}

PYCSA_ISA_VARIANTS(, , void, online_softmax_block,
                   (float* s, int64_t rows, int64_t cols, int64_t ld, float scale, float* m, float* l, float* o,
                    int64_t D),
                   (s, rows, cols, ld, scale, m, l, o, D))

// The Fortran BLAS that torch links (MKL on x86 wheels, OpenBLAS on ARM) and exports.
// Weak, so a torch without it still loads us; then brgemm does the work.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));

// C (M x N, row-major) = A (M x K) B (K x N) [+ C].
// float goes to the BLAS sgemm, which has its own per-ISA code (as SDPA's does):
// oneDNN's brgemm, used before, has no fast float path below AVX-512 and made the
// kernel 1.6x slower than SDPA on AVX2 (measured with ONEDNN_MAX_CPU_ISA=AVX2).
// bfloat16 reaches here only where the CPU has AMX tiles, brgemm's home ground.
// Sizes are at most max(T, kBlockK, D), checked to fit an int by the caller.
inline void gemm_into(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, bool accumulate,
                      const float* a, const float* b, float* c) {
  if (sgemm_ == nullptr) {
    at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, accumulate, a, b, c, /*is_vnni=*/false);
    return;
  }
  // Row-major C = A B is column-major C^T = B^T A^T.
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  const float one = 1.f, beta = accumulate ? 1.f : 0.f;
  sgemm_("N", "N", &m, &n, &k, &one, b, &la, a, &lb, &beta, c, &lc);
}

inline void gemm_into(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, bool accumulate,
                      const at::BFloat16* a, const at::BFloat16* b, float* c) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, accumulate, a, b, c, /*is_vnni=*/false);
}

template <typename scalar_t, typename gemm_t>
void attention_cpu_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const int64_t* lengths,
                        float scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t q_blocks = (T + kBlockQ - 1) / kBlockQ;
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  auto at4 = [](const at::Tensor& t, const scalar_t* base, int64_t b, int64_t h, int64_t i) {
    return base + b * t.stride(0) + h * t.stride(1) + i * t.stride(2);
  };

  at::parallel_for(0, B * H * q_blocks, 1, [&](int64_t lo, int64_t hi) {
    std::vector<gemm_t> kt(D * T), vb(T * D), qb(kBlockQ * D), pb;
    std::vector<float> s(kBlockQ * kBlockK), o(kBlockQ * D), m(kBlockQ), l(kBlockQ);
    if constexpr (!std::is_same_v<gemm_t, float>) pb.resize(kBlockQ * kBlockK);
    int64_t packed = -1;  // the (sequence, head) whose K^T and V are in kt, vb

    for (int64_t item = lo; item < hi; ++item) {
      const int64_t bh = item / q_blocks, b = bh / H, h = bh % H;
      const int64_t q0 = (item % q_blocks) * kBlockQ, q1 = std::min(q0 + kBlockQ, T);
      const int64_t len = lengths ? lengths[b] : T;
      const int64_t rows = std::clamp<int64_t>(len - q0, 0, q1 - q0);
      scalar_t* out_rows = op + (bh * T + q0) * D;
      std::fill(out_rows + rows * D, out_rows + (q1 - q0) * D, scalar_t(0));  // rows past the length
      if (rows == 0) continue;

      if (packed != bh) {
        // K^T in tiles of 16 keys, so each write fills a cache line instead of touching
        // D lines 4 KB apart per key.
        for (int64_t j0 = 0; j0 < len; j0 += 16) {
          const int64_t nj = std::min<int64_t>(16, len - j0);
          const scalar_t* kr[16];
          for (int64_t j = 0; j < nj; ++j) {
            kr[j] = at4(k, kp, b, h, j0 + j);
            const scalar_t* vr = at4(v, vp, b, h, j0 + j);
            for (int64_t c = 0; c < D; ++c) vb[(j0 + j) * D + c] = static_cast<gemm_t>(vr[c]);
          }
          for (int64_t c = 0; c < D; ++c)
            for (int64_t j = 0; j < nj; ++j) kt[c * len + j0 + j] = static_cast<gemm_t>(kr[j][c]);
        }
        packed = bh;
      }
      for (int64_t i = 0; i < rows; ++i) {
        const scalar_t* qr = at4(q, qp, b, h, q0 + i);
        for (int64_t c = 0; c < D; ++c) qb[i * D + c] = static_cast<gemm_t>(qr[c]);
      }
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.f);
      std::fill(o.begin(), o.end(), 0.f);

      for (int64_t k0 = 0; k0 < len; k0 += kBlockK) {
        const int64_t cols = std::min(kBlockK, len - k0);
        gemm_into(rows, cols, D, D, len, kBlockK, false, qb.data(), kt.data() + k0, s.data());
        online_softmax_block(s.data(), rows, cols, kBlockK, scale, m.data(), l.data(), o.data(), D);
        const gemm_t* p = nullptr;
        if constexpr (std::is_same_v<gemm_t, float>) {
          p = s.data();
        } else {
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) pb[i * kBlockK + j] = static_cast<gemm_t>(s[i * kBlockK + j]);
          p = pb.data();
        }
        gemm_into(rows, D, cols, kBlockK, D, D, true, p, vb.data() + k0 * D, o.data());
      }
      for (int64_t i = 0; i < rows; ++i) {
        const float inv = 1.f / l[i];  // l >= 1: the row's max term contributes exp(0)
        for (int64_t c = 0; c < D; ++c) out_rows[i * D + c] = static_cast<scalar_t>(o[i * D + c] * inv);
      }
    }
  });
}

// Where every sequence is full, PyTorch's own flash attention (SDPA) has no padding to
// skip and measured 6-15% faster than this kernel (2-core EPYC, AVX-512 and AVX2-capped,
// bench/cpu_side_by_side.py), so dense batches go there. Ragged batches go to SDPA one
// sequence at a time, on its valid part alone: 8 x 1,024 tokens with lengths 128..1,024,
// 12 heads x 64, took 56-81 ms that way against 141-179 ms in this kernel and 116-198 ms in
// padded SDPA (2-core Intel VM, AVX-512 and AVX2-capped). Only short sequences stay here, where
// a call per sequence costs more than it saves (256 lists of 4..32 tokens: 12 ms here, 17 ms
// per sequence). Tests turn both off to hold the kernel itself to the reference.
std::atomic<bool> to_sdpa{true};
constexpr int64_t kSdpaPerSequenceMinMeanLength = 32;

// out[b, :, :L_b] = SDPA of sequence b's first L_b tokens; the rows past L_b stay zero, as
// the kernel and the reference leave them.
at::Tensor sdpa_per_sequence(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& len,
                             double scale) {
  at::Tensor out = at::zeros(q.sizes(), q.options());
  const at::Tensor lc = len.contiguous();
  const int64_t* lp = lc.data_ptr<int64_t>();
  for (int64_t b = 0; b < q.size(0); ++b) {
    const int64_t L = lp[b];
    if (L == 0) continue;
    auto part = [&](const at::Tensor& t) { return t.narrow(0, b, 1).narrow(2, 0, L); };
    part(out).copy_(at::scaled_dot_product_attention(part(q), part(k), part(v), std::nullopt, 0.0, false, scale));
  }
  return out;
}

enum class CpuPath { kSdpa, kSdpaPerSequence, kKernel };

CpuPath choose_path(const at::Tensor& q, const std::optional<at::Tensor>& lengths) {
  if (!to_sdpa.load(std::memory_order_relaxed) || q.numel() == 0 || q.size(3) == 0) return CpuPath::kKernel;
  if (!lengths.has_value()) return CpuPath::kSdpa;
  const at::Tensor len = lengths->to(at::kLong);
  if (len.numel() == 0 || at::all(len == q.size(2)).item<bool>()) return CpuPath::kSdpa;
  const int64_t total = len.sum().item<int64_t>();
  return total >= kSdpaPerSequenceMinMeanLength * len.numel() ? CpuPath::kSdpaPerSequence : CpuPath::kKernel;
}

}  // namespace

std::string attention_cpu_path(const at::Tensor& q, const std::optional<at::Tensor>& lengths) {
  switch (choose_path(q, lengths)) {
    case CpuPath::kSdpa: return "sdpa";
    case CpuPath::kSdpaPerSequence: return "sdpa per sequence";
    default: return "pycsa";
  }
}

void set_attention_cpu_to_sdpa(bool on) { to_sdpa.store(on, std::memory_order_relaxed); }

at::Tensor attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const std::optional<at::Tensor>& lengths, std::optional<double> scale) {
  check_attention_args(q, k, v, lengths);
  TORCH_CHECK_VALUE(q.device().is_cpu(), "q: expected a CPU tensor");
  const CpuPath path = choose_path(q, lengths);
  if (path == CpuPath::kSdpa) {
    // The op promises a fresh contiguous tensor (its fake says so); SDPA's CPU output is a
    // (B, T, H, D) buffer seen as (B, H, T, D).
    return at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, false, attention_scale(q, scale))
        .contiguous();
  }
  // check_attention_args holds lengths to int64 on the CPU
  if (path == CpuPath::kSdpaPerSequence) return sdpa_per_sequence(q, k, v, *lengths, attention_scale(q, scale));
  const auto [qc, kc, vc, len] = attention_inputs(q, k, v, lengths);

  at::Tensor out = at::empty(q.sizes(), q.options());
  if (out.numel() == 0) return out;
  if (q.size(3) == 0) return out.zero_();
  const float s = static_cast<float>(attention_scale(q, scale));
  TORCH_CHECK_VALUE(q.size(2) < std::numeric_limits<int>::max() && q.size(3) < std::numeric_limits<int>::max(),
                    "q: sequences longer than 2^31 - 1 tokens or heads wider than that are not supported on the CPU");
  const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;

  // bfloat16 is widened to float for the GEMMs unless the CPU has AMX tiles: with
  // only avx512_bf16 the small bf16 GEMMs measured no faster than widening (2-core
  // EPYC: 34 vs 32 ms for 12 heads x 1024 tokens), and widening is exact.
  switch (q.scalar_type()) {
    case at::kFloat: attention_cpu_impl<float, float>(qc, kc, vc, lp, s, out); break;
    case at::kHalf: attention_cpu_impl<at::Half, float>(qc, kc, vc, lp, s, out); break;
    case at::kBFloat16:
      if (native_bf16_tiles()) {
        attention_cpu_impl<at::BFloat16, at::BFloat16>(qc, kc, vc, lp, s, out);
      } else {
        attention_cpu_impl<at::BFloat16, float>(qc, kc, vc, lp, s, out);
      }
      break;
    default: TORCH_CHECK_TYPE(false, "q: unsupported dtype ", q.scalar_type());
  }
  return out;
}

}  // namespace pycsa
