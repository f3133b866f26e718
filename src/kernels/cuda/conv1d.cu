// Mamba's causal depthwise conv1d over time, fused with the SiLU that follows it.
// Channel e at time t sees x[t-K+1 .. t, e]; times before 0 are zero padding.
//
// Forward and backward use one tiling: a block is (32 lanes over channels) x
// (kSlices threads over time); a thread owns C adjacent channels (forward: C = 2 with
// 8-byte accesses when the strides allow; backward: C = 1) for kSteps consecutive times, and walks
// them keeping the last K-1 inputs (and, backward, the last K-1 dp) in registers.
// So x and dout are read once (plus a K-1 halo per thread) and dx written once:
// the kernels are bound by those bytes. The backward's dw/dbias are summed over
// the block's time slices in shared memory in a fixed order, written as one
// partial per (sequence, block of time), and then summed in group order: no
// atomics, bitwise repeatable.
#include <cstdint>
#include <cstdlib>

#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

constexpr int kMaxK = 8;     // d_conv supported (Mamba uses 4)
constexpr int kLanes = 32;   // threads across channels in a block
constexpr int kSlices = 8;   // threads across time in a block
constexpr int kSteps = 32;   // times per thread
constexpr int kLoad = 8;     // times whose loads are issued together
constexpr int kBlockTimes = kSlices * kSteps;

// C elements at p (C-element aligned) in one access: float2, bf16x2 or one element.
template <int C, class X>
__device__ __forceinline__ void load_c(float (&r)[C], const X* p) {
  if constexpr (C == 2 && std::is_same_v<X, float>) {
    const float2 q = *reinterpret_cast<const float2*>(p);
    r[0] = q.x; r[1] = q.y;
  } else if constexpr (C == 2) {
    const float2 q = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
    r[0] = q.x; r[1] = q.y;
  } else if constexpr (!std::is_same_v<X, float>) {
#pragma unroll
    for (int c = 0; c < C; ++c) r[c] = to_float(p[c]);
  } else {
#pragma unroll
    for (int c = 0; c < C; ++c) r[c] = p[c];
  }
}
template <int C, class O>
__device__ __forceinline__ void store_c(O* p, const float (&r)[C]) {
  if constexpr (C == 2 && std::is_same_v<O, float>) {
    *reinterpret_cast<float2*>(p) = make_float2(r[0], r[1]);
  } else if constexpr (C == 2) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(r[0], r[1]);
  } else {
#pragma unroll
    for (int c = 0; c < C; ++c) p[c] = from_float<O>(r[c]);
  }
}

// torch: out = F.silu(F.conv1d(x.transpose(1,2), w, bias, padding=K-1, groups=E)[..., :L]).transpose(1,2)
// x (B, L, E) row stride ldx, w (E, K), bias (E) or null, out (B, L, E); x, out fp32 or bf16
// wk[k][c] = w[e + c, k], bs[c] = bias[e + c] (0 without a bias): channels e .. e+C-1
template <int K, int C>
__device__ __forceinline__ void load_conv_weights(const float* w, const float* bias, int e, float (&wk)[K][C],
                                                  float (&bs)[C]) {
#pragma unroll
  for (int c = 0; c < C; ++c) {
    bs[c] = bias ? bias[e + c] : 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) wk[k][c] = w[size_t(e + c) * K + k];
  }
}

