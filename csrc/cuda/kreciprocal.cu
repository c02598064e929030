// CUDA k-reciprocal re-ranking with a sparse V (SPEC §4); the CPU twin and the
// numerics it follows are described in csrc/cpu/kreciprocal.cpp.
//
// 1. Rows of the transposed squared-distance matrix, a block at a time (read from the
//    three matrices, or one GEMM from the features): each row's maximum and its m
//    smallest entries by a stable sort (ties to the lower index); the query rows
//    also give the original q x g distances.
// 2. One thread per item builds its expanded k-reciprocal set (sizes are bounded by
//    (k1 + 1)·(round(k1/2) + 2), so each thread owns a fixed slice of scratch; items
//    run in chunks that bound the scratch), then softmax weights give V in CSR.
// 3. Local query expansion (mean of V over the top-k2) and the Jaccard distances
//    through the inverted index use the deterministic pieces of sparse.cuh, with
//    min() in place of the product.
// Memory beyond the inputs and the q x g output: one block of rows (at most 2^25
// floats, with the sort's copy and int64 indices ~0.5 GB), the ranks (N x m), the
// set scratch (at most 2^25 int64, 256 MB, whatever k1) and V, its expansion and its transpose.
#include "../kreciprocal.h"
#include "sparse.cuh"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace pycsa {
namespace {

using cuda_sparse::blocks_for;
using cuda_sparse::kThreads;

// The emulated build (csrc/emu) lowers both so that its small tests run several blocks and chunks.
#ifndef PYCSA_KRECIP_BLOCK_ELEMS
#define PYCSA_KRECIP_BLOCK_ELEMS (int64_t(1) << 25)
#endif
#ifndef PYCSA_KRECIP_SET_SCRATCH
#define PYCSA_KRECIP_SET_SCRATCH (int64_t(1) << 25)
#endif
constexpr int64_t kBlockElems = PYCSA_KRECIP_BLOCK_ELEMS;  // entries of one staged block of rows
constexpr int64_t kSetScratch = PYCSA_KRECIP_SET_SCRATCH;  // int64 entries of expanded-set scratch (256 MB)

// Rows [i0, i0 + nb) of the transposed squared distances (row i = column i of D), float32.
struct MatrixRows {
  at::Tensor qg, qq, gg;
  int64_t q, g;

  at::Tensor operator()(int64_t i0, int64_t nb) const {
    const int64_t i1 = i0 + nb, split = std::clamp(q, i0, i1);
    std::vector<at::Tensor> parts;
    if (i0 < split) parts.push_back(at::cat({qq.t().slice(0, i0, split), qg.slice(0, i0, split)}, 1));
    if (split < i1)
      parts.push_back(at::cat({qg.t().slice(0, split - q, i1 - q), gg.t().slice(0, split - q, i1 - q)}, 1));
    const at::Tensor rows = parts.size() == 1 ? parts[0] : at::cat(parts, 0);
    return rows.square().to(at::kFloat);  // squared in the input's precision, as on the CPU
  }
};

struct FeatureRows {
  at::Tensor z, norms;  // N x d float32, N squared norms

  at::Tensor operator()(int64_t i0, int64_t nb) const {
    // Full float32 even where the user enabled TF32 globally: the ranks and the
    // original term must match the CPU's (TF32 errors of ~1e-4 in d2 flip near-ties).
    const at::NoTF32Guard no_tf32;
    const at::Tensor dot = at::mm(z.narrow(0, i0, nb), z.t());
    return (norms.narrow(0, i0, nb).unsqueeze(1) + norms.unsqueeze(0) - dot * 2).clamp_min_(0);
  }
};

__device__ bool in_top(const int64_t* __restrict__ rank, int64_t m, int64_t row, int64_t len, int64_t x) {
  const int64_t* r = rank + row * m;
  for (int64_t a = 0; a < len; ++a)
    if (r[a] == x) return true;
  return false;
}

// In-place heapsort: O(n log n) with no recursion or scratch; a set can hold up to
// (k1 + 1)(round(k1 / 2) + 2) entries before duplicates are dropped.
__device__ void sift_down(int64_t* v, int64_t root, int64_t n) {
  const int64_t x = v[root];
  for (int64_t child = 2 * root + 1; child < n; child = 2 * root + 1) {
    if (child + 1 < n && v[child + 1] > v[child]) ++child;
    if (v[child] <= x) break;
    v[root] = v[child];
    root = child;
  }
  v[root] = x;
}

__device__ void heap_sort(int64_t* v, int64_t n) {
  for (int64_t r = n / 2 - 1; r >= 0; --r) sift_down(v, r, n);
  for (int64_t end = n - 1; end > 0; --end) {
    const int64_t top = v[0];
    v[0] = v[end];
    v[end] = top;
    sift_down(v, 0, end);
  }
}

__device__ bool sorted_contains(const int64_t* v, int64_t n, int64_t x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (v[mid] < x) lo = mid + 1; else hi = mid;
  }
  return lo < n && v[lo] == x;
}

