// Gated MLP activation: the first half of fc1's output gated by SiLU of the second.
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/fast_math.h"

namespace bhasa::cpu {

// torch: y, g = f.chunk(2, -1); out = y * F.silu(g)      f (T, 2I), out (T, I)
template <class T>
void swiglu_forward(int n_tok, int I, const T* f, T* out) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < n_tok; ++t) {
    const T* y = f + static_cast<size_t>(t) * 2 * I;  // (I)
    const T* g = y + I;                               // (I)
    T* o = out + static_cast<size_t>(t) * I;          // (I)
#pragma omp simd
    for (int i = 0; i < I; ++i) o[i] = y[i] * g[i] * sigmoid_(g[i]);
  }
}

// dy = dout * silu(g);  dg = dout * y * silu'(g),  silu'(g) = s * (1 + g * (1 - s))
template <class T>
void swiglu_backward(int n_tok, int I, const T* f, const T* dout, T* df) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < n_tok; ++t) {
    const T* y = f + static_cast<size_t>(t) * 2 * I;
    const T* g = y + I;
    const T* d = dout + static_cast<size_t>(t) * I;
    T* dy = df + static_cast<size_t>(t) * 2 * I;
    T* dg = dy + I;
#pragma omp simd
    for (int i = 0; i < I; ++i) {
      const T s = sigmoid_(g[i]);
      dy[i] = d[i] * g[i] * s;
      dg[i] = d[i] * y[i] * s * (T(1) + g[i] * (T(1) - s));
    }
  }
}

template void swiglu_forward<float>(int, int, const float*, float*);
template void swiglu_forward<double>(int, int, const double*, double*);
template void swiglu_backward<float>(int, int, const float*, const float*, float*);
template void swiglu_backward<double>(int, int, const double*, const double*, double*);

}  // namespace bhasa::cpu