template <int K, int C, class TX, class TO>
__global__ void __launch_bounds__(kLanes * kSlices)
conv_forward_kernel(int L, int E, const TX* x, int ldx, const float* w, const float* bias,
                    TO* out) {
  const int e = (blockIdx.x * kLanes + threadIdx.x) * C;
  const int b = blockIdx.z;
  const int t0 = (blockIdx.y * kSlices + threadIdx.y) * kSteps;
  if (e >= E || t0 >= L) return;
  const TX* xb = x + size_t(b) * L * ldx + e;
  TO* ob = out + size_t(b) * L * E + e;
  float wk[K][C], bs[C];
  load_conv_weights(w, bias, e, wk, bs);
  float xw[K][C];  // x[t-K+1 .. t], oldest first; slot K-1 is filled each step
#pragma unroll
  for (int j = 0; j < K - 1; ++j) {
    const int t = t0 - (K - 1) + j;
    if (t >= 0) load_c<C>(xw[j], xb + size_t(t) * ldx);
    else
#pragma unroll
      for (int c = 0; c < C; ++c) xw[j][c] = 0.0f;
  }
#pragma unroll 1
  for (int j0 = 0; j0 < kSteps; j0 += kLoad) {
    float xs[kLoad][C];
#pragma unroll
    for (int j = 0; j < kLoad; ++j) {
      const int t = t0 + j0 + j;
      if (t < L) load_c<C>(xs[j], xb + size_t(t) * ldx);
    }
#pragma unroll
    for (int j = 0; j < kLoad; ++j) {
      const int t = t0 + j0 + j;
      if (t >= L) break;
#pragma unroll
      for (int c = 0; c < C; ++c) xw[K - 1][c] = xs[j][c];
      float o[C];
#pragma unroll
      for (int c = 0; c < C; ++c) {
        float p = bs[c];
#pragma unroll
        for (int k = 0; k < K; ++k) p += wk[k][c] * xw[k][c];
        o[c] = p * sigmoid_fast(p);
      }
      store_c<C>(ob + size_t(t) * E, o);
#pragma unroll
      for (int k = 0; k + 1 < K; ++k)
#pragma unroll
        for (int c = 0; c < C; ++c) xw[k][c] = xw[k + 1][c];
    }
  }
}

// One backward step at time t (x[t] = xt, dout[t] = gt, both 0 past the sequence):
//   p = pre-activation, dp = dout * silu'(p), silu'(p) = s (1 + p (1 - s))
//   dw[k] += dp x[t-(K-1-k)], dbias += dp          (when t is one of the thread's times)
//   dx[t-K+1] = sum_k w[k] dp[t-k]                  (returned; valid once K-1 steps are in)
// xw holds x[t-K+1 .. t-1] and dpw dp[t-K+1 .. t-1]; both shift by one.
template <int K, int C>
__device__ __forceinline__ void conv_backward_step(const float (&wk)[K][C], const float (&bs)[C],
                                                   float (&xw)[K][C], float (&dpw)[K][C],
                                                   const float (&xt)[C], const float (&gt)[C],
                                                   bool own, float (&acc)[K + 1][C],
                                                   float (&dx)[C]) {
#pragma unroll
  for (int c = 0; c < C; ++c) {
    xw[K - 1][c] = xt[c];
    float p = bs[c];
#pragma unroll
    for (int k = 0; k < K; ++k) p += wk[k][c] * xw[k][c];
    const float s = sigmoid_fast(p);
    const float dp = gt[c] * s * (1.0f + p * (1.0f - s));
    dpw[K - 1][c] = dp;
    if (own) {
#pragma unroll
      for (int k = 0; k < K; ++k) acc[k][c] += dp * xw[k][c];
      acc[K][c] += dp;
    }
    float d = 0.0f;  // tap k of output t-k reads x[t-K+1]: dp[t-k] = dpw[K-1-k]
#pragma unroll
    for (int k = 0; k < K; ++k) d += wk[k][c] * dpw[K - 1 - k][c];
    dx[c] = d;
#pragma unroll
    for (int k = 0; k + 1 < K; ++k) {
      xw[k][c] = xw[k + 1][c];
      dpw[k][c] = dpw[k + 1][c];
    }
  }
}

