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
// A bf16 x (and, backward, a bf16 dout: a bf16 training plan) takes the pipelined
// kernels below instead, which stage rows through shared memory with cp.async (at the
// m130 shape: backward 0.165 -> 0.098 ms, forward 0.076 -> 0.060; bench/cuda_lab/NOTES.md).
#include <cstdint>
#include <cstdlib>
#include <string>

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

// The pipelined kernels for a bf16 x (a bf16 training plan): the same arithmetic per
// element as conv_forward_kernel<K, 2> / conv_backward_kernel<K, 2> (out and dx bitwise
// the same), latency hidden by a per-warp cp.async pipeline. A warp owns 64 channels (2
// a lane) and walks R consecutive times; rows of x (and dout) reach shared memory S at a
// time, D-1 stages ahead of the step that reads them, each warp copying only the 128-byte
// row slices that it reads (16-byte copies; no block barrier in the walk). The old
// kernels issue 8 times of 4-byte loads and then wait for them: ~2 KB in flight a warp,
// ~45% of the bytes floor at the m130 shape. Steps carry no early exit and stores go
// through running pointers: each step is its arithmetic plus ~8 instructions.
constexpr int kPipeWarps = 4;  // warps a block: consecutive time ranges of the same channels

// Copies the warp's 128-byte slices of S rows (at stride ld) into dst[S][64]: lane copies
// 16-byte chunk lane % 8 (src: that chunk of the first row) of rows lane / 8 + 4 i; rows
// from rows_left on, and all when !in, are zeros (any: a valid address for those).
template <int S>
__device__ __forceinline__ void stage_rows(__nv_bfloat16 (*dst)[kLanes * 2], const __nv_bfloat16* src,
                                           size_t ld, int rows_left, bool in, const __nv_bfloat16* any) {
  const int lane = threadIdx.x, q = lane % 8, r = lane / 8;
#pragma unroll
  for (int i = 0; i < S / 4; ++i) {
    const bool ok = in && r + 4 * i < rows_left;
    cp_async16(&dst[r + 4 * i][q * 8], ok ? src + (r + 4 * i) * ld : any, ok);
  }
}

