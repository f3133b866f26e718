// Token embedding lookup and its scatter-add backward.
#include <string>

#include "core/error.h"
#include "kernels/cpu/cpu_kernels.h"

namespace bhasa::cpu {

// torch: out = table[ids]        ids (T), table (V, D), out (T, D)
template <class T>
void embedding_forward(int n_tok, int D, const int32_t* ids, const T* table, T* out) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < n_tok; ++t) {
    const T* src = table + static_cast<size_t>(ids[t]) * D;
    T* dst = out + static_cast<size_t>(t) * D;
    for (int d = 0; d < D; ++d) dst[d] = src[d];
  }
}

// torch: dtable.index_add_(0, ids, dout)      dtable (V, D) +=
// Two tokens may share an id, so rows cannot be split across threads; columns are:
// each thread owns a slice of D and walks the tokens in order (deterministic).
template <class T>
void embedding_backward(int n_tok, int D, int V, const int32_t* ids, const T* dout, T* dtable) {
  for (int t = 0; t < n_tok; ++t)
    check(ids[t] >= 0 && ids[t] < V, [&] { return "embedding_backward: token id " + std::to_string(ids[t]) +
                                         " is outside the vocabulary [0, " + std::to_string(V) +
                                         "); check the tokenizer matches the model"; });
  constexpr int kCols = 64;
  const int n_slices = (D + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (int s = 0; s < n_slices; ++s) {
    const int d0 = s * kCols, d1 = d0 + kCols < D ? d0 + kCols : D;
    for (int t = 0; t < n_tok; ++t) {
      const T* src = dout + static_cast<size_t>(t) * D;
      T* dst = dtable + static_cast<size_t>(ids[t]) * D;
#pragma omp simd
      for (int d = d0; d < d1; ++d) dst[d] += src[d];
    }
  }
}

template void embedding_forward<float>(int, int, const int32_t*, const float*, float*);
template void embedding_forward<double>(int, int, const int32_t*, const double*, double*);
template void embedding_backward<float>(int, int, int, const int32_t*, const float*, float*);
template void embedding_backward<double>(int, int, int, const int32_t*, const double*, double*);

}  // namespace bhasa::cpu
