// CUDA sparse kNN-graph kernels (the CPU twins are in csrc/cpu/graph.cpp), built
// from the deterministic sort-and-sum pieces of sparse.cuh.
//
// Memory: gnn_propagate holds its expanded product list, Σ_i Σ_j nnz(A[nbr[i,j]])
// entries (about k·nnz(A)) of 20 bytes plus the sort's copy; csr_cross_dense holds Aᵀ
// (nnz(A) entries) and the dense split x (n - split) output.
#include "../graph.h"
#include "sparse.cuh"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

namespace pycsa {
namespace {

using cuda_sparse::blocks_for;
using cuda_sparse::coo_to_csr;
using cuda_sparse::kThreads;
using cuda_sparse::rows_of;

// 1 if some row lists a column twice or out of order (the cross kernel's threads write
// one output per (row, col): a repeated column would race). rowptr is not validated
// yet, so its entries are clamped before they index: a bad rowptr is reported by its own
// check, never read out of bounds here.
at::Tensor unsorted_within_rows(const at::Tensor& rowptr, const at::Tensor& col) {
  const int64_t n = rowptr.numel() - 1, nnz = col.numel();
  at::Tensor starts = at::zeros({nnz + 1}, rowptr.options().dtype(at::kBool));
  starts.index_fill_(0, rowptr.slice(0, 0, n).clamp(0, nnz), true);
  const at::Tensor same_row = starts.slice(0, 1, nnz).logical_not();
  return (same_row & (col.slice(0, 1) <= col.slice(0, 0, -1))).any().to(at::kLong);
}

void check_csr_cuda(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val) {
  check_csr_layout(rowptr, col, val);
  TORCH_CHECK_VALUE(rowptr.is_cuda() && col.device() == rowptr.device() && val.device() == rowptr.device(),
                    "rowptr/col/val: expected CUDA tensors on one device");
  const int64_t n = rowptr.numel() - 1;
  // One device-to-host copy for all the structural checks (C++ checks before it indexes).
  const at::Tensor bad = at::stack({
      (rowptr[0] != 0).to(at::kLong),
      (rowptr[n] != col.numel()).to(at::kLong),
      n > 0 ? (rowptr.diff() < 0).any().to(at::kLong) : at::zeros({}, rowptr.options()),
      col.numel() ? ((col < 0) | (col >= n)).any().to(at::kLong) : at::zeros({}, rowptr.options()),
      col.numel() > 1 ? unsorted_within_rows(rowptr, col) : at::zeros({}, rowptr.options()),
  }).cpu();
  const int64_t* b = bad.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(!b[0] && !b[1], "rowptr: must start at 0 and end at nnz = ", col.numel());
  TORCH_CHECK_VALUE(!b[2], "rowptr: must be non-decreasing");
  TORCH_CHECK_INDEX(!b[3], "col: indices must lie in [0, ", n, ")");
  TORCH_CHECK_VALUE(!b[4], "col: must be strictly ascending within each row (no repeated column)");
}

// Each row divided by its L2 norm (summed in column order in double; rows of norm 0
// become 0): the CPU's expression, so the values carry the CPU twin's bits.
__global__ void normalize_rows_kernel(const int64_t* __restrict__ rowptr, int64_t n, float* __restrict__ val) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < n; r += int64_t(gridDim.x) * blockDim.x) {
    double sq = 0;
    for (int64_t o = rowptr[r]; o < rowptr[r + 1]; ++o) sq += double(val[o]) * val[o];
    const float norm = static_cast<float>(sqrt(sq));
    for (int64_t o = rowptr[r]; o < rowptr[r + 1]; ++o) val[o] = norm > 0 ? __fdiv_rn(val[o], norm) : 0.f;
  }
}

void check_neighbours_cuda(int64_t n, const at::Tensor& rowptr, const at::Tensor& nbr, const at::Tensor& weight) {
  check_neighbours_layout(n, nbr, weight);
  TORCH_CHECK_VALUE(nbr.device() == rowptr.device() && weight.device() == rowptr.device(),
                    "nbr/weight: expected CUDA tensors on the graph's device");
  if (nbr.numel()) {
    TORCH_CHECK_INDEX(!((nbr < 0) | (nbr >= n)).any().item<bool>(), "nbr: indices must lie in [0, ", n, ")");
  }
}

void check_split(const at::Tensor& rowptr, int64_t split) {
  const int64_t n = rowptr.numel() - 1;
  TORCH_CHECK_VALUE(split >= 0 && split <= n, "split: must lie in [0, ", n, "], got ", split);
}

// Dense A[:split]·A[split:]ᵀ of a checked, contiguous CSR on the current device.
at::Tensor cross_dense(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, int64_t split) {
  const int64_t n = rowptr.numel() - 1;
  at::Tensor out = at::zeros({split, n - split}, val.options());
  if (out.numel() == 0 || col.numel() == 0) return out;
  const cuda_sparse::Transposed t = cuda_sparse::transpose(rowptr, col, val, n);
  cuda_sparse::cross(rowptr, col, val, t, split, split, cuda_sparse::Product{}, out);
  return out;
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
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto [prow, pcol, pval] = cuda_sparse::neighbour_products(rowptr, col, val, nbr, weight);
  auto [optr, ocol, oval] = coo_to_csr(prow, pcol, pval, n);
  if (n > 0 && ocol.numel()) {
    normalize_rows_kernel<<<blocks_for(n), kThreads, 0, stream>>>(optr.data_ptr<int64_t>(), n,
                                                                   oval.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {optr, ocol, oval};
}

at::Tensor csr_cross_dense_cuda(const at::Tensor& rowptr_in, const at::Tensor& col_in, const at::Tensor& val_in,
                                int64_t split) {
  check_csr_cuda(rowptr_in, col_in, val_in);
  check_split(rowptr_in, split);
  const c10::cuda::CUDAGuard guard(rowptr_in.device());
  return cross_dense(rowptr_in.contiguous(), col_in.contiguous(), val_in.contiguous(), split);
}

// On the GPU the propagated gallery rows fit (about k·nnz(A) entries), so the last
// layer is formed and crossed rather than fused as on the CPU.
at::Tensor gnn_propagate_cross_cuda(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                                    const at::Tensor& nbr, const at::Tensor& weight, int64_t split) {
  check_split(rowptr, split);  // before the work
  const auto [p, c, v] = gnn_propagate_cuda(rowptr, col, val, nbr, weight);
  const c10::cuda::CUDAGuard guard(rowptr.device());
  return cross_dense(p, c, v, split);  // the layer's own output: no second validation pass
}

}  // namespace pycsa

TORCH_LIBRARY_IMPL(pycsa, CUDA, m) {
  m.impl("csr_add_transpose", &pycsa::csr_add_transpose_cuda);
  m.impl("gnn_propagate", &pycsa::gnn_propagate_cuda);
  m.impl("csr_cross_dense", &pycsa::csr_cross_dense_cuda);
  m.impl("gnn_propagate_cross", &pycsa::gnn_propagate_cross_cuda);
}
