// Multi-head self-attention with per-sequence lengths:
//   out[b, h, i] = softmax_j<len_b(scale * <q[b,h,i], k[b,h,j]>) · v[b,h,j]   for i < len_b,
//   out[b, h, i] = 0                                                          for i >= len_b,
// q, k, v, out of shape (B, H, T, D). No T x T matrix is held: keys are visited in
// blocks with an online softmax. Shared by the CPU and CUDA implementations.
#pragma once

#include <ATen/ATen.h>
#include <optional>
#include <string>

namespace pycsa {

// Shapes, dtypes and devices; on CPU also the range of lengths (on CUDA the kernel
// clamps lengths to [0, T] rather than synchronising to check them).
void check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& lengths);

// What the kernels read: q, k, v with a dense head dimension (any strides elsewhere,
// e.g. views of a fused qkv projection) and contiguous lengths (undefined if absent).
struct AttentionInputs {
  at::Tensor q, k, v, lengths;
};
AttentionInputs attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const std::optional<at::Tensor>& lengths);

// 1/sqrt(D) unless the caller gives a scale.
inline double attention_scale(const at::Tensor& q, std::optional<double> scale) {
  return scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(q.size(3), 1)));
}

// What the CPU op runs for these inputs: "sdpa" (every sequence full), "sdpa per sequence"
// (ragged, sequences 32 tokens long on average or more: each one's valid part alone) or
// "pycsa" (the C++ kernel). The setter turns both SDPA paths off, for tests of the kernel
// and for benchmarks.
std::string attention_cpu_path(const at::Tensor& q, const std::optional<at::Tensor>& lengths);
void set_attention_cpu_to_sdpa(bool on);

at::Tensor attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const std::optional<at::Tensor>& lengths, std::optional<double> scale);

}  // namespace pycsa
