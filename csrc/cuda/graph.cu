// CUDA sparse kNN-graph kernels (the CPU twins are in csrc/cpu/graph.cpp).
//
// A CSR matrix is built the same way in every op: write the (row, col, value)
// products as a COO list in a fixed order, sort it by (row, col) with a stable sort,
// then add up each run of equal keys in list order with one thread per run. The
// sums therefore never depend on thread scheduling (no atomics), so two runs, and
// the CPU kernels where they add in the same order, give the same bits.
//
// Memory: gnn_propagate holds its expanded product list, Σ_i Σ_j nnz(A[nbr[i,j]])
// entries (about k·nnz(A)) of 20 bytes plus the sort's copy; csr_cross_dense holds Aᵀ
// (nnz(A) entries) and the dense split x (n - split) output.
#include "../graph.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

namespace pycsa {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) { return std::max<int64_t>(1, (n + kThreads - 1) / kThreads); }

void check_csr_cuda(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val) {
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.numel() >= 1, "rowptr: expected a 1-D tensor of length n + 1");
  TORCH_CHECK_TYPE(rowptr.scalar_type() == at::kLong && col.scalar_type() == at::kLong,
                   "rowptr/col: expected int64");
  TORCH_CHECK_TYPE(val.scalar_type() == at::kFloat, "val: expected float32, got ", val.scalar_type());
  TORCH_CHECK_VALUE(col.dim() == 1 && val.dim() == 1 && col.numel() == val.numel(),
                    "col/val: expected 1-D tensors of equal length");
  TORCH_CHECK_VALUE(rowptr.is_cuda() && col.device() == rowptr.device() && val.device() == rowptr.device(),
                    "rowptr/col/val: expected CUDA tensors on one device");
  const int64_t n = rowptr.numel() - 1;
  // One device-to-host copy for all the structural checks (C++ checks before it indexes).
  const at::Tensor bad = at::stack({
      (rowptr[0] != 0).to(at::kLong),
      (rowptr[n] != col.numel()).to(at::kLong),
      n > 0 ? (rowptr.diff() < 0).any().to(at::kLong) : at::zeros({}, rowptr.options()),
      col.numel() ? ((col < 0) | (col >= n)).any().to(at::kLong) : at::zeros({}, rowptr.options()),
  }).cpu();
  const int64_t* b = bad.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(!b[0] && !b[1], "rowptr: must start at 0 and end at nnz = ", col.numel());
  TORCH_CHECK_VALUE(!b[2], "rowptr: must be non-decreasing");
  TORCH_CHECK_INDEX(!b[3], "col: indices must lie in [0, ", n, ")");
}

// row index of every stored entry
__global__ void expand_rows_kernel(const int64_t* __restrict__ rowptr, int64_t n, int64_t* __restrict__ rows) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < n; r += int64_t(gridDim.x) * blockDim.x)
    for (int64_t o = rowptr[r]; o < rowptr[r + 1]; ++o) rows[o] = r;
}

at::Tensor rows_of(const at::Tensor& rowptr, int64_t nnz) {
  const int64_t n = rowptr.numel() - 1;
  at::Tensor rows = at::empty({nnz}, rowptr.options());
  if (nnz == 0) return rows;
  expand_rows_kernel<<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      rowptr.data_ptr<int64_t>(), n, rows.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return rows;
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

// CSR from an unsorted COO list (rows < n, cols < n); duplicates are summed in list order.
Csr coo_to_csr(const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& vals, int64_t n) {
  const auto opts = rows.options();
  if (rows.numel() == 0) {
    return {at::zeros({n + 1}, opts), at::empty({0}, opts), at::empty({0}, vals.options())};
  }
  // n < 2^31.5 keeps row * n + col inside int64
  TORCH_CHECK_VALUE(n <= (int64_t(1) << 31), "graph: at most 2^31 nodes on CUDA");
  const at::Tensor key = rows * n + cols;
  const auto sorted = at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor skey = std::get<0>(sorted);
  const at::Tensor sval = vals.index_select(0, std::get<1>(sorted)).contiguous();
  // run starts: positions where the key changes
  at::Tensor change = at::ones({skey.numel()}, opts.dtype(at::kBool));
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
  at::Tensor rowptr = at::zeros({n + 1}, opts);
  rowptr.slice(0, 1).copy_(at::bincount(urow, {}, n).cumsum(0));
  return {rowptr, (ukey - urow * n).contiguous(), uval};
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

// 1 / ||row|| for every row (0 for an empty or all-zero row), summed in column order.
__global__ void inverse_row_norms_kernel(const int64_t* __restrict__ rowptr, const float* __restrict__ val,
                                         int64_t n, float* __restrict__ inv) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < n; r += int64_t(gridDim.x) * blockDim.x) {
    double sq = 0;
    for (int64_t o = rowptr[r]; o < rowptr[r + 1]; ++o) sq += double(val[o]) * val[o];
    const float norm = static_cast<float>(sqrt(sq));
    inv[r] = norm > 0 ? 1.0f / norm : 0.f;
  }
}