// Backward. Stage j holds x and dout at times t0+K-1+j*S ..; the step at time t finishes
// dx[t-K+1]. A block is kPipeWarps warps over consecutive ranges of the same channels;
// their dw/dbias sums are added in warp order into one partial per group
// (g = b * gridDim.y + blockIdx.y), as conv_backward_kernel's.
template <int K, class O, int S, int D, int R>
__global__ void __launch_bounds__(kLanes * kPipeWarps, 8)
conv_backward_pipe_kernel(int L, int E, const __nv_bfloat16* x, int ldx, const float* w, const float* bias,
                          const __nv_bfloat16* dout, O* dx, float* partial) {
  constexpr int C = 2, W = kLanes * C;   // channels a lane, a warp
  static_assert(S % 4 == 0 && R % S == 0 && (D & (D - 1)) == 0 && D >= 2);
  __shared__ __align__(16) __nv_bfloat16 buf[kPipeWarps][D][2][S][W];  // [stage][x, dout][row][channel]
  __shared__ float red[kPipeWarps][K + 1][W];
  const int lane = threadIdx.x, wy = threadIdx.y;
  const int e0 = blockIdx.x * W, e = e0 + lane * C;
  const int b = blockIdx.z;
  const int t0 = (blockIdx.y * kPipeWarps + wy) * R;
  const int t1 = min(t0 + R, L);
  float acc[K + 1][C];
#pragma unroll
  for (int k = 0; k <= K; ++k)
#pragma unroll
    for (int c = 0; c < C; ++c) acc[k][c] = 0.0f;
  if (t0 < L) {  // warp-uniform
    const __nv_bfloat16* xb = x + size_t(b) * L * ldx;
    const __nv_bfloat16* gb = dout + size_t(b) * L * E;
    const int nst = (t1 - t0 + S - 1) / S;
    const bool chunk_in = e0 + (lane % 8) * 8 < E;
    // the next stage to copy: its first time, and its first rows of x and dout
    int tn = t0 + K - 1, jn = 0;
    const __nv_bfloat16* xn = xb + size_t(tn) * ldx + e0 + (lane % 8) * 8;
    const __nv_bfloat16* gn = gb + size_t(tn) * E + e0 + (lane % 8) * 8;
    auto issue = [&] {
      stage_rows<S>(buf[wy][jn % D][0], xn, ldx, L - tn, chunk_in, x);
      stage_rows<S>(buf[wy][jn % D][1], gn, E, L - tn, chunk_in, dout);
      xn += size_t(S) * ldx;
      gn += size_t(S) * E;
      tn += S;
      ++jn;
    };
#pragma unroll
    for (int j = 0; j + 1 < D; ++j) {
      if (j < nst) issue();
      cp_async_commit();
    }
    const bool in = e < E;
    float wk[K][C] = {}, bs[C] = {};
    if (in) load_conv_weights(w, bias, e, wk, bs);
    float xw[K][C], dpw[K][C], dxt[C];
#pragma unroll
    for (int j = 0; j < K; ++j)
#pragma unroll
      for (int c = 0; c < C; ++c) xw[j][c] = dpw[j][c] = 0.0f;
    // History x[t0-K+1 .. t0-1] and the warm-up (dp at t0 .. t0+K-2, no dx) from global.
    {
      float xs[2 * K][C], gs[K][C];
#pragma unroll
      for (int j = 0; j + 1 < K; ++j) {
        const int th = t0 - (K - 1) + j, t = t0 + j;
#pragma unroll
        for (int c = 0; c < C; ++c) xs[j][c] = xs[K + j][c] = gs[j][c] = 0.0f;
        if (in && th >= 0) load_c<C>(xs[j], xb + size_t(th) * ldx + e);
        if (in && t < L) {
          load_c<C>(xs[K + j], xb + size_t(t) * ldx + e);
          load_c<C>(gs[j], gb + size_t(t) * E + e);
        }
      }
#pragma unroll
      for (int j = 0; j + 1 < K; ++j)
#pragma unroll
        for (int c = 0; c < C; ++c) xw[j][c] = xs[j][c];
#pragma unroll
      for (int j = 0; j + 1 < K; ++j)
        conv_backward_step<K, C>(wk, bs, xw, dpw, xs[K + j], gs[j], t0 + j < t1, acc, dxt);
    }
    O* dxp = dx + (size_t(b) * L + t0) * ldx + e;  // dx row of the next step
#pragma unroll 1
    for (int j = 0; j < nst; ++j) {
      cp_async_wait<D - 2>();
      __syncwarp();  // every lane's copies of stage j landed; stage j-1's buffer is read
      if (j + D - 1 < nst) issue();
      cp_async_commit();
      const __nv_bfloat16(*st)[S][W] = buf[wy][j % D];
      // steps past t1 (the last range of a sequence) read zeros and store nothing
      const int own = t1 - (K - 1) - (t0 + j * S), rows = t1 - (t0 + j * S);
#pragma unroll
      for (int r = 0; r < S; ++r) {
        float xt[C], gt[C];
        load_c<C>(xt, &st[0][r][lane * C]);
        load_c<C>(gt, &st[1][r][lane * C]);
        conv_backward_step<K, C>(wk, bs, xw, dpw, xt, gt, r < own, acc, dxt);
        if (in && r < rows) store_c<C>(dxp, dxt);
        dxp += ldx;
      }
    }
  }
#pragma unroll
  for (int k = 0; k <= K; ++k)
#pragma unroll
    for (int c = 0; c < C; ++c) red[wy][k][lane * C + c] = acc[k][c];
  __syncthreads();
  const int g = b * gridDim.y + blockIdx.y;
  for (int i = wy * kLanes + lane; i < (K + 1) * W; i += kLanes * kPipeWarps) {
    const int k = i / W, j = i % W;
    if (e0 + j >= E) continue;
    float s = 0.0f;
#pragma unroll
    for (int y = 0; y < kPipeWarps; ++y) s += red[y][k][j];
    partial[(size_t(g) * (K + 1) + k) * E + e0 + j] = s;
  }
}

