// Sparse kNN-graph kernels (SPEC §3): a graph is a square CSR matrix
// (rowptr int64 [n+1], col int64 [nnz] ascending within each row, val float32 [nnz]).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pycsa {

using Csr = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Shared checks (graph_checks.cpp): dtypes and shapes of a CSR graph and of a layer's
// neighbour lists (n x k indices and weights).
void check_csr_layout(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val);
void check_neighbours_layout(int64_t n, const at::Tensor& nbr, const at::Tensor& weight);

// A + Aᵀ (entries present in both are summed).
Csr csr_add_transpose_cpu(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val);

// One GNN message-passing layer: out[i] = Σ_{j<k} weight[i,j] · A[nbr[i,j]], each row
// then divided by its L2 norm (rows of norm 0 stay 0). nbr, weight: n x k.
Csr gnn_propagate_cpu(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                      const at::Tensor& nbr, const at::Tensor& weight);

// csr_cross_dense(gnn_propagate(A, nbr, weight), split) without forming the
// propagated gallery rows: the GNN's last layer and its query-gallery similarity.
at::Tensor gnn_propagate_cross_cpu(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                                   const at::Tensor& nbr, const at::Tensor& weight, int64_t split);

// Dense A[:split] · A[split:]ᵀ, shape split x (n - split): the query-gallery similarity.
at::Tensor csr_cross_dense_cpu(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                               int64_t split);

}  // namespace pycsa
