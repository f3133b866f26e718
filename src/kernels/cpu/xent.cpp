// Cross-entropy over the vocabulary, with the gradient written over the logits.
#include <cmath>
#include <string>

#include "core/error.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/fast_math.h"

namespace bhasa::cpu {

// torch: loss = F.cross_entropy(logits, targets, ignore_index=-100 (any < 0), reduction='sum')
// logits (T, V) row stride ldl. When dlogits_scale != 0 each row is overwritten by
// (softmax(logits) - onehot(target)) * dlogits_scale (zeros for ignored rows).
template <class T>
double cross_entropy(int n_tok, int V, T* logits, int ldl, const int32_t* targets,
                     T dlogits_scale) {
  for (int t = 0; t < n_tok; ++t)
    check(targets[t] < V, [&] { return "cross_entropy: target id " + std::to_string(targets[t]) +
                              " is outside the vocabulary of " + std::to_string(V) +
                              "; check the data was tokenized for this model"; });
  static thread_local std::vector<double> row_loss_buf;
  double* row_loss = scratch(row_loss_buf, static_cast<size_t>(n_tok));  // (T)
  const bool grad = dlogits_scale != T(0);
#pragma omp parallel for schedule(static)
  for (int t = 0; t < n_tok; ++t) {
    T* row = logits + static_cast<size_t>(t) * ldl;  // (V)
    const int target = targets[t];
    if (target < 0) {
      row_loss[t] = 0.0;
      if (grad)
        for (int i = 0; i < V; ++i) row[i] = 0;
      continue;
    }
    T max = row[0];
#pragma omp simd reduction(max : max)
    for (int i = 0; i < V; ++i) max = row[i] > max ? row[i] : max;
    const T target_logit = row[target];
    double sum = 0.0;  // of exp(logit - max); float blocks flushed into a double
    for (int i0 = 0; i0 < V; i0 += 1024) {
      const int i1 = i0 + 1024 < V ? i0 + 1024 : V;
      T block = 0;
      if (grad) {  // keep exp(logit - max) in place for the gradient pass
#pragma omp simd reduction(+ : block)
        for (int i = i0; i < i1; ++i) {
          row[i] = exp_(row[i] - max);
          block += row[i];
        }
      } else {
#pragma omp simd reduction(+ : block)
        for (int i = i0; i < i1; ++i) block += exp_(row[i] - max);
      }
      sum += static_cast<double>(block);
    }
    row_loss[t] = std::log(sum) + static_cast<double>(max) - static_cast<double>(target_logit);
    if (grad) {
      const T scale = static_cast<T>(static_cast<double>(dlogits_scale) / sum);
#pragma omp simd
      for (int i = 0; i < V; ++i) row[i] *= scale;
      row[target] -= dlogits_scale;
    }
  }
  double total = 0.0;
  for (int t = 0; t < n_tok; ++t) total += row_loss[t];
  return total;
}

template double cross_entropy<float>(int, int, float*, int, const int32_t*, float);
template double cross_entropy<double>(int, int, double*, int, const int32_t*, double);

}  // namespace bhasa::cpu
