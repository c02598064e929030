// CUDA top-K affinity. Each block computes a 64 x 64 tile of out[b] = F_b F_{b,:L}^T,
// reading the rows of F_b through ranks straight from the database (the B x K x d
// gather is never materialised). float16/bfloat16 use tensor cores (WMMA, fp32
// accumulation); float32/float64 use a register-tiled SIMT loop.
#include "../affinity.h"

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

constexpr int kTile = 64;        // output tile edge (candidates x anchors)
// the emulated build (csrc/emu) lowers it so that its tests loop over lists in the kernel
#ifndef PYCSA_MAX_GRID_Z
#define PYCSA_MAX_GRID_Z 65535
#endif
constexpr int kMaxGridZ = PYCSA_MAX_GRID_Z;  // lists beyond this loop inside the kernel

// Row i of list b: the query (when given) then the ranked database rows.
template <typename T>
struct Lists {
  const T* db;
  int64_t db_stride;
  const T* queries;  // nullptr: lists hold database rows only
  int64_t q_stride;
  const int64_t* ranks;
  int64_t ranks_cols;

  __device__ __forceinline__ const T* row(int64_t b, int64_t i) const {
    if (queries != nullptr) {
      if (i == 0) return queries + b * q_stride;
      --i;
    }
    return db + ranks[b * ranks_cols + i] * db_stride;
  }
};

// ---------------------------------------------------------------- SIMT (fp32/fp64)
constexpr int kSimtK = 16;       // depth of one shared-memory stage
constexpr int kSimtThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each

template <typename T>
__global__ void __launch_bounds__(kSimtThreads)
affinity_simt_kernel(Lists<T> lists, int64_t B, int64_t K, int64_t L, int64_t d, T* __restrict__ out) {
  __shared__ T a_s[kSimtK][kTile + 1];  // candidates, k-major so a thread's reads broadcast
  __shared__ T b_s[kSimtK][kTile + 1];  // anchors
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t m0 = int64_t(blockIdx.y) * kTile, n0 = int64_t(blockIdx.x) * kTile;

  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    T acc[4][4] = {};
    for (int64_t k0 = 0; k0 < d; k0 += kSimtK) {
      // 64 rows x 16 columns per operand: each thread loads 4 of each; consecutive
      // threads read consecutive features of one row (coalesced).
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const int e = threadIdx.x + p * kSimtThreads;
        const int r = e / kSimtK, c = e % kSimtK;
        const int64_t k = k0 + c;
        const int64_t mi = m0 + r, ni = n0 + r;
        a_s[c][r] = (mi < K && k < d) ? lists.row(b, mi)[k] : T(0);
        b_s[c][r] = (ni < L && k < d) ? lists.row(b, ni)[k] : T(0);
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < kSimtK; ++c) {
        T av[4], bv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) av[i] = a_s[c][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) bv[j] = b_s[c][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t mi = m0 + ty + 16 * i;
      if (mi >= K) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t ni = n0 + tx + 16 * j;
        if (ni < L) out[(b * K + mi) * L + ni] = acc[i][j];
      }
    }
  }
}

// ---------------------------------------------------------- tensor cores (fp16/bf16)
constexpr int kWmmaK = 32;             // depth of one shared-memory stage
constexpr int kWmmaLd = kWmmaK + 8;    // padded row (elements): multiple of 8, rows 32-byte aligned
constexpr int kWmmaThreads = 128;      // 4 warps, each a 32 x 32 quarter of the tile
constexpr int kVec = 8;                // 16-byte loads of 8 half-precision values