// Forward: stage j holds x at times t0+j*S ...
template <int K, class TO, int S, int D, int R>
__global__ void __launch_bounds__(kLanes * kPipeWarps, 8)
conv_forward_pipe_kernel(int L, int E, const __nv_bfloat16* x, int ldx, const float* w, const float* bias,
                         TO* out) {
  constexpr int C = 2, W = kLanes * C;
  static_assert(S % 4 == 0 && R % S == 0 && (D & (D - 1)) == 0 && D >= 2);
  __shared__ __align__(16) __nv_bfloat16 buf[kPipeWarps][D][S][W];  // [stage][row][channel]
  const int lane = threadIdx.x, wy = threadIdx.y;
  const int e0 = blockIdx.x * W, e = e0 + lane * C;
  const int b = blockIdx.z;
  const int t0 = (blockIdx.y * kPipeWarps + wy) * R;
  if (t0 >= L) return;  // warp-uniform; no block barrier follows
  const int t1 = min(t0 + R, L), nst = (t1 - t0 + S - 1) / S;
  const __nv_bfloat16* xb = x + size_t(b) * L * ldx;
  const bool chunk_in = e0 + (lane % 8) * 8 < E;
  int tn = t0, jn = 0;
  const __nv_bfloat16* xn = xb + size_t(tn) * ldx + e0 + (lane % 8) * 8;
  auto issue = [&] {
    stage_rows<S>(buf[wy][jn % D], xn, ldx, L - tn, chunk_in, x);
    xn += size_t(S) * ldx;
    tn += S;
    ++jn;
  };
#pragma unroll
  for (int j = 0; j + 1 < D; ++j) {
    if (j < nst) issue();
    cp_async_commit();
  }
  const bool in = e < E;
  float wk[K][C] = {}, bs[C] = {}, xw[K][C];
  if (in) load_conv_weights(w, bias, e, wk, bs);
#pragma unroll
  for (int j = 0; j + 1 < K; ++j) {
    const int t = t0 - (K - 1) + j;
#pragma unroll
    for (int c = 0; c < C; ++c) xw[j][c] = 0.0f;
    if (in && t >= 0) load_c<C>(xw[j], xb + size_t(t) * ldx + e);
  }
  TO* op = out + (size_t(b) * L + t0) * E + e;  // out row of the next step
#pragma unroll 1
  for (int j = 0; j < nst; ++j) {
    cp_async_wait<D - 2>();
    __syncwarp();  // every lane's copies of stage j landed; stage j-1's buffer is read
    if (j + D - 1 < nst) issue();
    cp_async_commit();
    const int rows = t1 - (t0 + j * S);
#pragma unroll
    for (int r = 0; r < S; ++r) {
      load_c<C>(xw[K - 1], &buf[wy][j % D][r][lane * C]);
      float o[C];
#pragma unroll
      for (int c = 0; c < C; ++c) {
        float p = bs[c];
#pragma unroll
        for (int k = 0; k < K; ++k) p += wk[k][c] * xw[k][c];
        o[c] = p * sigmoid_fast(p);
      }
      if (in && r < rows) store_c<C>(op, o);
      op += E;
#pragma unroll
      for (int k = 0; k + 1 < K; ++k)
#pragma unroll
        for (int c = 0; c < C; ++c) xw[k][c] = xw[k + 1][c];
    }
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

// BHASA_CONV_BWD_V=old / BHASA_CONV_FWD_V=old: main's conv_backward_kernel /
// conv_forward_kernel everywhere (an A/B switch; read at each call, so a lab can switch
// between calls: ~0.1 us a layer).
bool env_old(const char* name) {
  const char* e = std::getenv(name);
  return e && std::string(e) == "old";
}

// The pipelined backward's 16-byte copies: bf16 x and dout, rows of whole 16-byte chunks
// at 16-byte boundaries; dx written in pairs.
bool pipe_ok(int E, int ldx, ConstOperand x, ConstOperand dout, ConstOperand dx) {
  return x.dtype == Dtype::bf16 && dout.dtype == Dtype::bf16 && E % 8 == 0 && ldx % 8 == 0 &&
         aligned(x.p, 16) && aligned(dout.p, 16) && aligned(dx.p, 2 * int(dtype_bytes(dx.dtype)));
}

}  // namespace

void conv1d_silu_forward(Ctx& c, int B, int L, int E, int K, ConstOperand x, int ldx,
                         const float* w, const float* bias, Operand out) {
  check_k(K);
  if (size_t(B) * L * E == 0) return;
  if (!env_old("BHASA_CONV_FWD_V") && x.dtype == Dtype::bf16 && E % 8 == 0 && ldx % 8 == 0 &&
      aligned(x.p, 16) && aligned(out.p, 2 * int(dtype_bytes(out.dtype)))) {
    const auto* xp = static_cast<const __nv_bfloat16*>(x.p);
    const dim3 grid(blocks_for(E, 2 * kLanes), blocks_for(L, kPipeWarps * 64), B), block(kLanes, kPipeWarps);
    with_operand(out, [&](auto* o) {
      with_k(K, [&](auto kc) {
        constexpr int KK = decltype(kc)::value;
        using TO = std::remove_pointer_t<decltype(o)>;
        conv_forward_pipe_kernel<KK, TO, 8, 4, 64><<<grid, block, 0, c.stream>>>(L, E, xp, ldx, w, bias, o);
      });
    });
    BHASA_LAUNCH_CHECK("conv1d_silu_forward (pipelined)");
    return;
  }
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
  if (!env_old("BHASA_CONV_BWD_V") && pipe_ok(E, ldx, x, dout, dx)) {
    const auto* xp = static_cast<const __nv_bfloat16*>(x.p);
    const auto* g = static_cast<const __nv_bfloat16*>(dout.p);
    // 128 times a warp at K = 4 with a bf16 dx (the m130 step: 0.097 ms against 0.100 at
    // 64, 0.107 at 32); other K and an fp32 dx (tests only) 64.
    const bool r128 = K == 4 && dx.dtype == Dtype::bf16;
    const int gy = int(blocks_for(L, kPipeWarps * (r128 ? 128 : 64))), groups = B * gy;
    auto* partial = static_cast<float*>(
        c.scratch->get(kConvPartials, size_t(groups) * (K + 1) * E * sizeof(float)));
    const dim3 grid(blocks_for(E, 2 * kLanes), gy, B), block(kLanes, kPipeWarps);
    with_operand(dx, [&](auto* d) {
      with_k(K, [&](auto kc) {
        constexpr int KK = decltype(kc)::value;
        using O = std::remove_pointer_t<decltype(d)>;
        if constexpr (KK == 4 && std::is_same_v<O, __nv_bfloat16>)
          conv_backward_pipe_kernel<KK, O, 4, 4, 128><<<grid, block, 0, c.stream>>>(L, E, xp, ldx, w, bias, g, d, partial);
        else
          conv_backward_pipe_kernel<KK, O, 4, 4, 64><<<grid, block, 0, c.stream>>>(L, E, xp, ldx, w, bias, g, d, partial);
      });
    });
    BHASA_LAUNCH_CHECK("conv1d_silu_backward (pipelined)");
    conv_backward_dw_finish<<<blocks_for(size_t(K + 1) * E, kColSumLanes), dim3(kColSumLanes, kColSumRows), 0,
                              c.stream>>>(E, K, groups, partial, dw, dbias);
    BHASA_LAUNCH_CHECK("conv1d_silu_backward_dw_finish");
    return;
  }
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
