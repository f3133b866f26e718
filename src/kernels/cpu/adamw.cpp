// Optimizer kernels: AdamW, the squared norm for gradient clipping, and axpy.
#include <omp.h>

#include <cmath>
#include <string>

#include "core/error.h"
#include "kernels/cpu/cpu_kernels.h"

namespace bhasa::cpu {

// torch.optim.AdamW (decoupled weight decay), with g pre-scaled by grad_scale:
// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr * (m / (1-b1^t) / (sqrt(v / (1-b2^t)) + eps) + wd * p)
template <class T>
void adamw(size_t n, T* p, const T* g, T* m, T* v, T lr, T b1, T b2, T eps, T wd, int step,
           T grad_scale) {
  check(step >= 1, "adamw: step must be >= 1 (it counts from 1), got " + std::to_string(step));
  // Bias corrections in double: b2^t for b2 = 0.999 needs the precision at small t.
  const T bc1 = static_cast<T>(1.0 - std::pow(static_cast<double>(b1), step));
  const T bc2 = static_cast<T>(1.0 - std::pow(static_cast<double>(b2), step));
  const std::ptrdiff_t count = static_cast<std::ptrdiff_t>(n);
#pragma omp parallel for simd schedule(static)
  for (std::ptrdiff_t i = 0; i < count; ++i) {
    const T gi = g[i] * grad_scale;
    m[i] = b1 * m[i] + (T(1) - b1) * gi;
    v[i] = b2 * v[i] + (T(1) - b2) * gi * gi;
    const T m_hat = m[i] / bc1;
    const T v_hat = v[i] / bc2;
    p[i] -= lr * (m_hat / (std::sqrt(v_hat) + eps) + wd * p[i]);
  }
}

// torch: (g.double() ** 2).sum()
// Per-thread partial sums over fixed static slices, added in thread order.
template <class T>
double sum_squares(size_t n, const T* g) {
  static thread_local std::vector<double> partials;
  const int max_threads = omp_get_max_threads();
  double* part = scratch(partials, static_cast<size_t>(max_threads));
  int n_threads = 1;
#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
    const int nt = omp_get_num_threads();
#pragma omp single
    n_threads = nt;
    const size_t begin = n * tid / nt, end = n * (tid + 1) / nt;
    double acc = 0.0;
    // Blocks of float accumulation (vectorized), flushed to double every 1024.
    for (size_t i0 = begin; i0 < end; i0 += 1024) {
      const size_t i1 = i0 + 1024 < end ? i0 + 1024 : end;
      T block = 0;
#pragma omp simd reduction(+ : block)
      for (size_t i = i0; i < i1; ++i) block += g[i] * g[i];
      acc += static_cast<double>(block);
    }
    part[tid] = acc;
  }
  double total = 0.0;
  for (int t = 0; t < n_threads; ++t) total += part[t];
  return total;
}

// torch: y += alpha * x
template <class T>
void axpy(size_t n, T alpha, const T* x, T* y) {
  const std::ptrdiff_t count = static_cast<std::ptrdiff_t>(n);
#pragma omp parallel for simd schedule(static)
  for (std::ptrdiff_t i = 0; i < count; ++i) y[i] += alpha * x[i];
}

template void adamw<float>(size_t, float*, const float*, float*, float*, float, float, float,
                           float, float, int, float);
template void adamw<double>(size_t, double*, const double*, double*, double*, double, double,
                            double, double, double, int, double);
template double sum_squares<float>(size_t, const float*);
template double sum_squares<double>(size_t, const double*);
template void axpy<float>(size_t, float, const float*, float*);
template void axpy<double>(size_t, double, const double*, double*);

}  // namespace bhasa::cpu