template <typename T> struct WmmaType;
template <> struct WmmaType<at::Half> { using type = __half; };
template <> struct WmmaType<at::BFloat16> { using type = __nv_bfloat16; };

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Loads a 64 x kWmmaK stage of rows [row0, row0+64) into dst; rows >= limit and
// features >= d are zero. `vec` says every row start is 16-byte aligned and d % 8 == 0.
template <typename T>
__device__ __forceinline__ void load_stage(const Lists<T>& lists, int64_t b, int64_t row0,
                                           int64_t limit, int64_t k0, int64_t d, bool vec,
                                           T* __restrict__ dst) {
  if (vec) {
    // 64 rows x 4 vectors = 256 vectors, two per thread.
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const int e = threadIdx.x + p * kWmmaThreads;
      const int r = e / (kWmmaK / kVec), c = (e % (kWmmaK / kVec)) * kVec;
      const int64_t ri = row0 + r, k = k0 + c;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (ri < limit && k < d) v = *reinterpret_cast<const uint4*>(lists.row(b, ri) + k);
      *reinterpret_cast<uint4*>(dst + r * kWmmaLd + c) = v;
    }
  } else {
    const T zero = from_float<T>(0.f);
    for (int e = threadIdx.x; e < kTile * kWmmaK; e += kWmmaThreads) {
      const int r = e / kWmmaK, c = e % kWmmaK;
      const int64_t ri = row0 + r, k = k0 + c;
      dst[r * kWmmaLd + c] = (ri < limit && k < d) ? lists.row(b, ri)[k] : zero;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kWmmaThreads)
affinity_wmma_kernel(Lists<T> lists, int64_t B, int64_t K, int64_t L, int64_t d, bool vec,
                     T* __restrict__ out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  __shared__ __align__(128) T a_s[kTile * kWmmaLd];
  __shared__ __align__(128) T b_s[kTile * kWmmaLd];
  __shared__ __align__(128) float c_s[kTile * (kTile + 4)];
  const int warp = threadIdx.x / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;  // this warp's quarter of the tile
  const int64_t m0 = int64_t(blockIdx.y) * kTile, n0 = int64_t(blockIdx.x) * kTile;

  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    for (int64_t k0 = 0; k0 < d; k0 += kWmmaK) {
      load_stage(lists, b, m0, K, k0, d, vec, a_s);
      load_stage(lists, b, n0, L, k0, d, vec, b_s);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kWmmaK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
        // The anchors are stored row-per-anchor, i.e. B^T row-major == B column-major.
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], a_s + (wm + 16 * i) * kWmmaLd + kk, kWmmaLd);
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], b_s + (wn + 16 * j) * kWmmaLd + kk, kWmmaLd);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(c_s + (wm + 16 * i) * (kTile + 4) + wn + 16 * j, acc[i][j], kTile + 4,
                                wmma::mem_row_major);
    __syncthreads();
    for (int e = threadIdx.x; e < kTile * kTile; e += kWmmaThreads) {
      const int r = e / kTile, c = e % kTile;
      const int64_t mi = m0 + r, ni = n0 + c;
      if (mi < K && ni < L) out[(b * K + mi) * L + ni] = from_float<T>(c_s[r * (kTile + 4) + c]);
    }
    __syncthreads();  // c_s is rewritten by the next list
  }
#else
  __trap();  // built only for sm_80+; the host side refuses older devices first
#endif
}

template <typename T>
Lists<T> make_lists(const at::Tensor& db, const at::Tensor& ranks, const at::Tensor& q) {
  return Lists<T>{reinterpret_cast<const T*>(db.data_ptr()), db.stride(0),
                  q.defined() ? reinterpret_cast<const T*>(q.data_ptr()) : nullptr,
                  q.defined() ? q.stride(0) : 0, ranks.data_ptr<int64_t>(), ranks.size(1)};
}

bool rows_16b_aligned(const at::Tensor& t) {
  return t.size(1) % kVec == 0 && t.stride(0) % kVec == 0 &&
         reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

}  // namespace

at::Tensor affinity_cuda(const at::Tensor& database, const at::Tensor& ranks, int64_t num_anchors,
                         const std::optional<at::Tensor>& queries) {
  check_affinity_args(database, ranks, num_anchors, queries);
  TORCH_CHECK_VALUE(database.is_cuda(), "database: expected a CUDA tensor");
  const c10::cuda::CUDAGuard guard(database.device());
  const at::Tensor db = database.stride(1) == 1 ? database : database.contiguous();
  const at::Tensor rk = ranks.contiguous();
  at::Tensor q;
  if (queries.has_value()) q = queries->stride(1) == 1 ? *queries : queries->contiguous();

  const int64_t B = rk.size(0), K = affinity_list_length(rk, queries), L = num_anchors, d = db.size(1);
  at::Tensor out = at::empty({B, K, L}, database.options());
  if (out.numel() == 0) return out;
  if (d == 0) return out.zero_();

  const dim3 grid(static_cast<unsigned>((L + kTile - 1) / kTile), static_cast<unsigned>((K + kTile - 1) / kTile),
                  static_cast<unsigned>(std::min<int64_t>(B, kMaxGridZ)));
  TORCH_CHECK_VALUE(grid.y <= 65535u, "ranks: list length ", K, " is too long for the CUDA kernel");
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto dt = db.scalar_type();

  if (dt == at::kHalf || dt == at::kBFloat16) {
    int major = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, database.get_device()));
    TORCH_CHECK(major >= 8, "pycsa.ops.affinity: float16/bfloat16 on CUDA needs compute capability 8.0+, "
                "this device has ", major, ".x; convert the features to float32");
    const bool vec = rows_16b_aligned(db) && (!q.defined() || rows_16b_aligned(q));
    AT_DISPATCH_REDUCED_FLOATING_TYPES(dt, "affinity_cuda_wmma", [&] {
      using T = typename WmmaType<scalar_t>::type;
      affinity_wmma_kernel<T><<<grid, kWmmaThreads, 0, stream>>>(
          make_lists<T>(db, rk, q), B, K, L, d, vec, reinterpret_cast<T*>(out.data_ptr()));
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES(dt, "affinity_cuda_simt", [&] {
      affinity_simt_kernel<scalar_t><<<grid, kSimtThreads, 0, stream>>>(
          make_lists<scalar_t>(db, rk, q), B, K, L, d, out.data_ptr<scalar_t>());
    });
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

TORCH_LIBRARY_IMPL(pycsa, CUDA, m) { m.impl("affinity", &affinity_cuda); }

}  // namespace pycsa