// Expanded k-reciprocal sets of the items [i0, i0 + nb): item i's set, sorted and
// unique, in sets[(i - i0) * cap ..], its size in counts[i]; sorted_recip is scratch
// for each item's reciprocal set.
__global__ void reciprocal_sets_kernel(const int64_t* __restrict__ rank, int64_t i0, int64_t nb, int64_t m,
                                       int64_t k1, int64_t half, int64_t cap, int64_t* __restrict__ sets,
                                       int64_t* __restrict__ sorted_recip, int64_t* __restrict__ counts) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < nb; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = i0 + t;
    int64_t* e = sets + t * cap;
    int64_t* rs = sorted_recip + t * (k1 + 1);
    int64_t nrec = 0;
    for (int64_t a = 0; a <= k1; ++a) {
      const int64_t c = rank[i * m + a];
      if (in_top(rank, m, c, k1 + 1, i)) {
        e[nrec] = c;
        rs[nrec++] = c;
      }
    }
    heap_sort(rs, nrec);
    int64_t n = nrec;
    for (int64_t r = 0; r < nrec; ++r) {
      const int64_t c = e[r], start = n;
      for (int64_t a = 0; a <= half; ++a) {
        const int64_t x = rank[c * m + a];
        if (in_top(rank, m, x, half + 1, c)) e[n++] = x;
      }
      int64_t common = 0;
      for (int64_t t = start; t < n; ++t) common += sorted_contains(rs, nrec, e[t]);
      if (!(static_cast<double>(common) > 2.0 / 3.0 * static_cast<double>(n - start))) n = start;  // rejected
    }
    heap_sort(e, n);
    int64_t u = 0;
    for (int64_t t = 0; t < n; ++t)
      if (u == 0 || e[t] != e[u - 1]) e[u++] = e[t];
    counts[i] = u;
  }
}

// d2[p] = squared distance (transposed: row i, column j) of pair p, from the matrices.
template <typename T>
__global__ void pair_d2_matrix_kernel(const T* __restrict__ qg, const T* __restrict__ qq, const T* __restrict__ gg,
                                      int64_t q, int64_t g, const int64_t* __restrict__ prow,
                                      const int64_t* __restrict__ pcol, int64_t pairs, float* __restrict__ d2) {
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < pairs; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = prow[p], j = pcol[p];  // D(j, i)
    const T v = j < q ? (i < q ? qq[j * q + i] : qg[j * g + (i - q)]) : (i < q ? qg[i * g + (j - q)] : gg[(j - q) * g + (i - q)]);
    d2[p] = static_cast<float>(static_cast<double>(v) * static_cast<double>(v));
  }
}

// The same from the features: one warp per pair, the dot product in double as on the CPU.
__global__ void pair_d2_features_kernel(const float* __restrict__ z, const float* __restrict__ norms, int64_t d,
                                        const int64_t* __restrict__ prow, const int64_t* __restrict__ pcol,
                                        int64_t pairs, float* __restrict__ d2) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t p = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; p < pairs; p += warps) {
    const float* a = z + prow[p] * d;
    const float* b = z + pcol[p] * d;
    double dot = 0;
    for (int64_t c = lane; c < d; c += 32) dot += static_cast<double>(a[c]) * b[c];
    for (int off = 16; off > 0; off /= 2) dot += __shfl_down_sync(0xffffffffu, dot, off);
    if (lane == 0)
      d2[p] = fmaxf(0.f, static_cast<float>(norms[prow[p]] + norms[pcol[p]] - 2.0 * dot));
  }
}

// V's values: exp(-d2 / rowmax) per entry, then divided by the row's sum (column order).
__global__ void softmax_rows_kernel(const int64_t* __restrict__ rowptr, const float* __restrict__ colmax,
                                    int64_t N, float* __restrict__ vals) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x) {
    const float mx = colmax[i];
    float total = 0.f;
    for (int64_t o = rowptr[i]; o < rowptr[i + 1]; ++o) {
      const float w = expf(-(mx > 0 ? vals[o] / mx : 0.f));
      vals[o] = w;
      total += w;
    }
    for (int64_t o = rowptr[i]; o < rowptr[i + 1]; ++o) vals[o] /= total;
  }
}

