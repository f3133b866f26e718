// Mamba's causal depthwise conv1d over time, fused with the SiLU that follows it.
// Channel e at time t sees x[t-K+1 .. t, e]; times before 0 are zero padding.
#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

constexpr int kMaxK = 8;        // d_conv supported (Mamba uses 4)
constexpr int kRowGroups = 256; // partials of dw/dbias per channel

// pre-activation p[row, e] = bias[e] + sum_k w[e, k] x[t - (K-1-k), e]
__device__ __forceinline__ float conv_pre(int L, int K, const float* x, int ldx, const float* w,
                                          const float* bias, int row, int e) {
  const int t = row % L;
  float p = bias ? bias[e] : 0.0f;
  for (int k = 0; k < K; ++k) {
    const int lag = K - 1 - k;
    if (t >= lag) p += w[size_t(e) * K + k] * x[size_t(row - lag) * ldx + e];
  }
  return p;
}

// torch: out = F.silu(F.conv1d(x.transpose(1,2), w, bias, padding=K-1, groups=E)[..., :L]).transpose(1,2)
__global__ void conv_forward_kernel(int B, int L, int E, int K, const float* x, int ldx,
                                    const float* w, const float* bias, float* out) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(B) * L * E) return;
  const int row = int(i / E), e = int(i % E);
  const float p = conv_pre(L, K, x, ldx, w, bias, row, e);
  out[i] = p * sigmoidf_(p);
}

// dp = dout * silu'(p), silu'(p) = s (1 + p (1 - s))
__device__ __forceinline__ float conv_dpre(int L, int K, const float* x, int ldx, const float* w,
                                           const float* bias, const float* dout, int E, int row,
                                           int e) {
  const float p = conv_pre(L, K, x, ldx, w, bias, row, e);
  const float s = sigmoidf_(p);
  return dout[size_t(row) * E + e] * s * (1.0f + p * (1.0f - s));
}

// dx[s, e] = sum_k w[e, k] dp[s + K-1-k, e]   ("=", row stride ldx)
__global__ void conv_backward_dx_kernel(int B, int L, int E, int K, const float* x, int ldx,
                                        const float* w, const float* bias, const float* dout,
                                        float* dx) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(B) * L * E) return;
  const int row = int(i / E), e = int(i % E);
  const int s = row % L;
  float acc = 0.0f;
  for (int k = 0; k < K; ++k) {
    const int t = s + K - 1 - k;  // the output time whose tap k reads x[s]
    if (t < L) acc += w[size_t(e) * K + k] * conv_dpre(L, K, x, ldx, w, bias, dout, E, row + (t - s), e);
  }
  dx[size_t(row) * ldx + e] = acc;
}

// partial[p][e][k] = sum over rows of group p of dp[t, e] x[t - lag, e]; [K] is dbias.
__global__ void conv_backward_dw_partials(int B, int L, int E, int K, const float* x, int ldx,
                                          const float* w, const float* bias, const float* dout,
                                          int rows_per_group, float* partial) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  const int p = blockIdx.y;
  if (e >= E) return;
  float acc[kMaxK + 1];
  for (int k = 0; k <= kMaxK; ++k) acc[k] = 0.0f;
  const int r0 = p * rows_per_group, r1 = min(B * L, r0 + rows_per_group);
#pragma unroll 4
  for (int row = r0; row < r1; ++row) {
    const float dp = conv_dpre(L, K, x, ldx, w, bias, dout, E, row, e);
    const int t = row % L;
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) {
      const int lag = K - 1 - k;
      if (k < K && t >= lag) acc[k] += dp * x[size_t(row - lag) * ldx + e];
    }
    acc[kMaxK] += dp;
  }
  float* out = partial + (size_t(p) * E + e) * (K + 1);
#pragma unroll
  for (int k = 0; k < kMaxK; ++k)
    if (k < K) out[k] = acc[k];
  out[K] = acc[kMaxK];
}

// dw[e, k] += sum_p partial[p][e][k]; dbias[e] += sum_p partial[p][e][K] (p in order)
__global__ void conv_backward_dw_finish(int E, int K, int groups, const float* partial, float* dw,
                                        float* dbias) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;  // (e, k) with k in 0..K
  if (i >= E * (K + 1)) return;
  const int e = i / (K + 1), k = i % (K + 1);
  float s = 0.0f;
  for (int p = 0; p < groups; ++p) s += partial[(size_t(p) * E + e) * (K + 1) + k];
  if (k < K) dw[size_t(e) * K + k] += s;
  else if (dbias) dbias[e] += s;
}

// With history: state (B, K-1, E), oldest first. One thread per (b, e) walks time.
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
    out[(size_t(b) * L + t) * E + e] = p * sigmoidf_(p);
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

}  // namespace

void conv1d_silu_forward(Ctx& c, int B, int L, int E, int K, const float* x, int ldx,
                         const float* w, const float* bias, float* out) {
  check_k(K);
  const size_t n = size_t(B) * L * E;
  if (n == 0) return;
  conv_forward_kernel<<<blocks_for(n, 256), 256, 0, c.stream>>>(B, L, E, K, x, ldx, w, bias, out);
  BHASA_LAUNCH_CHECK("conv1d_silu_forward");
}

void conv1d_silu_backward(Ctx& c, int B, int L, int E, int K, const float* x, int ldx,
                          const float* w, const float* bias, const float* dout, float* dx,
                          float* dw, float* dbias) {
  check_k(K);
  const size_t n = size_t(B) * L * E;
  if (n == 0) return;
  conv_backward_dx_kernel<<<blocks_for(n, 256), 256, 0, c.stream>>>(B, L, E, K, x, ldx, w, bias, dout, dx);
  BHASA_LAUNCH_CHECK("conv1d_silu_backward_dx");
  const int rows = B * L;
  const int rows_per_group = (rows + kRowGroups - 1) / kRowGroups;
  const int groups = (rows + rows_per_group - 1) / rows_per_group;
  auto* partial = static_cast<float*>(
      c.scratch->get(kConvPartials, size_t(groups) * E * (K + 1) * sizeof(float)));
  conv_backward_dw_partials<<<dim3(blocks_for(E, 128), groups), 128, 0, c.stream>>>(
      B, L, E, K, x, ldx, w, bias, dout, rows_per_group, partial);
  BHASA_LAUNCH_CHECK("conv1d_silu_backward_dw_partials");
  conv_backward_dw_finish<<<blocks_for(size_t(E) * (K + 1), 256), 256, 0, c.stream>>>(E, K, groups, partial, dw, dbias);
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
