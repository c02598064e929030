// Sparse building blocks shared by the CUDA graph and k-reciprocal kernels.
//
// A CSR matrix is built the same way everywhere: write the (row, col, value)
// products as a COO list in a fixed order, sort it by (row, col) with a stable sort,
// then add up each run of equal keys in list order with one thread per run. The
// sums never depend on thread scheduling (no atomics): two runs give the same bits,
// and so does the CPU twin where it adds in the same order.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

namespace pycsa {
namespace cuda_sparse {
namespace {  // internal linkage: each .cu file gets its own copy of the kernels

constexpr int kThreads = 256;
// Grids are capped and the kernels stride over the rest; the emulated build (csrc/emu)
// lowers the cap so that its small tests take the strided loops too.
#ifndef PYCSA_SPARSE_MAX_BLOCKS
#define PYCSA_SPARSE_MAX_BLOCKS (int64_t(1) << 20)
#endif
constexpr int64_t kMaxBlocks = PYCSA_SPARSE_MAX_BLOCKS;

inline int64_t blocks_for(int64_t n) {
  return std::min<int64_t>(std::max<int64_t>(1, (n + kThreads - 1) / kThreads), kMaxBlocks);
}

// row index of every stored entry
__global__ void expand_rows_kernel(const int64_t* __restrict__ rowptr, int64_t n, int64_t* __restrict__ rows) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < n; r += int64_t(gridDim.x) * blockDim.x)
    for (int64_t o = rowptr[r]; o < rowptr[r + 1]; ++o) rows[o] = r;
}

inline at::Tensor rows_of(const at::Tensor& rowptr, int64_t nnz) {
  const int64_t n = rowptr.numel() - 1;
  at::Tensor rows = at::empty({nnz}, rowptr.options());
  if (nnz == 0) return rows;
  expand_rows_kernel<<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      rowptr.data_ptr<int64_t>(), n, rows.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return rows;
}

// rowptr (n + 1) of the sorted row indices `rows` (values in [0, n))
inline at::Tensor rowptr_of(const at::Tensor& rows, int64_t n) {
  at::Tensor rowptr = at::zeros({n + 1}, rows.options());
  if (rows.numel()) rowptr.slice(0, 1).copy_(at::bincount(rows, {}, n).cumsum(0));
  return rowptr;
}

// out[u] = Σ val[starts[u] .. starts[u+1]) in list order, and the run's key.
__global__ void sum_runs_kernel(const int64_t* __restrict__ keys, const float* __restrict__ val,
                                const int64_t* __restrict__ starts, int64_t runs, int64_t total,
                                int64_t* __restrict__ out_keys, float* __restrict__ out_val) {
  for (int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; u < runs; u += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = starts[u], e = u + 1 < runs ? starts[u + 1] : total;
    float acc = 0.f;
    for (int64_t o = s; o < e; ++o) acc += val[o];
    out_keys[u] = keys[s];
    out_val[u] = acc;
  }
}

// (rowptr, col, val) from an unsorted COO list (rows, cols < n); duplicates summed in list order.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> coo_to_csr(const at::Tensor& rows, const at::Tensor& cols,
                                                                const at::Tensor& vals, int64_t n) {
  const auto opts = rows.options();
  if (rows.numel() == 0) return {at::zeros({n + 1}, opts), at::empty({0}, opts), at::empty({0}, vals.options())};
  TORCH_CHECK_VALUE(n <= (int64_t(1) << 31), "graph: at most 2^31 nodes on CUDA");  // row * n + col fits int64
  const at::Tensor key = rows * n + cols;
  const auto sorted = at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor skey = std::get<0>(sorted);
  const at::Tensor sval = vals.index_select(0, std::get<1>(sorted)).contiguous();
  at::Tensor change = at::ones({skey.numel()}, opts.dtype(at::kBool));  // where a run starts
  if (skey.numel() > 1) change.slice(0, 1).copy_(skey.slice(0, 1) != skey.slice(0, 0, -1));
  const at::Tensor starts = at::nonzero(change).view(-1).contiguous();
  const int64_t runs = starts.numel();
  at::Tensor ukey = at::empty({runs}, opts);
  at::Tensor uval = at::empty({runs}, vals.options());
  sum_runs_kernel<<<blocks_for(runs), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      skey.data_ptr<int64_t>(), sval.data_ptr<float>(), starts.data_ptr<int64_t>(), runs, skey.numel(),
      ukey.data_ptr<int64_t>(), uval.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor urow = at::floor_divide(ukey, n);
  return {rowptr_of(urow, n), (ukey - urow * n).contiguous(), uval};
}