template <typename Rows, typename PairD2>
// Items [0, N); queries are rows [0, q), the gallery rows [goff, goff + g): goff = q for
// [Q; G], goff = 0 with every item a query against all items (Z = G, q = g = N).
at::Tensor k_reciprocal_impl(const Rows& rows_of_d, int64_t N, int64_t q, int64_t goff, int64_t g, int64_t k1,
                             int64_t k2, float lambda, const at::TensorOptions& fopts, PairD2 pair_d2) {
  k1 = std::min(k1, N - 1);
  k2 = std::min(k2, N);
  const int64_t m = std::max(k1 + 1, k2);
  const int64_t half = std::min<int64_t>(static_cast<int64_t>(std::nearbyint(k1 / 2.0)), N - 1);
  const auto lopts = fopts.dtype(at::kLong);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  // Pass 1: row maxima, top-m ranks, and the query rows' original distances.
  at::Tensor colmax = at::empty({N}, fopts);
  at::Tensor rank = at::empty({N, m}, lopts);
  at::Tensor original = at::empty({q, g}, fopts);
  const int64_t step = std::max<int64_t>(1, kBlockElems / N);
  for (int64_t i0 = 0; i0 < N; i0 += step) {
    const int64_t nb = std::min(step, N - i0);
    const at::Tensor rows = rows_of_d(i0, nb);
    const at::Tensor mx = std::get<0>(rows.max(1));
    colmax.narrow(0, i0, nb).copy_(mx);
    rank.narrow(0, i0, nb).copy_(std::get<1>(at::sort(rows, /*stable=*/true, 1, false)).narrow(1, 0, m));
    if (i0 < q) {
      const int64_t nq = std::min(nb, q - i0);
      const at::Tensor mq = mx.narrow(0, 0, nq).unsqueeze(1);
      original.narrow(0, i0, nq).copy_(at::where(mq > 0, rows.narrow(0, 0, nq).narrow(1, goff, g) / mq, 0.f));
    }
  }

  // Pass 2: the expanded sets, then V = softmax(-distance) over each set. A set's
  // scratch is its worst case before duplicates go, (k1 + 1)(half + 2) entries, so the
  // items run in chunks that keep the scratch within kSetScratch entries.
  const int64_t cap = (k1 + 1) * (half + 2);
  const int64_t chunk = std::clamp<int64_t>(kSetScratch / cap, 1, N);
  at::Tensor sets = at::empty({chunk, cap}, lopts);
  at::Tensor recip = at::empty({chunk, k1 + 1}, lopts);
  at::Tensor counts = at::empty({N}, lopts);
  const at::Tensor slots = at::arange(cap, lopts).unsqueeze(0);
  std::vector<at::Tensor> pieces;
  for (int64_t i0 = 0; i0 < N; i0 += chunk) {
    const int64_t nb = std::min(chunk, N - i0);
    reciprocal_sets_kernel<<<blocks_for(nb), kThreads, 0, stream>>>(
        rank.data_ptr<int64_t>(), i0, nb, m, k1, half, cap, sets.data_ptr<int64_t>(), recip.data_ptr<int64_t>(),
        counts.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pieces.push_back(sets.narrow(0, 0, nb).masked_select(slots < counts.narrow(0, i0, nb).unsqueeze(1)));
  }
  recip.reset();
  sets.reset();
  at::Tensor vptr = at::zeros({N + 1}, lopts);
  vptr.slice(0, 1).copy_(counts.cumsum(0));
  const at::Tensor vcol = pieces.size() == 1 ? pieces[0] : at::cat(pieces);
  pieces.clear();
  const at::Tensor vrow = cuda_sparse::rows_of(vptr, vcol.numel());
  at::Tensor vval = at::empty({vcol.numel()}, fopts);
  pair_d2(vrow, vcol, vval);
  softmax_rows_kernel<<<blocks_for(N), kThreads, 0, stream>>>(vptr.data_ptr<int64_t>(), colmax.data_ptr<float>(), N,
                                                               vval.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Local query expansion: V[i] <- mean of V over the top-k2 of i.
  at::Tensor Vptr = vptr, Vcol = vcol, Vval = vval;
  if (k2 != 1) {
    const at::Tensor nbr = rank.narrow(1, 0, k2).contiguous();
    const auto [prow, pcol, pval] =
        cuda_sparse::neighbour_products(vptr, vcol, vval, nbr, at::ones({N, k2}, fopts));
    std::tie(Vptr, Vcol, Vval) = cuda_sparse::coo_to_csr(prow, pcol, pval, N);
    Vval.div_(static_cast<float>(k2));
  }

  // Pass 3: Σ_l min(V[i, l], V[j, l]) for query i and gallery item j, then Jaccard.
  const cuda_sparse::Transposed inv = cuda_sparse::transpose(Vptr, Vcol, Vval, N);
  at::Tensor s = at::zeros({q, g}, fopts);
  cuda_sparse::cross(Vptr, Vcol, Vval, inv, q, goff, cuda_sparse::Minimum{}, s);
  const at::Tensor jac = 1 - s / (2 - s);
  return jac * static_cast<float>(1.0 - lambda) + original * lambda;
}

}  // namespace

at::Tensor k_reciprocal_cuda(const at::Tensor& q_g, const at::Tensor& q_q, const at::Tensor& g_g, int64_t k1,
                             int64_t k2, double lambda) {
  check_k_reciprocal_matrices(q_g, q_q, g_g);
  TORCH_CHECK_VALUE(q_g.is_cuda(), "q_g_dist/q_q_dist/g_g_dist: expected CUDA tensors");
  check_k_reciprocal_args(k1, k2, lambda);
  const int64_t q = q_g.size(0), g = q_g.size(1);
  const c10::cuda::CUDAGuard guard(q_g.device());
  const at::Tensor a = q_g.contiguous(), b = q_q.contiguous(), c = g_g.contiguous();
  const auto fopts = a.options().dtype(at::kFloat);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "k_reciprocal_cuda", [&] {
    auto pair_d2 = [&](const at::Tensor& prow, const at::Tensor& pcol, at::Tensor& d2) {
      if (d2.numel() == 0) return;
      pair_d2_matrix_kernel<scalar_t><<<blocks_for(d2.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), q, g, prow.data_ptr<int64_t>(),
          pcol.data_ptr<int64_t>(), d2.numel(), d2.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    out = k_reciprocal_impl(MatrixRows{a, b, c, q, g}, q + g, q, q, g, k1, k2, static_cast<float>(lambda), fopts,
                            pair_d2);
  });
  return out;
}

// Rows of z (N x d float32) as items: queries [0, q), gallery [goff, goff + g).
static at::Tensor k_reciprocal_from_rows(const at::Tensor& z, int64_t q, int64_t goff, int64_t g, int64_t k1,
                                         int64_t k2, double lambda) {
  const at::Tensor norms = z.mul(z).sum(1);
  const int64_t d = z.size(1);
  auto pair_d2 = [&](const at::Tensor& prow, const at::Tensor& pcol, at::Tensor& d2) {
    if (d2.numel() == 0) return;
    pair_d2_features_kernel<<<blocks_for(d2.numel() * 32), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        z.data_ptr<float>(), norms.data_ptr<float>(), d, prow.data_ptr<int64_t>(), pcol.data_ptr<int64_t>(),
        d2.numel(), d2.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  return k_reciprocal_impl(FeatureRows{z, norms}, z.size(0), q, goff, g, k1, k2, static_cast<float>(lambda),
                           z.options(), pair_d2);
}

at::Tensor k_reciprocal_features_cuda(const at::Tensor& query, const at::Tensor& gallery, int64_t k1, int64_t k2,
                                      double lambda) {
  check_k_reciprocal_features(query, gallery);
  TORCH_CHECK_VALUE(query.is_cuda(), "query_feats/gallery_feats: expected CUDA tensors");
  check_k_reciprocal_args(k1, k2, lambda);
  const c10::cuda::CUDAGuard guard(query.device());
  const at::Tensor z = at::cat({query, gallery}, 0).to(at::kFloat).contiguous();
  return k_reciprocal_from_rows(z, query.size(0), query.size(0), gallery.size(0), k1, k2, lambda);
}

at::Tensor k_reciprocal_self_cuda(const at::Tensor& feats, int64_t k1, int64_t k2, double lambda) {
  check_k_reciprocal_features(feats, feats);
  TORCH_CHECK_VALUE(feats.is_cuda(), "feats: expected a CUDA tensor");
  check_k_reciprocal_args(k1, k2, lambda);
  const c10::cuda::CUDAGuard guard(feats.device());
  const at::Tensor z = feats.to(at::kFloat).contiguous();
  return k_reciprocal_from_rows(z, z.size(0), 0, z.size(0), k1, k2, lambda);
}

}  // namespace pycsa

TORCH_LIBRARY_IMPL(pycsa, CUDA, m) {
  m.impl("k_reciprocal", &pycsa::k_reciprocal_cuda);
  m.impl("k_reciprocal_features", &pycsa::k_reciprocal_features_cuda);
  m.impl("k_reciprocal_self", &pycsa::k_reciprocal_self_cuda);
}
