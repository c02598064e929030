// k-reciprocal re-ranking (Zhong et al. 2017, SPEC §4) with a sparse V.
#pragma once

#include <ATen/ATen.h>

namespace pycsa {

// Shared argument checks (kreciprocal_checks.cpp): shapes, dtypes, one device, k1, k2, lambda.
void check_k_reciprocal_args(int64_t k1, int64_t k2, double lambda);
void check_k_reciprocal_matrices(const at::Tensor& q_g, const at::Tensor& q_q, const at::Tensor& g_g);
void check_k_reciprocal_features(const at::Tensor& query, const at::Tensor& gallery);

// Final q x g distance (1 - lambda) * Jaccard + lambda * original, float32.
// k1 is clamped to N - 1 and k2 to N (N = q + g), as slicing does in the original.
at::Tensor k_reciprocal_cpu(const at::Tensor& q_g, const at::Tensor& q_q, const at::Tensor& g_g,
                            int64_t k1, int64_t k2, double lambda);

// The same from features: Euclidean distances between the rows of [query; gallery],
// computed a block at a time (no q x q, g x g or N x N matrix is formed).
at::Tensor k_reciprocal_features_cpu(const at::Tensor& query, const at::Tensor& gallery, int64_t k1, int64_t k2,
                                     double lambda);

// Every item a query against all items (the leave-one-out protocol): the graph is built once
// over the rows of feats (N x d), not over [feats; feats]; the result is N x N.
at::Tensor k_reciprocal_self_cpu(const at::Tensor& feats, int64_t k1, int64_t k2, double lambda);

// From features, pass 1 computes each pair once while the per-thread heaps it needs stay
// under this many bytes (512 MB by default), else it stages full rows; tests lower it.
void set_k_reciprocal_heap_limit(int64_t bytes);

// Pass 1 from features starts each row's candidates under a bound from its cell mates; tests
// scale it (below 1: may be too low, so that rows are ranked again from their full row; 0:
// every row without m exact duplicates is) or, below 0, start every row at +inf.
void set_k_reciprocal_seed_scale(double scale);

}  // namespace pycsa
