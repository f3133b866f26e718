// RMSNorm and LayerNorm, forward and backward side by side.
#include <omp.h>

#include <cmath>

#include "kernels/cpu/cpu_kernels.h"

namespace bhasa::cpu {

// rms:   torch: out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
// layer: torch: out = F.layer_norm(x, (D,), w, b, eps)
// x (T, D), w (D), b (D) or null, out (T, D), mean (T) (layer only), rstd (T)
template <class T>
void norm_forward(int n_tok, int D, bool rms, T eps, const T* x, const T* w, const T* b, T* out,
                  T* mean, T* rstd) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < n_tok; ++t) {
    const T* xt = x + static_cast<size_t>(t) * D;
    T* ot = out + static_cast<size_t>(t) * D;
    T mu = 0;
    if (!rms) {
#pragma omp simd reduction(+ : mu)
      for (int d = 0; d < D; ++d) mu += xt[d];
      mu /= D;
    }
    T ss = 0;  // sum of squares about mu (mu = 0 for rms)
#pragma omp simd reduction(+ : ss)
    for (int d = 0; d < D; ++d) ss += (xt[d] - mu) * (xt[d] - mu);
    const T r = T(1) / std::sqrt(ss / D + eps);
    if (b) {
#pragma omp simd
      for (int d = 0; d < D; ++d) ot[d] = (xt[d] - mu) * r * w[d] + b[d];
    } else {
#pragma omp simd
      for (int d = 0; d < D; ++d) ot[d] = (xt[d] - mu) * r * w[d];
    }
    if (mean) mean[t] = mu;
    rstd[t] = r;
  }
}

// With xhat = (x - mean) * rstd (mean = 0 for rms) and g = dout * w:
//   rms:   dx += rstd * (g - xhat * mean(g * xhat))
//   layer: dx += rstd * (g - mean(g) - xhat * mean(g * xhat))
//   dw += sum_t dout * xhat;  db += sum_t dout
// dw and db sum over rows: each thread accumulates its static slice of rows into its
// own partial, and the partials are added in thread order.
template <class T>
void norm_backward(int n_tok, int D, bool rms, const T* dout, const T* x, const T* w,
                   const T* mean, const T* rstd, T* dx, T* dw, T* db) {
  static thread_local std::vector<T> partials;  // (threads, 2, D): dw then db partials
  const int max_threads = omp_get_max_threads();
  T* part_all = scratch(partials, static_cast<size_t>(max_threads) * 2 * D);
  int n_threads = 1;
#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
#pragma omp single
    n_threads = omp_get_num_threads();
    T* pdw = part_all + static_cast<size_t>(tid) * 2 * D;  // (D)
    T* pdb = pdw + D;                                       // (D)
    for (int d = 0; d < 2 * D; ++d) pdw[d] = 0;
#pragma omp for schedule(static)
    for (int t = 0; t < n_tok; ++t) {
      const T* xt = x + static_cast<size_t>(t) * D;
      const T* gt = dout + static_cast<size_t>(t) * D;
      T* dxt = dx + static_cast<size_t>(t) * D;
      const T mu = rms ? T(0) : mean[t];
      const T r = rstd[t];
      T mean_g = 0, mean_gx = 0;
#pragma omp simd reduction(+ : mean_g, mean_gx)
      for (int d = 0; d < D; ++d) {
        const T g = gt[d] * w[d];
        mean_g += g;
        mean_gx += g * (xt[d] - mu) * r;
      }
      mean_g = rms ? T(0) : mean_g / D;
      mean_gx /= D;
#pragma omp simd
      for (int d = 0; d < D; ++d) {
        const T xhat = (xt[d] - mu) * r;
        dxt[d] += r * (gt[d] * w[d] - mean_g - xhat * mean_gx);
        pdw[d] += gt[d] * xhat;
        pdb[d] += gt[d];
      }
    }
  }
  for (int tid = 0; tid < n_threads; ++tid) {
    const T* pdw = part_all + static_cast<size_t>(tid) * 2 * D;
    for (int d = 0; d < D; ++d) dw[d] += pdw[d];
    if (db)
      for (int d = 0; d < D; ++d) db[d] += pdw[D + d];
  }
}

template void norm_forward<float>(int, int, bool, float, const float*, const float*,
                                  const float*, float*, float*, float*);
template void norm_forward<double>(int, int, bool, double, const double*, const double*,
                                   const double*, double*, double*, double*);
template void norm_backward<float>(int, int, bool, const float*, const float*, const float*,
                                   const float*, const float*, float*, float*, float*);
template void norm_backward<double>(int, int, bool, const double*, const double*,
                                    const double*, const double*, const double*, double*,
                                    double*, double*);

}  // namespace bhasa::cpu