// Row i of the dense cross product, one block per query row: the row's entries are
// taken one at a time, and the block's threads add that entry's gallery products
// (column c of A, rows >= split, all distinct) before the next; a barrier between
// entries keeps each output's sum in entry order without atomics.
__global__ void cross_dense_kernel(const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                                   const float* __restrict__ val, const int64_t* __restrict__ tptr,
                                   const int64_t* __restrict__ trow, const float* __restrict__ tval, int64_t split,
                                   int64_t g, float* __restrict__ out) {
  for (int64_t i = blockIdx.x; i < split; i += gridDim.x) {
    float* dst = out + i * g;
    for (int64_t x = rowptr[i]; x < rowptr[i + 1]; ++x) {
      const int64_t c = col[x];
      const float v = val[x];
      // rows of column c are ascending: find the first gallery row by binary search
      int64_t lo = tptr[c], hi = tptr[c + 1];
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (trow[mid] < split) lo = mid + 1; else hi = mid;
      }
      for (int64_t y = lo + threadIdx.x; y < tptr[c + 1]; y += blockDim.x) dst[trow[y] - split] += v * tval[y];
      __syncthreads();
    }
  }
}

struct Transposed {
  at::Tensor ptr, row, val;
};

Transposed transpose_cuda(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val) {
  const int64_t n = rowptr.numel() - 1;
  // stable sort by column keeps the rows of each column ascending
  const auto sorted = at::sort(col, /*stable=*/true, 0, false);
  const at::Tensor perm = std::get<1>(sorted);
  at::Tensor ptr = at::zeros({n + 1}, rowptr.options());
  if (col.numel()) ptr.slice(0, 1).copy_(at::bincount(col, {}, n).cumsum(0));
  return {ptr, rows_of(rowptr, col.numel()).index_select(0, perm).contiguous(),
          val.index_select(0, perm).contiguous()};
}

void check_neighbours_cuda(int64_t n, const at::Tensor& rowptr, const at::Tensor& nbr, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(nbr.dim() == 2 && nbr.size(0) == n, "nbr: expected shape (", n, ", k), got ", nbr.sizes());
  TORCH_CHECK_VALUE(weight.sizes() == nbr.sizes(), "weight: expected shape ", nbr.sizes(), ", got ", weight.sizes());
  TORCH_CHECK_TYPE(nbr.scalar_type() == at::kLong, "nbr: expected int64");
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat, "weight: expected float32");
  TORCH_CHECK_VALUE(nbr.device() == rowptr.device() && weight.device() == rowptr.device(),
                    "nbr/weight: expected CUDA tensors on the graph's device");
  if (nbr.numel()) {
    TORCH_CHECK_INDEX(!((nbr < 0) | (nbr >= n)).any().item<bool>(), "nbr: indices must lie in [0, ", n, ")");
  }
}

}  // namespace

Csr csr_add_transpose_cuda(const at::Tensor& rowptr_in, const at::Tensor& col_in, const at::Tensor& val_in) {
  check_csr_cuda(rowptr_in, col_in, val_in);
  const c10::cuda::CUDAGuard guard(rowptr_in.device());
  const at::Tensor rowptr = rowptr_in.contiguous(), col = col_in.contiguous(), val = val_in.contiguous();
  const int64_t n = rowptr.numel() - 1;
  const at::Tensor rows = rows_of(rowptr, col.numel());
  // A's entries first, then Aᵀ's: a pair present in both adds A's value first, as on the CPU
  return coo_to_csr(at::cat({rows, col}), at::cat({col, rows}), at::cat({val, val}), n);
}