// Product list of one GNN layer: for row i and neighbour slot j, the entries of
// A[nbr[i,j]] times weight[i,j], written at first[i*k + j] (an exclusive scan).
__global__ void expand_products_kernel(const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                                       const float* __restrict__ val, const int64_t* __restrict__ nbr,
                                       const float* __restrict__ weight, const int64_t* __restrict__ first,
                                       int64_t slots, int64_t k, int64_t* __restrict__ out_row,
                                       int64_t* __restrict__ out_col, float* __restrict__ out_val) {
  // one warp per (row, slot): consecutive lanes copy consecutive entries
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t s = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; s < slots; s += warps) {
    const int64_t r = nbr[s], i = s / k;
    const float w = weight[s];
    const int64_t b = rowptr[r], len = rowptr[r + 1] - b, dst = first[s];
    for (int64_t o = lane; o < len; o += 32) {
      out_row[dst + o] = i;
      out_col[dst + o] = col[b + o];
      out_val[dst + o] = w * val[b + o];
    }
  }
}

// The product list of Σ_j weight[i, j]·A[nbr[i, j]] over every row i (k = nbr.size(1)),
// as (rows, cols, vals) in (i, j, entry) order.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> neighbour_products(const at::Tensor& rowptr, const at::Tensor& col,
                                                                        const at::Tensor& val, const at::Tensor& nbr,
                                                                        const at::Tensor& weight) {
  const int64_t slots = nbr.numel(), k = nbr.size(1);
  const at::Tensor lens = (rowptr.slice(0, 1) - rowptr.slice(0, 0, -1)).index_select(0, nbr.reshape(-1));
  const at::Tensor first = lens.cumsum(0) - lens;  // exclusive scan
  const int64_t total = slots ? lens.sum().item<int64_t>() : 0;
  at::Tensor prow = at::empty({total}, rowptr.options());
  at::Tensor pcol = at::empty({total}, rowptr.options());
  at::Tensor pval = at::empty({total}, val.options());
  if (total > 0) {
    const int64_t blocks = std::min<int64_t>((slots * 32 + kThreads - 1) / kThreads, kMaxBlocks);
    expand_products_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), val.data_ptr<float>(), nbr.data_ptr<int64_t>(),
        weight.data_ptr<float>(), first.data_ptr<int64_t>(), slots, k, prow.data_ptr<int64_t>(),
        pcol.data_ptr<int64_t>(), pval.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {prow, pcol, pval};
}

// Aᵀ as CSR (column c lists the rows holding c, ascending).
struct Transposed {
  at::Tensor ptr, row, val;
};

inline Transposed transpose(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, int64_t cols) {
  const at::Tensor perm = std::get<1>(at::sort(col, /*stable=*/true, 0, false));  // stable: rows stay ascending
  return {rowptr_of(col.index_select(0, perm), cols), rows_of(rowptr, col.numel()).index_select(0, perm).contiguous(),
          val.index_select(0, perm).contiguous()};
}

// out[i, t - split] = Σ_c combine(A[i, c], B[t, c]) over the columns c that row i of A
// and row t >= split of B share, for each of the `rows` rows i of A; B given by its
// transpose. One block per row i: its entries are taken one at a time, the block's
// threads add that entry's products (distinct t) before the next, and a barrier
// between entries keeps every sum in entry order without atomics.
template <typename Combine>
__global__ void cross_kernel(const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                             const float* __restrict__ val, const int64_t* __restrict__ tptr,
                             const int64_t* __restrict__ trow, const float* __restrict__ tval, int64_t rows,
                             int64_t split, int64_t width, Combine combine, float* __restrict__ out) {
  for (int64_t i = blockIdx.x; i < rows; i += gridDim.x) {
    float* dst = out + i * width;
    for (int64_t x = rowptr[i]; x < rowptr[i + 1]; ++x) {
      const int64_t c = col[x];
      const float v = val[x];
      int64_t lo = tptr[c], hi = tptr[c + 1];  // first row >= split, by binary search
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (trow[mid] < split) lo = mid + 1; else hi = mid;
      }
      for (int64_t y = lo + threadIdx.x; y < tptr[c + 1]; y += blockDim.x) dst[trow[y] - split] += combine(v, tval[y]);
      __syncthreads();
    }
  }
}

template <typename Combine>
void cross(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const Transposed& t,
           int64_t rows, int64_t split, Combine combine, at::Tensor& out) {
  if (rows == 0 || col.numel() == 0 || out.numel() == 0) return;
  cross_kernel<<<std::min<int64_t>(rows, kMaxBlocks), 128, 0, c10::cuda::getCurrentCUDAStream()>>>(
      rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), val.data_ptr<float>(), t.ptr.data_ptr<int64_t>(),
      t.row.data_ptr<int64_t>(), t.val.data_ptr<float>(), rows, split, out.size(1), combine, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

struct Product {
  // __fmul_rn is never contracted into an FMA with the caller's +=: the product is
  // rounded and then added, as on the CPU (built without FMA), so the bits agree.
  __device__ float operator()(float a, float b) const { return __fmul_rn(a, b); }
};

struct Minimum {
  __device__ float operator()(float a, float b) const { return fminf(a, b); }
};

}  // namespace
}  // namespace cuda_sparse
}  // namespace pycsa
