// CUDA attention, flash style: a block of 4 warps owns 64 query rows of one
// (sequence, head) and walks that sequence's valid keys 64 at a time; scores live
// in registers/shared memory only (no T x T matrix). A warp owns 16 query rows;
// lanes 2r and 2r+1 share row r: lane parity picks the even or odd key columns and
// the even or odd output columns, so the pair's shared-memory reads hit adjacent
// banks. float16/bfloat16 compute S = QK^T and PV on tensor cores (WMMA, fp32
// accumulation, sm80+); float32 runs the same schedule on the SIMT cores.
// Head dims 32 and 64 are compiled (CSA and RRT use them); pycsa.ops.attention
// sends other head dims to PyTorch's SDPA.
#include "../attention.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>

namespace pycsa {
namespace {

constexpr int kRows = 64;     // query rows per block
constexpr int kKeys = 64;     // keys per tile
constexpr int kThreads = 128;  // 4 warps x 16 rows
// the emulated build (csrc/emu) lowers it so that its tests loop over lists in the kernel
#ifndef PYCSA_MAX_GRID_Z
#define PYCSA_MAX_GRID_Z 65535
#endif
constexpr int kMaxGridZ = PYCSA_MAX_GRID_Z;

// Element (b, h, t, c) of a (B, H, T, D) tensor with a dense last dimension.
template <typename T>
struct Strided4 {
  const T* base;
  int64_t sb, sh, st;
  __device__ __forceinline__ const T* row(int64_t b, int64_t h, int64_t t) const {
    return base + b * sb + h * sh + t * st;
  }
};

template <typename T>
__device__ __forceinline__ T from_float(float v) { return static_cast<T>(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Copies rows [t0, t0 + kKeys) of (b, h) into dst (kKeys x HD, leading dim ld),
// zeros for rows >= limit. `vec`: 16-byte aligned rows, loaded 16 bytes at a time.
template <typename T, int HD>
__device__ __forceinline__ void load_tile(const Strided4<T>& src, int64_t b, int64_t h, int64_t t0,
                                          int64_t limit, bool vec, T* dst, int ld) {
  constexpr int kVec = 16 / sizeof(T);
  if (vec && HD % kVec == 0) {
    constexpr int per_row = HD / kVec;
    for (int e = threadIdx.x; e < kKeys * per_row; e += kThreads) {
      const int r = e / per_row, c = (e % per_row) * kVec;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (t0 + r < limit) val = *reinterpret_cast<const uint4*>(src.row(b, h, t0 + r) + c);
      // dst rows are 16-byte aligned only when ld * sizeof(T) is; the callers' ld keeps it so.
      *reinterpret_cast<uint4*>(dst + r * ld + c) = val;
    }
  } else {
    for (int e = threadIdx.x; e < kKeys * HD; e += kThreads) {
      const int r = e / HD, c = e % HD;
      dst[r * ld + c] = (t0 + r < limit) ? src.row(b, h, t0 + r)[c] : from_float<T>(0.f);
    }
  }
}

// One row of the online softmax, held by a lane pair: x[i] are this lane's 32 scores
// (key 2i + parity of the tile), already scaled, -inf where masked. Updates the running
// max m and sum l, returns the factor by which the output accumulated so far must shrink.
__device__ __forceinline__ float online_softmax_pair(float (&x)[kKeys / 2], float& m, float& l) {
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < kKeys / 2; ++i) mx = fmaxf(mx, x[i]);
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  const float m_new = fmaxf(m, mx);  // finite: every tile holds at least one valid key
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kKeys / 2; ++i) {
    x[i] = __expf(x[i] - m_new);  // exp(-inf) = 0 for masked keys
    sum += x[i];
  }
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  const float corr = __expf(m - m_new);  // m = -inf before the first tile: 0
  l = l * corr + sum;
  m = m_new;
  return corr;
}

template <typename T, int HD>
__device__ __forceinline__ void store_rows(T* out, int64_t row_base, int64_t q_row, int64_t T_, int64_t len,
                                           int parity, const float (&o)[HD / 2], float l) {
  if (q_row >= T_) return;
  T* dst = out + (row_base + q_row) * HD;
  const float inv = q_row < len ? 1.f / l : 0.f;  // rows past the length are zero
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) dst[2 * i + parity] = from_float<T>(q_row < len ? o[i] * inv : 0.f);
}

// ------------------------------------------------------------------ SIMT (float32)
template <int HD>
__global__ void __launch_bounds__(kThreads)
attention_simt_kernel(Strided4<float> q, Strided4<float> k, Strided4<float> v, const int64_t* __restrict__ lengths,
                      int64_t B, int64_t H, int64_t T_, float scale, float* __restrict__ out) {
  __shared__ float k_s[kKeys][HD + 1];  // +1: lanes 2r, 2r+1 read keys j, j+1 -> adjacent banks
  __shared__ float v_s[kKeys][HD + 1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r = warp * 16 + lane / 2, parity = lane & 1;
  const int64_t h = blockIdx.y, q0 = int64_t(blockIdx.x) * kRows;

  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    const int64_t len = lengths ? min(max(lengths[b], int64_t(0)), T_) : T_;
    const int64_t q_row = q0 + r;
    float o[HD / 2] = {};
    float m = -INFINITY, l = 0.f;
    float qr[HD];
    const float* qp = q.row(b, h, min(q_row, T_ - 1));
#pragma unroll
    for (int c = 0; c < HD; ++c) qr[c] = qp[c] * scale;

    const int64_t key_end = q0 < len ? len : 0;  // a block with no valid row reads no keys
    for (int64_t t0 = 0; t0 < key_end; t0 += kKeys) {
      __syncthreads();  // the previous tile is no longer read
      for (int e = threadIdx.x; e < kKeys * HD; e += kThreads) {
        const int j = e / HD, c = e % HD;
        const bool ok = t0 + j < len;
        k_s[j][c] = ok ? k.row(b, h, t0 + j)[c] : 0.f;
        v_s[j][c] = ok ? v.row(b, h, t0 + j)[c] : 0.f;
      }
      __syncthreads();
      float x[kKeys / 2];
#pragma unroll
      for (int i = 0; i < kKeys / 2; ++i) {
        const int j = 2 * i + parity;
        float s = 0.f;
#pragma unroll
        for (int c = 0; c < HD; ++c) s += qr[c] * k_s[j][c];
        x[i] = t0 + j < len ? s : -INFINITY;
      }
      const float corr = online_softmax_pair(x, m, l);
#pragma unroll
      for (int i = 0; i < HD / 2; ++i) o[i] *= corr;
#pragma unroll
      for (int j = 0; j < kKeys; ++j) {
        const float p = __shfl_sync(0xffffffffu, x[j / 2], (lane & ~1) | (j & 1));
#pragma unroll
        for (int i = 0; i < HD / 2; ++i) o[i] += p * v_s[j][2 * i + parity];
      }
    }
    store_rows<float, HD>(out, (b * H + h) * T_, q_row, T_, len, parity, o, l);
  }
}

// ------------------------------------------------------ tensor cores (fp16/bf16)
template <typename T> struct WmmaType;
template <> struct WmmaType<at::Half> { using type = __half; };
template <> struct WmmaType<at::BFloat16> { using type = __nv_bfloat16; };

template <typename T, int HD>
__global__ void __launch_bounds__(kThreads)
attention_wmma_kernel(Strided4<T> q, Strided4<T> k, Strided4<T> v, const int64_t* __restrict__ lengths, int64_t B,
                      int64_t H, int64_t T_, float scale, bool vec, T* __restrict__ out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  constexpr int kLd = HD + 8;         // half-precision tiles: multiple of 8, rows 16-byte aligned
  constexpr int kSLd = kKeys + 4;     // float scores (and P·V results, HD <= kKeys)
  constexpr int kPLd = kKeys + 8;
  static_assert(HD % 16 == 0 && HD <= kKeys, "head dim must be a multiple of 16, at most 64");
  __shared__ __align__(128) T k_s[kKeys * kLd];  // also stages the query tile
  __shared__ __align__(128) T v_s[kKeys * kLd];
  __shared__ __align__(128) float s_s[4][16 * kSLd];
  __shared__ __align__(128) T p_s[4][16 * kPLd];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rr = lane / 2, parity = lane & 1;
  const int64_t h = blockIdx.y, q0 = int64_t(blockIdx.x) * kRows;
  const int64_t q_row = q0 + warp * 16 + rr;
  float* s_w = s_s[warp];
  T* p_w = p_s[warp];

  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    const int64_t len = lengths ? min(max(lengths[b], int64_t(0)), T_) : T_;
    float o[HD / 2] = {};
    float m = -INFINITY, l = 0.f;
    if (q0 < len) {
      __syncthreads();  // k_s of the previous sequence is no longer read
      load_tile<T, HD>(q, b, h, q0, T_, vec, k_s, kLd);
      __syncthreads();
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fq[HD / 16];
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) wmma::load_matrix_sync(fq[kk], k_s + warp * 16 * kLd + kk * 16, kLd);

      for (int64_t t0 = 0; t0 < len; t0 += kKeys) {
        __syncthreads();  // queries / previous tile are in registers or no longer read
        load_tile<T, HD>(k, b, h, t0, len, vec, k_s, kLd);
        load_tile<T, HD>(v, b, h, t0, len, vec, v_s, kLd);
        __syncthreads();
        // S (16 x 64) = Q_w K^T: K stored key-major is K^T column-major.
#pragma unroll
        for (int n = 0; n < kKeys / 16; ++n) {
          wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
          wmma::fill_fragment(acc, 0.f);
#pragma unroll
          for (int kk = 0; kk < HD / 16; ++kk) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fk;
            wmma::load_matrix_sync(fk, k_s + n * 16 * kLd + kk * 16, kLd);
            wmma::mma_sync(acc, fq[kk], fk, acc);
          }
          wmma::store_matrix_sync(s_w + n * 16, acc, kSLd, wmma::mem_row_major);
        }
        __syncwarp();
        float x[kKeys / 2];
#pragma unroll
        for (int i = 0; i < kKeys / 2; ++i) {
          const int j = 2 * i + parity;
          x[i] = t0 + j < len ? s_w[rr * kSLd + j] * scale : -INFINITY;
        }
        const float corr = online_softmax_pair(x, m, l);
#pragma unroll
        for (int i = 0; i < kKeys / 2; ++i) p_w[rr * kPLd + 2 * i + parity] = from_float<T>(x[i]);
        __syncwarp();
        // P·V (16 x HD) into the score buffer, then folded into the registers.
#pragma unroll
        for (int n = 0; n < HD / 16; ++n) {
          wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
          wmma::fill_fragment(acc, 0.f);
#pragma unroll
          for (int kk = 0; kk < kKeys / 16; ++kk) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fp;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fv;
            wmma::load_matrix_sync(fp, p_w + kk * 16, kPLd);
            wmma::load_matrix_sync(fv, v_s + kk * 16 * kLd + n * 16, kLd);
            wmma::mma_sync(acc, fp, fv, acc);
          }
          wmma::store_matrix_sync(s_w + n * 16, acc, kSLd, wmma::mem_row_major);
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < HD / 2; ++i) o[i] = o[i] * corr + s_w[rr * kSLd + 2 * i + parity];
        __syncwarp();  // s_w is rewritten by the next tile's scores
      }
    }
    store_rows<T, HD>(out, (b * H + h) * T_, q_row, T_, len, parity, o, l);
  }
