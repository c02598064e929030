// CPU sparse kNN-graph kernels: CSR in, CSR (or a dense result) out, parallel over
// rows. Each worker keeps one dense accumulator of n floats and the list of
// columns it touched, so a row costs its number of products, not n.
#include "../graph.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace pycsa {
namespace {

struct CsrView {
  const int64_t* ptr;
  const int64_t* col;
  const float* val;
  int64_t n;
};

CsrView check_csr(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val) {
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.numel() >= 1, "rowptr: expected a 1-D tensor of length n + 1");
  TORCH_CHECK_TYPE(rowptr.scalar_type() == at::kLong && col.scalar_type() == at::kLong,
                   "rowptr/col: expected int64");
  TORCH_CHECK_TYPE(val.scalar_type() == at::kFloat, "val: expected float32, got ", val.scalar_type());
  TORCH_CHECK_VALUE(col.dim() == 1 && val.dim() == 1 && col.numel() == val.numel(),
                    "col/val: expected 1-D tensors of equal length");
  TORCH_CHECK_VALUE(rowptr.is_cpu() && col.is_cpu() && val.is_cpu(), "rowptr/col/val: expected CPU tensors");
  TORCH_CHECK_VALUE(rowptr.is_contiguous() && col.is_contiguous() && val.is_contiguous(),
                    "rowptr/col/val: expected contiguous tensors");
  const int64_t n = rowptr.numel() - 1;
  const int64_t* p = rowptr.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(p[0] == 0 && p[n] == col.numel(), "rowptr: must start at 0 and end at nnz = ", col.numel());
  for (int64_t r = 0; r < n; ++r) TORCH_CHECK_VALUE(p[r] <= p[r + 1], "rowptr: must be non-decreasing");
  if (col.numel()) {
    const auto [lo, hi] = at::aminmax(col);
    TORCH_CHECK_INDEX(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < n, "col: indices must lie in [0, ", n, ")");
  }
  return {p, col.data_ptr<int64_t>(), val.data_ptr<float>(), n};
}

// Builds a CSR from per-row (col, val) lists that are already sorted by column.
Csr from_rows(std::vector<std::vector<std::pair<int64_t, float>>>& rows) {
  const int64_t n = static_cast<int64_t>(rows.size());
  at::Tensor rowptr = at::empty({n + 1}, at::kLong);
  int64_t* p = rowptr.data_ptr<int64_t>();
  p[0] = 0;
  for (int64_t r = 0; r < n; ++r) p[r + 1] = p[r] + static_cast<int64_t>(rows[r].size());
  at::Tensor col = at::empty({p[n]}, at::kLong);
  at::Tensor val = at::empty({p[n]}, at::kFloat);
  int64_t* c = col.data_ptr<int64_t>();
  float* v = val.data_ptr<float>();
  at::parallel_for(0, n, 256, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      int64_t o = p[r];
      for (const auto& [cc, vv] : rows[r]) {
        c[o] = cc;
        v[o++] = vv;
      }
      std::vector<std::pair<int64_t, float>>().swap(rows[r]);
    }
  });
  return {rowptr, col, val};
}

// Transpose (CSC of A as a CSR): rows visited in order, so each output row is sorted.
struct Transposed {
  std::vector<int64_t> ptr, col;
  std::vector<float> val;
};

Transposed transpose(const CsrView& a) {
  Transposed t;
  const int64_t nnz = a.ptr[a.n];
  t.ptr.assign(a.n + 1, 0);
  for (int64_t o = 0; o < nnz; ++o) ++t.ptr[a.col[o] + 1];
  for (int64_t r = 0; r < a.n; ++r) t.ptr[r + 1] += t.ptr[r];
  t.col.resize(nnz);
  t.val.resize(nnz);
  std::vector<int64_t> next(t.ptr.begin(), t.ptr.end() - 1);
  for (int64_t r = 0; r < a.n; ++r) {
    for (int64_t o = a.ptr[r]; o < a.ptr[r + 1]; ++o) {
      const int64_t dst = next[a.col[o]]++;
      t.col[dst] = r;
      t.val[dst] = a.val[o];
    }
  }
  return t;
}

}  // namespace