// dx[s, e] = sum_k w[e, k] dp[s + K-1-k, e]        ("=", row stride ldx, fp32 or bf16: O)
// x, dout fp32 or bf16 (TX, TG)
// partial[g][k][e] = sum over times of group g of dp[t, e] x[t-(K-1-k), e]; [K] is dbias.
// Group g = b * gridDim.y + blockIdx.y: one sequence's kBlockTimes times.
template <int K, int C, class O, class TX, class TG>
__global__ void __launch_bounds__(kLanes * kSlices)
conv_backward_kernel(int L, int E, const TX* x, int ldx, const float* w, const float* bias,
                     const TG* dout, O* dx, float* partial) {
  __shared__ float red[kSlices][K + 1][kLanes * C];
  const int e = (blockIdx.x * kLanes + threadIdx.x) * C;
  const int b = blockIdx.z;
  const int t0 = (blockIdx.y * kSlices + threadIdx.y) * kSteps;
  float acc[K + 1][C];
#pragma unroll
  for (int k = 0; k <= K; ++k)
#pragma unroll
    for (int c = 0; c < C; ++c) acc[k][c] = 0.0f;
  if (e < E && t0 < L) {
    const int t1 = min(t0 + kSteps, L);
    const TX* xb = x + size_t(b) * L * ldx + e;
    const TG* gb = dout + size_t(b) * L * E + e;
    O* dxb = dx + size_t(b) * L * ldx + e;
    float wk[K][C], bs[C];
    load_conv_weights(w, bias, e, wk, bs);
    float xw[K][C], dpw[K][C], dxt[C];
#pragma unroll
    for (int j = 0; j < K; ++j)
#pragma unroll
      for (int c = 0; c < C; ++c) xw[j][c] = dpw[j][c] = 0.0f;
#pragma unroll
    for (int j = 0; j < K - 1; ++j) {
      const int t = t0 - (K - 1) + j;
      if (t >= 0) load_c<C>(xw[j], xb + size_t(t) * ldx);
    }
    // Warm-up: dp at t0 .. t0+K-2 (no dx yet).
    {
      float xs[K][C], gs[K][C];
#pragma unroll
      for (int j = 0; j + 1 < K; ++j) {
        const int t = t0 + j;
#pragma unroll
        for (int c = 0; c < C; ++c) xs[j][c] = gs[j][c] = 0.0f;
        if (t < L) {
          load_c<C>(xs[j], xb + size_t(t) * ldx);
          load_c<C>(gs[j], gb + size_t(t) * E);
        }
      }
#pragma unroll
      for (int j = 0; j + 1 < K; ++j)
        conv_backward_step<K, C>(wk, bs, xw, dpw, xs[j], gs[j], t0 + j < t1, acc, dxt);
    }
    // Main: step t = t0+K-1+j finishes dx[t0+j].
#pragma unroll 1
    for (int j0 = 0; j0 < kSteps; j0 += kLoad) {
      float xs[kLoad][C], gs[kLoad][C];
#pragma unroll
      for (int j = 0; j < kLoad; ++j) {
        const int t = t0 + K - 1 + j0 + j;
#pragma unroll
        for (int c = 0; c < C; ++c) xs[j][c] = gs[j][c] = 0.0f;
        if (t < L) {
          load_c<C>(xs[j], xb + size_t(t) * ldx);
          load_c<C>(gs[j], gb + size_t(t) * E);
        }
      }
#pragma unroll
      for (int j = 0; j < kLoad; ++j) {
        const int s = t0 + j0 + j;  // the dx row this step finishes
        if (s >= t1) break;
        conv_backward_step<K, C>(wk, bs, xw, dpw, xs[j], gs[j], s + K - 1 < t1, acc, dxt);
        store_c<C>(dxb + size_t(s) * ldx, dxt);
      }
    }
  }
  // Sum the kSlices time slices of the block in order, then one partial per group.
#pragma unroll
  for (int k = 0; k <= K; ++k)
#pragma unroll
    for (int c = 0; c < C; ++c) red[threadIdx.y][k][threadIdx.x * C + c] = acc[k][c];
  __syncthreads();
  const int g = b * gridDim.y + blockIdx.y;
  const int tid = threadIdx.y * kLanes + threadIdx.x;
  for (int i = tid; i < (K + 1) * kLanes * C; i += kLanes * kSlices) {
    const int k = i / (kLanes * C), j = i % (kLanes * C);
    const int ej = blockIdx.x * kLanes * C + j;
    if (ej >= E) continue;
    float s = 0.0f;
#pragma unroll
    for (int y = 0; y < kSlices; ++y) s += red[y][k][j];
    partial[(size_t(g) * (K + 1) + k) * E + ej] = s;
  }
}