#else
  __trap();  // built only for sm_80+; the host side refuses older devices first
#endif
}

template <typename T>
Strided4<T> strided(const at::Tensor& t) {
  return Strided4<T>{reinterpret_cast<const T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

bool rows_16b_aligned(const at::Tensor& t) {
  const int64_t vec = 16 / t.element_size();
  return t.stride(0) % vec == 0 && t.stride(1) % vec == 0 && t.stride(2) % vec == 0 &&
         reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

template <int HD>
void launch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const int64_t* lengths, float scale,
            at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), T_ = q.size(2);
  const dim3 grid(static_cast<unsigned>((T_ + kRows - 1) / kRows), static_cast<unsigned>(H),
                  static_cast<unsigned>(std::min<int64_t>(B, kMaxGridZ)));
  TORCH_CHECK_VALUE(H <= 65535, "q: ", H, " heads is more than the CUDA kernel handles (65535)");
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto dt = q.scalar_type();
  if (dt == at::kFloat) {
    attention_simt_kernel<HD><<<grid, kThreads, 0, stream>>>(strided<float>(q), strided<float>(k), strided<float>(v),
                                                             lengths, B, H, T_, scale, out.data_ptr<float>());
  } else {
    int major = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q.get_device()));
    TORCH_CHECK(major >= 8, "pycsa.ops.attention: float16/bfloat16 on CUDA needs compute capability 8.0+, "
                "this device has ", major, ".x; use float32");
    const bool vec = rows_16b_aligned(q) && rows_16b_aligned(k) && rows_16b_aligned(v);
    AT_DISPATCH_REDUCED_FLOATING_TYPES(dt, "attention_cuda_wmma", [&] {
      using T = typename WmmaType<scalar_t>::type;
      attention_wmma_kernel<T, HD><<<grid, kThreads, 0, stream>>>(
          strided<T>(q), strided<T>(k), strided<T>(v), lengths, B, H, T_, scale, vec,
          reinterpret_cast<T*>(out.data_ptr()));
    });
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& lengths, std::optional<double> scale) {
  check_attention_args(q, k, v, lengths);
  TORCH_CHECK_VALUE(q.is_cuda(), "q: expected a CUDA tensor");
  const c10::cuda::CUDAGuard guard(q.device());
  const auto [qc, kc, vc, len] = attention_inputs(q, k, v, lengths);

  at::Tensor out = at::empty(q.sizes(), q.options());
  if (out.numel() == 0) return out;
  const int64_t D = q.size(3);
  TORCH_CHECK_VALUE(D == 32 || D == 64, "q: head_dim ", D, " is not compiled for CUDA (32 and 64 are); "
                    "pycsa.ops.attention falls back to PyTorch SDPA for it");
  const float s = static_cast<float>(attention_scale(q, scale));
  const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  if (D == 32) {
    launch<32>(qc, kc, vc, lp, s, out);
  } else {
    launch<64>(qc, kc, vc, lp, s, out);
  }
  return out;
}

TORCH_LIBRARY_IMPL(pycsa, CUDA, m) { m.impl("attention", &attention_cuda); }

}  // namespace pycsa
