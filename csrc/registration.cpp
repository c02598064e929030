// Operator schemas and CPU kernels, registered with the PyTorch dispatcher.
// Kept apart from the pybind11 module so C++ users (CMake build, libpycsa)
// get the ops without Python: torch::ops::load_library / torch.ops.load_library.
#include <torch/library.h>

#include "affinity.h"
#include "attention.h"
#include "gather_sum.h"
#include "graph.h"
#include "kreciprocal.h"
#include "topk.h"

TORCH_LIBRARY(pycsa, m) {
  m.def("affinity(Tensor database, Tensor ranks, int num_anchors, Tensor? queries=None) -> Tensor");
  m.def("attention(Tensor q, Tensor k, Tensor v, Tensor? lengths=None, float? scale=None) -> Tensor");
  m.def("k_reciprocal(Tensor q_g, Tensor q_q, Tensor g_g, int k1, int k2, float lambda_value) -> Tensor");
  m.def("weighted_gather_sum(Tensor source, Tensor index, Tensor weight) -> Tensor");
  m.def("csr_add_transpose(Tensor rowptr, Tensor col, Tensor val) -> (Tensor, Tensor, Tensor)");
  m.def("gnn_propagate(Tensor rowptr, Tensor col, Tensor val, Tensor nbr, Tensor weight) -> (Tensor, Tensor, Tensor)");
  m.def("csr_cross_dense(Tensor rowptr, Tensor col, Tensor val, int split) -> Tensor");
  m.def("gnn_propagate_cross(Tensor rowptr, Tensor col, Tensor val, Tensor nbr, Tensor weight, int split) -> Tensor");
  m.def("k_reciprocal_features(Tensor query, Tensor gallery, int k1, int k2, float lambda_value) -> Tensor");
  m.def("k_reciprocal_self(Tensor feats, int k1, int k2, float lambda_value) -> Tensor");
  m.def("inner_product_topk(Tensor queries, Tensor database, int k) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pycsa, CPU, m) {
  m.impl("affinity", &pycsa::affinity_cpu);
  m.impl("attention", &pycsa::attention_cpu);
  m.impl("k_reciprocal", &pycsa::k_reciprocal_cpu);
  m.impl("k_reciprocal_features", &pycsa::k_reciprocal_features_cpu);
  m.impl("k_reciprocal_self", &pycsa::k_reciprocal_self_cpu);
  m.impl("weighted_gather_sum", &pycsa::weighted_gather_sum_cpu);
  m.impl("csr_add_transpose", &pycsa::csr_add_transpose_cpu);
  m.impl("gnn_propagate", &pycsa::gnn_propagate_cpu);
  m.impl("csr_cross_dense", &pycsa::csr_cross_dense_cpu);
  m.impl("gnn_propagate_cross", &pycsa::gnn_propagate_cross_cpu);
  m.impl("inner_product_topk", &pycsa::inner_product_topk_cpu);
}
