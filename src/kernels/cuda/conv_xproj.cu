// ssm_decode_in at 8 < B <= 64 in one kernel: dbc = silu(conv(state, x)) @ x_proj^T with
// x_proj's bf16 mirror. At B = 64 cuBLASLt takes >= 4.2 us for x_proj's 0.25 MB (latency:
// one wave of large tiles, no PDL) plus ~2 us for conv_rows_bf16 in front. Here a block
// owns kRows batch rows x kSliceE channels (split-K over E: B = 64, E = 1536 gives 8 x 24
// = 192 blocks): it copies its (P, kSliceE) slice of the bf16 weight to shared memory
// before pdl_wait (weights never depend on the previous kernel), computes its u in fp32,
// writes (kRows, P) partial dot products, and the last block of a row group to arrive
// (a counter per group) sums the slices' partials in slice order: deterministic, and the
// counter is back at zero for the next call (graph replays).
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxP = 128;    // x_proj's outputs dt_rank + 2 d_state
constexpr int kConvK = 4;     // d_conv
constexpr int kMinSlice = 64; // E must be a multiple of every tile's slice width

// A block: kRows batch rows x kSliceE channels (the tile variants are timed in NOTES.md).
// torch (per block): u = F.silu(conv(cat(state, x)))[b0:b0+kRows, e0:e0+kSliceE]
//                    part[s, b, :] = u @ x_proj[:, e0:e0+kSliceE].T;  dbc = part.sum(0)  (in order)
// x (B, E) row stride ldx; state (B, 3, E); conv_w (E, 4); conv_b (E) or null;
// w16 (P, E) bf16; part (S, B, P) fp32 scratch, S = E / kSliceE; counter (ceil(B / kRows)).
template <int kRows, int kSliceE>
__global__ void __launch_bounds__(kThreads)
conv_xproj_kernel(int B, int E, int P, const float* __restrict__ x, int ldx, const float* __restrict__ state,
                  const float* __restrict__ conv_w, const float* __restrict__ conv_b,
                  const __nv_bfloat16* __restrict__ w16, float* __restrict__ part, unsigned* counter,
                  float* __restrict__ dbc) {
  constexpr int kWStride = kSliceE + 2;  // bf16 a shared weight row: an odd word count, rows in distinct banks
  __shared__ __align__(16) __nv_bfloat16 sW[kMaxP * kWStride];  // (P, kSliceE) padded
  __shared__ __align__(16) float sU[kRows * kSliceE];            // (kRows, kSliceE)
  __shared__ bool last;
  const int t = threadIdx.x, s = blockIdx.x, S = gridDim.x, e0 = s * kSliceE, b0 = blockIdx.y * kRows;
  const int nr = min(kRows, B - b0);
  // the weight slice: 4-byte loads (a padded row is not 16-byte aligned), constants before the wait
  for (int i = t; i < P * kSliceE / 2; i += kThreads) {
    const int p = i / (kSliceE / 2), k2 = i % (kSliceE / 2);
    reinterpret_cast<__nv_bfloat162*>(sW + p * kWStride)[k2] =
        reinterpret_cast<const __nv_bfloat162*>(w16 + size_t(p) * E + e0)[k2];
  }
  // a thread's conv channel e (t % 64) for rows t / 64, t / 64 + 4
  const int c = t % kSliceE, e = e0 + c;
  float cw[kConvK];
#pragma unroll
  for (int j = 0; j < kConvK; ++j) cw[j] = conv_w[size_t(e) * kConvK + j];
  const float cb = conv_b ? conv_b[e] : 0.0f;
  pdl_trigger();
  pdl_wait();
  for (int r = t / kSliceE; r < nr; r += kThreads / kSliceE) {
    const int b = b0 + r;
    float p = cb;
#pragma unroll
    for (int j = 0; j < kConvK - 1; ++j) p += cw[j] * state[(size_t(b) * (kConvK - 1) + j) * E + e];
    p += cw[kConvK - 1] * x[size_t(b) * ldx + e];
    sU[r * kSliceE + c] = p * sigmoidf_(p);
  }
  __syncthreads();
  // partial dots: (row r, output p) pairs, p fastest (consecutive lanes: distinct banks of sW, sU broadcast)
  for (int i = t; i < nr * P; i += kThreads) {
    const int r = i / P, p = i % P;
    const __nv_bfloat162* w = reinterpret_cast<const __nv_bfloat162*>(sW + p * kWStride);
    const float2* u = reinterpret_cast<const float2*>(sU + r * kSliceE);
    float acc = 0.0f;
#pragma unroll 8
    for (int k2 = 0; k2 < kSliceE / 2; ++k2) {
      const float2 wf = __bfloat1622float2(w[k2]);
      const float2 uf = u[k2];
      acc += wf.x * uf.x + wf.y * uf.y;
    }
    part[(size_t(s) * B + b0 + r) * P + p] = acc;
  }
  // the last block of this row group sums the S partials in slice order
  __threadfence();
  __syncthreads();
  if (t == 0) last = atomicAdd(counter + blockIdx.y, 1u) == unsigned(S - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int i = t; i < nr * P; i += kThreads) {
    const int r = i / P, p = i % P;
    float acc = 0.0f;
    for (int j = 0; j < S; ++j) acc += __ldcg(part + (size_t(j) * B + b0 + r) * P + p);
    dbc[size_t(b0 + r) * P + p] = acc;
  }
  if (t == 0) counter[blockIdx.y] = 0;
}

}  // namespace

bool conv_xproj_serves(int B, int E, int K, int P, const float* x, int ldx, const float* state,
                       const void* w16) {
  return w16 && B > 0 && K == kConvK && P >= 1 && P <= kMaxP && E % (2 * kMinSlice) == 0 && ldx >= E &&
         (reinterpret_cast<uintptr_t>(w16) & 3) == 0 && E % 2 == 0;
}

void conv_xproj(Ctx& c, int B, int E, int P, const float* x, int ldx, const ConvIn& cv, const void* w16,
                float* dbc, int variant) {
  check(conv_xproj_serves(B, E, cv.K, P, x, ldx, cv.state, w16), "conv_xproj: shape or alignment not served");
  auto go = [&](auto kernel, int rows, int slice) {
    const int S = E / slice, G = (B + rows - 1) / rows;
    auto* part = static_cast<float*>(c.scratch->get(kXprojPartials, size_t(S) * B * P * sizeof(float)));
    auto* counter = static_cast<unsigned*>(c.scratch->get(kXprojCounter, size_t(G) * sizeof(unsigned), true));
    launch(kernel, dim3(S, G), dim3(kThreads), 0, c.stream, c.pdl, B, E, P, x, ldx, cv.state, cv.w, cv.b,
           static_cast<const __nv_bfloat16*>(w16), part, counter, dbc);
  };
  // tiles (rows x channels): 1: 8 x 64 (B = 64, E = 1536: 192 blocks), 2: 16 x 64 (96),
  // 3: 8 x 128 (96), 4: 4 x 64 (384)
  switch (variant) {
    case 2: go(conv_xproj_kernel<16, 64>, 16, 64); break;
    case 3: go(conv_xproj_kernel<8, 128>, 8, 128); break;
    case 4: go(conv_xproj_kernel<4, 64>, 4, 64); break;
    default: go(conv_xproj_kernel<8, 64>, 8, 64); break;
  }
  BHASA_LAUNCH_CHECK("conv_xproj");
}

}  // namespace bhasa::cuda
