// Mamba's causal depthwise conv1d over time, fused with the SiLU that follows it.
// Channel e at time t sees x[t-K+1 .. t, e]; times before 0 are zero padding.
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/fast_math.h"

namespace bhasa::cpu {

// torch: out = F.silu(F.conv1d(x.transpose(1,2), w, bias, padding=K-1, groups=E)[..., :L]).transpose(1,2)
// x (B, L, E) row stride ldx, w (E, K), bias (E) or null, out (B, L, E) dense
template <class T>
void conv1d_silu_forward(int B, int L, int E, int K, const T* x, int ldx, const T* w,
                         const T* bias, T* out) {
  // w transposed to (K, E) so the inner loop over channels reads it contiguously.
  static thread_local std::vector<T> w_buf;
  T* wt = scratch(w_buf, static_cast<size_t>(K) * E);  // (K, E)
  for (int e = 0; e < E; ++e)
    for (int k = 0; k < K; ++k) wt[static_cast<size_t>(k) * E + e] = w[static_cast<size_t>(e) * K + k];
#pragma omp parallel for schedule(static)
  for (int row = 0; row < B * L; ++row) {
    const int t = row % L;
    T* o = out + static_cast<size_t>(row) * E;  // (E)
#pragma omp simd
    for (int e = 0; e < E; ++e) o[e] = bias ? bias[e] : T(0);
    for (int k = 0; k < K; ++k) {
      const int lag = K - 1 - k;  // tap k multiplies x[t - lag]
      if (t < lag) continue;
      const T* xs = x + static_cast<size_t>(row - lag) * ldx;
      const T* wk = wt + static_cast<size_t>(k) * E;
#pragma omp simd
      for (int e = 0; e < E; ++e) o[e] += wk[e] * xs[e];
    }
#pragma omp simd
    for (int e = 0; e < E; ++e) o[e] = o[e] * sigmoid_(o[e]);
  }
}

// With p the pre-activation and dp = dout * silu'(p), silu'(p) = s (1 + p (1 - s)):
//   dx[t-lag, e] = sum_k w[e, k] dp[t, e]   ("=", row stride ldx)
//   dw[e, k] += sum_{b,t} dp[t, e] x[t-lag, e];  dbias[e] += sum_{b,t} dp[t, e]
// Threads own blocks of channels (and walk b, t in order), so dw and dbias need no
// cross-thread reduction.
template <class T>
void conv1d_silu_backward(int B, int L, int E, int K, const T* x, int ldx, const T* w,
                          const T* bias, const T* dout, T* dx, T* dw, T* dbias) {
  constexpr int kBlock = 64;  // channels per work item
  const int n_blocks = (E + kBlock - 1) / kBlock;
#pragma omp parallel
  {
    static thread_local std::vector<T> buf;
    T* dp = scratch(buf, static_cast<size_t>(L) * kBlock + 2 * static_cast<size_t>(K) * kBlock + kBlock);
    T* wt = dp + static_cast<size_t>(L) * kBlock;  // (K, kBlock) w transposed
    T* dwt = wt + static_cast<size_t>(K) * kBlock;  // (K, kBlock) dw accumulator
    T* db = dwt + static_cast<size_t>(K) * kBlock;  // (kBlock) dbias accumulator
#pragma omp for schedule(static)
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int e0 = blk * kBlock;
      const int eb = E - e0 < kBlock ? E - e0 : kBlock;
      for (int k = 0; k < K; ++k)
        for (int e = 0; e < eb; ++e) {
          wt[k * kBlock + e] = w[static_cast<size_t>(e0 + e) * K + k];
          dwt[k * kBlock + e] = 0;
        }
      for (int e = 0; e < eb; ++e) db[e] = 0;
      for (int b = 0; b < B; ++b) {
        const T* xb = x + static_cast<size_t>(b) * L * ldx + e0;
        const T* gb = dout + static_cast<size_t>(b) * L * E + e0;
        T* dxb = dx + static_cast<size_t>(b) * L * ldx + e0;
        // dp (L, kBlock) for this block, recomputing the pre-activation.
        for (int t = 0; t < L; ++t) {
          T* dpt = dp + static_cast<size_t>(t) * kBlock;
#pragma omp simd
          for (int e = 0; e < eb; ++e) dpt[e] = bias ? bias[e0 + e] : T(0);
          for (int k = 0; k < K; ++k) {
            const int lag = K - 1 - k;
            if (t < lag) continue;
            const T* xs = xb + static_cast<size_t>(t - lag) * ldx;
#pragma omp simd
            for (int e = 0; e < eb; ++e) dpt[e] += wt[k * kBlock + e] * xs[e];
          }
          const T* gt = gb + static_cast<size_t>(t) * E;
#pragma omp simd
          for (int e = 0; e < eb; ++e) {
            const T p = dpt[e];
            const T s = sigmoid_(p);
            dpt[e] = gt[e] * s * (T(1) + p * (T(1) - s));
            db[e] += dpt[e];
          }
        }
        for (int s = 0; s < L; ++s) {
          T* dxs = dxb + static_cast<size_t>(s) * ldx;
          const T* xs = xb + static_cast<size_t>(s) * ldx;
#pragma omp simd
          for (int e = 0; e < eb; ++e) dxs[e] = 0;
          for (int k = 0; k < K; ++k) {
            const int t = s + K - 1 - k;  // the output time that tap k reads x[s] for
            if (t >= L) continue;
            const T* dpt = dp + static_cast<size_t>(t) * kBlock;
#pragma omp simd
            for (int e = 0; e < eb; ++e) {
              dxs[e] += wt[k * kBlock + e] * dpt[e];
              dwt[k * kBlock + e] += dpt[e] * xs[e];
            }
          }
        }
      }
      for (int e = 0; e < eb; ++e) {
        for (int k = 0; k < K; ++k) dw[static_cast<size_t>(e0 + e) * K + k] += dwt[k * kBlock + e];
        if (dbias) dbias[e0 + e] += db[e];
      }
    }
  }
}