Csr csr_add_transpose_cpu(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val) {
  const CsrView a = check_csr(rowptr, col, val);
  const Transposed t = transpose(a);
  std::vector<std::vector<std::pair<int64_t, float>>> rows(a.n);
  at::parallel_for(0, a.n, 256, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      auto& out = rows[r];
      int64_t x = a.ptr[r], xe = a.ptr[r + 1], y = t.ptr[r], ye = t.ptr[r + 1];
      out.reserve((xe - x) + (ye - y));
      while (x < xe || y < ye) {  // merge two sorted rows
        if (y == ye || (x < xe && a.col[x] < t.col[y])) {
          out.emplace_back(a.col[x], a.val[x]);
          ++x;
        } else if (x == xe || t.col[y] < a.col[x]) {
          out.emplace_back(t.col[y], t.val[y]);
          ++y;
        } else {
          out.emplace_back(a.col[x], a.val[x] + t.val[y]);
          ++x;
          ++y;
        }
      }
    }
  });
  return from_rows(rows);
}

Csr gnn_propagate_cpu(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                      const at::Tensor& nbr, const at::Tensor& weight) {
  const CsrView a = check_csr(rowptr, col, val);
  TORCH_CHECK_VALUE(nbr.dim() == 2 && nbr.size(0) == a.n, "nbr: expected shape (", a.n, ", k), got ", nbr.sizes());
  TORCH_CHECK_VALUE(weight.sizes() == nbr.sizes(), "weight: expected shape ", nbr.sizes(), ", got ", weight.sizes());
  TORCH_CHECK_TYPE(nbr.scalar_type() == at::kLong, "nbr: expected int64");
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat, "weight: expected float32");
  TORCH_CHECK_VALUE(nbr.is_cpu() && weight.is_cpu(), "nbr/weight: expected CPU tensors");
  const at::Tensor nb = nbr.contiguous(), w = weight.contiguous();
  if (nb.numel()) {
    const auto [lo, hi] = at::aminmax(nb);
    TORCH_CHECK_INDEX(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < a.n, "nbr: indices must lie in [0, ", a.n, ")");
  }
  const int64_t k = nb.size(1);
  const int64_t* R = nb.data_ptr<int64_t>();
  const float* W = w.data_ptr<float>();
  std::vector<std::vector<std::pair<int64_t, float>>> rows(a.n);
  at::parallel_for(0, a.n, 64, [&](int64_t lo, int64_t hi) {
    std::vector<float> acc(a.n, 0.f);
    std::vector<char> seen(a.n, 0);
    std::vector<int64_t> touched;
    for (int64_t i = lo; i < hi; ++i) {
      touched.clear();
      for (int64_t j = 0; j < k; ++j) {
        const int64_t r = R[i * k + j];
        const float wt = W[i * k + j];
        for (int64_t o = a.ptr[r]; o < a.ptr[r + 1]; ++o) {
          const int64_t c = a.col[o];
          if (!seen[c]) {
            seen[c] = 1;
            touched.push_back(c);
          }
          acc[c] += wt * a.val[o];
        }
      }
      std::sort(touched.begin(), touched.end());
      double sq = 0;
      for (int64_t c : touched) sq += static_cast<double>(acc[c]) * acc[c];
      const float norm = static_cast<float>(std::sqrt(sq));
      auto& out = rows[i];
      out.reserve(touched.size());
      for (int64_t c : touched) {
        out.emplace_back(c, norm > 0 ? acc[c] / norm : 0.f);
        acc[c] = 0.f;
        seen[c] = 0;
      }
    }
  });
  return from_rows(rows);
}

at::Tensor csr_cross_dense_cpu(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                               int64_t split) {
  const CsrView a = check_csr(rowptr, col, val);
  TORCH_CHECK_VALUE(split >= 0 && split <= a.n, "split: must lie in [0, ", a.n, "], got ", split);
  const int64_t g = a.n - split;
  const Transposed t = transpose(a);  // column c lists the rows holding c, ascending
  at::Tensor out = at::zeros({split, g}, at::kFloat);
  float* o = out.data_ptr<float>();
  at::parallel_for(0, split, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      float* dst = o + i * g;
      for (int64_t x = a.ptr[i]; x < a.ptr[i + 1]; ++x) {
        const int64_t c = a.col[x];
        const float v = a.val[x];
        // rows of column c are ascending: skip to the gallery part
        const int64_t* first = t.col.data() + t.ptr[c];
        const int64_t* last = t.col.data() + t.ptr[c + 1];
        for (const int64_t* y = std::lower_bound(first, last, split); y < last; ++y)
          dst[*y - split] += v * t.val[y - t.col.data()];
      }
    }
  });
  return out;
}

}  // namespace pycsa
