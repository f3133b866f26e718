// One decode step (L = 1 with states), fused: see kernels.h (norm_gemm, ssm_decode_in,
// ssm_decode_step). The CPU versions share the unfused kernels' math; ssm_decode_step
// does per channel what conv1d_silu_with_state + dt_proj + scan_forward do at L = 1,
// in one pass, without the (B, E) intermediates.
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/fast_math.h"

namespace bhasa::cpu {

// torch: out = F.rms_norm(x, (K,), w, eps) @ W.T   (or F.layer_norm when b)
template <class T>
void norm_gemm(int M, int N, int K, bool rms, T eps, const T* x, const T* w, const T* b,
               const T* W, T* out) {
  static thread_local std::vector<T> buf;
  T* h = scratch(buf, static_cast<size_t>(M) * (K + 2));  // (M, K), then mean, rstd (M)
  T* stats = h + static_cast<size_t>(M) * K;
  norm_forward<T>(M, K, rms, eps, x, w, b, h, stats, stats + M);
  gemm<T>(false, true, M, N, K, h, K, W, K, T(0), out, N);
}

// u = silu(conv_b[e] + conv_w[e] . [state[b, :, e], x[b, e]])
template <class T>
static T conv_u(int E, int K, const T* x, int ldx, const T* state, const T* w, const T* bias,
                int b, int e) {
  const int H = K - 1;
  T p = bias ? bias[e] : T(0);
  for (int j = 0; j < H; ++j) p += w[static_cast<size_t>(e) * K + j] * state[(static_cast<size_t>(b) * H + j) * E + e];
  p += w[static_cast<size_t>(e) * K + H] * x[static_cast<size_t>(b) * ldx + e];
  return p * sigmoid_(p);
}

// torch: dbc = F.silu(conv(cat(state, x))) @ x_proj.T   (state unchanged)
template <class T>
void ssm_decode_in(int B, int E, int K, int P, const T* x, int ldx, const T* conv_state,
                   const T* conv_w, const T* conv_b, const T* x_proj, T* dbc) {
  static thread_local std::vector<T> buf;
  T* u = scratch(buf, static_cast<size_t>(B) * E);  // (B, E)
  for (int b = 0; b < B; ++b)
    for (int e = 0; e < E; ++e)
      u[static_cast<size_t>(b) * E + e] = conv_u(E, K, x, ldx, conv_state, conv_w, conv_b, b, e);
  gemm<T>(false, true, B, P, E, u, E, x_proj, E, T(0), dbc, P);
}

// Per channel (b, e): u; state shift; delta = softplus(dbc[b, :R] . dt_w[e] + dt_bias[e]);
// h = exp(delta * -exp(A_log[e])) * h + delta * u * B;  y = (C . h + D u) * silu(z)
template <class T>
void ssm_decode_step(int B, int E, int N, int R, int K, const T* x, const T* z, int ldxz,
                     T* conv_state, const T* conv_w, const T* conv_b, const T* dbc, const T* dt_w,
                     const T* dt_bias, const T* A_log, const T* D, T* h, T* y) {
  const int P = R + 2 * N, H = K - 1;
#pragma omp parallel for schedule(static) collapse(2)
  for (int b = 0; b < B; ++b) {
    for (int e = 0; e < E; ++e) {
      const T* db = dbc + static_cast<size_t>(b) * P;
      const T u = conv_u(E, K, x, ldxz, conv_state, conv_w, conv_b, b, e);
      T* st = conv_state + static_cast<size_t>(b) * H * E + e;
      for (int j = 0; j + 1 < H; ++j) st[static_cast<size_t>(j) * E] = st[static_cast<size_t>(j + 1) * E];
      if (H > 0) st[static_cast<size_t>(H - 1) * E] = x[static_cast<size_t>(b) * ldxz + e];
      T d = dt_bias[e];
      for (int r = 0; r < R; ++r) d += db[r] * dt_w[static_cast<size_t>(e) * R + r];
      const T delta = softplus_(d), du = delta * u;
      T* hc = h + (static_cast<size_t>(b) * E + e) * N;
      T acc = D[e] * u;
      for (int n = 0; n < N; ++n) {
        const T a = -std::exp(A_log[static_cast<size_t>(e) * N + n]);
        hc[n] = exp_(delta * a) * hc[n] + du * db[R + n];
        acc += db[R + N + n] * hc[n];
      }
      const T zz = z[static_cast<size_t>(b) * ldxz + e];
      y[static_cast<size_t>(b) * E + e] = acc * zz * sigmoid_(zz);
    }
  }
}

#define BHASA_DECODE_STEP(T)                                                                   \
  template void norm_gemm<T>(int, int, int, bool, T, const T*, const T*, const T*, const T*, T*); \
  template void ssm_decode_in<T>(int, int, int, int, const T*, int, const T*, const T*, const T*, \
                                 const T*, T*);                                                \
  template void ssm_decode_step<T>(int, int, int, int, int, const T*, const T*, int, T*,        \
                                   const T*, const T*, const T*, const T*, const T*, const T*,   \
                                   const T*, T*, T*);
BHASA_DECODE_STEP(float)
BHASA_DECODE_STEP(double)
#undef BHASA_DECODE_STEP

}  // namespace bhasa::cpu