Csr gnn_propagate_cuda(const at::Tensor& rowptr_in, const at::Tensor& col_in, const at::Tensor& val_in,
                       const at::Tensor& nbr_in, const at::Tensor& weight_in) {
  check_csr_cuda(rowptr_in, col_in, val_in);
  const c10::cuda::CUDAGuard guard(rowptr_in.device());
  const at::Tensor rowptr = rowptr_in.contiguous(), col = col_in.contiguous(), val = val_in.contiguous();
  const int64_t n = rowptr.numel() - 1;
  check_neighbours_cuda(n, rowptr, nbr_in, weight_in);
  const at::Tensor nbr = nbr_in.contiguous(), weight = weight_in.contiguous();
  const int64_t k = nbr.size(1), slots = n * k;
  const auto stream = c10::cuda::getCurrentCUDAStream();

  at::Tensor lens = (rowptr.slice(0, 1) - rowptr.slice(0, 0, -1)).index_select(0, nbr.view(-1));
  at::Tensor first = lens.cumsum(0) - lens;  // exclusive scan
  const int64_t total = slots ? (lens.sum()).item<int64_t>() : 0;
  at::Tensor prow = at::empty({total}, rowptr.options());
  at::Tensor pcol = at::empty({total}, rowptr.options());
  at::Tensor pval = at::empty({total}, val.options());
  if (total > 0) {
    const int64_t blocks = std::min<int64_t>((slots * 32 + kThreads - 1) / kThreads, 1 << 20);
    expand_products_kernel<<<blocks, kThreads, 0, stream>>>(
        rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), val.data_ptr<float>(), nbr.data_ptr<int64_t>(),
        weight.data_ptr<float>(), first.data_ptr<int64_t>(), slots, k, prow.data_ptr<int64_t>(),
        pcol.data_ptr<int64_t>(), pval.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  auto [optr, ocol, oval] = coo_to_csr(prow, pcol, pval, n);
  at::Tensor inv = at::empty({n}, val.options());
  if (n > 0) {
    inverse_row_norms_kernel<<<blocks_for(n), kThreads, 0, stream>>>(optr.data_ptr<int64_t>(),
                                                                     oval.data_ptr<float>(), n,
                                                                     inv.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  oval.mul_(inv.index_select(0, rows_of(optr, ocol.numel())));
  return {optr, ocol, oval};
}

at::Tensor csr_cross_dense_cuda(const at::Tensor& rowptr_in, const at::Tensor& col_in, const at::Tensor& val_in,
                                int64_t split) {
  check_csr_cuda(rowptr_in, col_in, val_in);
  const c10::cuda::CUDAGuard guard(rowptr_in.device());
  const at::Tensor rowptr = rowptr_in.contiguous(), col = col_in.contiguous(), val = val_in.contiguous();
  const int64_t n = rowptr.numel() - 1;
  TORCH_CHECK_VALUE(split >= 0 && split <= n, "split: must lie in [0, ", n, "], got ", split);
  const int64_t g = n - split;
  at::Tensor out = at::zeros({split, g}, val.options());
  if (out.numel() == 0 || col.numel() == 0) return out;
  const Transposed t = transpose_cuda(rowptr, col, val);
  const int64_t blocks = std::min<int64_t>(split, 1 << 20);
  cross_dense_kernel<<<blocks, 128, 0, c10::cuda::getCurrentCUDAStream()>>>(
      rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), val.data_ptr<float>(), t.ptr.data_ptr<int64_t>(),
      t.row.data_ptr<int64_t>(), t.val.data_ptr<float>(), split, g, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// On the GPU the propagated gallery rows fit (about k·nnz(A) entries), so the last
// layer is formed and crossed rather than fused as on the CPU.
at::Tensor gnn_propagate_cross_cuda(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                                    const at::Tensor& nbr, const at::Tensor& weight, int64_t split) {
  TORCH_CHECK_VALUE(split >= 0 && split <= rowptr.numel() - 1, "split: must lie in [0, ", rowptr.numel() - 1,
                    "], got ", split);
  auto [p, c, v] = gnn_propagate_cuda(rowptr, col, val, nbr, weight);
  return csr_cross_dense_cuda(p, c, v, split);
}

}  // namespace pycsa

TORCH_LIBRARY_IMPL(pycsa, CUDA, m) {
  m.impl("csr_add_transpose", &pycsa::csr_add_transpose_cuda);
  m.impl("gnn_propagate", &pycsa::gnn_propagate_cuda);
  m.impl("csr_cross_dense", &pycsa::csr_cross_dense_cuda);
  m.impl("gnn_propagate_cross", &pycsa::gnn_propagate_cross_cuda);
}