// dw[e, k] += sum_g partial[g][k][e]; dbias[e] += sum_g partial[g][K][e] (g in order)
__global__ void __launch_bounds__(kColSumLanes * kColSumRows)
conv_backward_dw_finish(int E, int K, int groups, const float* partial, float* dw, float* dbias) {
  const int n = (K + 1) * E;
  const float s = column_sum_in_order(n, groups, partial);
  const int i = blockIdx.x * kColSumLanes + threadIdx.x;  // (k, e)
  if (threadIdx.y != 0 || i >= n) return;
  const int k = i / E, e = i % E;
  if (k < K) dw[size_t(e) * K + k] += s;
  else if (dbias) dbias[e] += s;
}

// With history: state (B, K-1, E), oldest first. One thread per (b, e) walks time
// (decode: L is 1 or a prompt).
// torch: xx = torch.cat([state, x], 1); out = F.silu(conv over xx)[:, K-1:]; state = xx[:, -(K-1):]
__global__ void conv_with_state_kernel(int B, int L, int E, int K, const float* x, int ldx,
                                       const float* w, const float* bias, float* state,
                                       float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= B * E) return;
  const int b = i / E, e = i % E, H = K - 1;
  float win[kMaxK];  // the last K inputs, oldest first
  float* st = state + size_t(b) * H * E + e;
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) win[j] = j < H ? st[size_t(j) * E] : 0.0f;
  float wk[kMaxK];
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) wk[k] = k < K ? w[size_t(e) * K + k] : 0.0f;
  const float bs = bias ? bias[e] : 0.0f;
  for (int t = 0; t < L; ++t) {
    win[H] = x[(size_t(b) * L + t) * ldx + e];
    float p = bs;
#pragma unroll
    for (int k = 0; k < kMaxK; ++k)
      if (k < K) p += wk[k] * win[k];
    out[(size_t(b) * L + t) * E + e] = p * sigmoid_fast(p);
#pragma unroll
    for (int j = 0; j + 1 < kMaxK; ++j)
      if (j < H) win[j] = win[j + 1];
  }
#pragma unroll
  for (int j = 0; j < kMaxK; ++j)
    if (j < H) st[size_t(j) * E] = win[j];
}

void check_k(int K) {
  check(K >= 1 && K <= kMaxK, "conv1d: d_conv = " + std::to_string(K) +
                                  " is not supported by the CUDA backend (1.." +
                                  std::to_string(kMaxK) + "); use --device cpu");
}

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Channels per forward thread: 2 (8-byte accesses) when E, ldx and the pointers allow.
// Measured on the H200 at (16, 2048, 1536, 4), x at row stride 2E (fwd / bwd ms):
// C = 1: 0.118 / 0.183, C = 2: 0.113 / 0.197, C = 4: 0.124 / 0.215 (C = 4's backward
// needs 128 registers: 2 blocks per SM). So the backward stays at C = 1.
bool pairs_ok(int E, int ldx, ConstOperand x, ConstOperand out) {
  return E % 2 == 0 && ldx % 2 == 0 && aligned(x.p, 2 * int(dtype_bytes(x.dtype))) &&
         aligned(out.p, 2 * int(dtype_bytes(out.dtype)));
}

// Calls f(std::integral_constant<int, K>) for the run-time K in 1..kMaxK.
template <class F>
void with_k(int K, F&& f) {
  switch (K) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 8: return f(std::integral_constant<int, 8>{});
  }
}

dim3 conv_grid(int B, int L, int E, int C) {
  return dim3(blocks_for(E, kLanes * C), blocks_for(L, kBlockTimes), B);
}

}  // namespace