// The forward pass with history, for generation. state (B, K-1, E), oldest input
// first, holds the K-1 inputs before x (zeros at the start of a sequence) and is
// updated in place to the last K-1 inputs of [state, x].
// torch: xx = torch.cat([state, x], 1); out = F.silu(conv over xx)[:, K-1:]; state = xx[:, -(K-1):]
// Threads own (b, block of channels), so the in-place state update is race-free.
template <class T>
void conv1d_silu_with_state(int B, int L, int E, int K, const T* x, int ldx, const T* w,
                            const T* bias, T* state, T* out) {
  constexpr int kBlock = 64;
  const int n_blocks = (E + kBlock - 1) / kBlock;
  const int H = K - 1;  // history length
#pragma omp parallel for schedule(static) collapse(2)
  for (int b = 0; b < B; ++b) {
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int e0 = blk * kBlock;
      const int eb = E - e0 < kBlock ? E - e0 : kBlock;
      T* st = state + static_cast<size_t>(b) * H * E + e0;  // (H, E) slice
      const T* xb = x + static_cast<size_t>(b) * L * ldx + e0;
      // Row j of the concatenated sequence [state, x].
      auto row_of = [&](int j) -> const T* {
        return j < H ? st + static_cast<size_t>(j) * E : xb + static_cast<size_t>(j - H) * ldx;
      };
      for (int t = 0; t < L; ++t) {
        T* o = out + (static_cast<size_t>(b) * L + t) * E + e0;
        for (int e = 0; e < eb; ++e) o[e] = bias ? bias[e0 + e] : T(0);
        for (int k = 0; k < K; ++k) {
          const T* src = row_of(t + k);
          for (int e = 0; e < eb; ++e) o[e] += w[static_cast<size_t>(e0 + e) * K + k] * src[e];
        }
#pragma omp simd
        for (int e = 0; e < eb; ++e) o[e] = o[e] * sigmoid_(o[e]);
      }
      // Shift: new state row j is row L + j of [state, x]; ascending j reads rows not
      // yet overwritten.
      for (int j = 0; j < H; ++j) {
        const T* src = row_of(L + j);
        T* dst = st + static_cast<size_t>(j) * E;
        for (int e = 0; e < eb; ++e) dst[e] = src[e];
      }
    }
  }
}

template void conv1d_silu_forward<float>(int, int, int, int, const float*, int, const float*,
                                         const float*, float*);
template void conv1d_silu_forward<double>(int, int, int, int, const double*, int,
                                          const double*, const double*, double*);
template void conv1d_silu_with_state<float>(int, int, int, int, const float*, int,
                                            const float*, const float*, float*, float*);
template void conv1d_silu_with_state<double>(int, int, int, int, const double*, int,
                                             const double*, const double*, double*, double*);
template void conv1d_silu_backward<float>(int, int, int, int, const float*, int, const float*,
                                          const float*, const float*, float*, float*, float*);
template void conv1d_silu_backward<double>(int, int, int, int, const double*, int,
                                           const double*, const double*, const double*,
                                           double*, double*, double*);

}  // namespace bhasa::cpu