void conv1d_silu_forward(Ctx& c, int B, int L, int E, int K, ConstOperand x, int ldx,
                         const float* w, const float* bias, Operand out) {
  check_k(K);
  if (size_t(B) * L * E == 0) return;
  const bool pairs = pairs_ok(E, ldx, x, out);
  const dim3 block(kLanes, kSlices);
  with_operand(x, [&](auto* xp) {
    with_operand(out, [&](auto* o) {
      with_k(K, [&](auto kc) {
        constexpr int KK = decltype(kc)::value;
        using TX = std::remove_const_t<std::remove_pointer_t<decltype(xp)>>;
        using TO = std::remove_pointer_t<decltype(o)>;
        if (pairs)
          conv_forward_kernel<KK, 2, TX, TO><<<conv_grid(B, L, E, 2), block, 0, c.stream>>>(L, E, xp, ldx, w, bias, o);
        else
          conv_forward_kernel<KK, 1, TX, TO><<<conv_grid(B, L, E, 1), block, 0, c.stream>>>(L, E, xp, ldx, w, bias, o);
      });
    });
  });
  BHASA_LAUNCH_CHECK("conv1d_silu_forward");
}

void conv1d_silu_backward(Ctx& c, int B, int L, int E, int K, ConstOperand x, int ldx,
                          const float* w, const float* bias, ConstOperand dout, Operand dx,
                          float* dw, float* dbias) {
  check_k(K);
  if (size_t(B) * L * E == 0) return;
  const int groups = B * int(blocks_for(L, kBlockTimes));
  auto* partial = static_cast<float*>(
      c.scratch->get(kConvPartials, size_t(groups) * (K + 1) * E * sizeof(float)));
  const dim3 block(kLanes, kSlices);
  // bf16 x (a bf16 training plan's xz): 2 channels per thread where the strides allow
  // (4-byte bf16 pairs instead of 2-byte loads; BHASA_CONV_BWD_PAIRS=0: 1 channel, timing)
  static const bool pairs_env = [] {
    const char* v = std::getenv("BHASA_CONV_BWD_PAIRS");
    return !v || std::atoi(v) != 0;
  }();
  // bf16 dout (a bf16 training plan's d_xs) is read as it is, 2-byte loads or bf16 pairs
  const bool pairs = pairs_env && x.dtype == Dtype::bf16 && pairs_ok(E, ldx, x, dx) &&
                     aligned(dout.p, 2 * int(dtype_bytes(dout.dtype)));
  with_operand(x, [&](auto* xp) {
    with_operand(dout, [&](auto* g) {
      with_operand(dx, [&](auto* d) {
        with_k(K, [&](auto kc) {
          using TX = std::remove_const_t<std::remove_pointer_t<decltype(xp)>>;
          using TG = std::remove_const_t<std::remove_pointer_t<decltype(g)>>;
          using O = std::remove_pointer_t<decltype(d)>;
          constexpr int KK = decltype(kc)::value;
          if constexpr (!std::is_same_v<TX, float>) {
            if (pairs) {
              conv_backward_kernel<KK, 2, O, TX, TG>
                  <<<conv_grid(B, L, E, 2), block, 0, c.stream>>>(L, E, xp, ldx, w, bias, g, d, partial);
              return;
            }
          }
          conv_backward_kernel<KK, 1, O, TX, TG>
              <<<conv_grid(B, L, E, 1), block, 0, c.stream>>>(L, E, xp, ldx, w, bias, g, d, partial);
        });
      });
    });
  });
  BHASA_LAUNCH_CHECK("conv1d_silu_backward");
  conv_backward_dw_finish<<<blocks_for(size_t(K + 1) * E, kColSumLanes), dim3(kColSumLanes, kColSumRows), 0,
                            c.stream>>>(E, K, groups, partial, dw, dbias);
  BHASA_LAUNCH_CHECK("conv1d_silu_backward_dw_finish");
}

void conv1d_silu_with_state(Ctx& c, int B, int L, int E, int K, const float* x, int ldx,
                            const float* w, const float* bias, float* state, float* out) {
  check_k(K);
  if (B * E == 0) return;
  conv_with_state_kernel<<<blocks_for(size_t(B) * E, 128), 128, 0, c.stream>>>(B, L, E, K, x, ldx, w, bias, state, out);
  BHASA_LAUNCH_CHECK("conv1d_silu_with_state");
}

}  // namespace bhasa::cuda
