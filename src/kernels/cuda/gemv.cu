// Matrix-vector products for decoding: C (M, N) = norm?(A) (M, K) @ W^T + beta * C with
// a few rows M (a batch of tokens) and a row-major weight W (N, K). At M = 1 cuBLASLt
// runs these at 20-25% of the bandwidth (in_proj (1, 3072, 768): 11 us for 9.4 MB);
// they are a weight read, so: one warp per output row n, 16-byte loads, every one of
// the M activation rows applied to each weight load.
//
// Each block first stages A (M, K) into shared memory (normalised on the way when the
// caller fuses the pre-norm: one warp per row m computes its mean / rstd). Before it
// waits on the previous kernel (programmatic dependent launch, pdl_wait), each warp
// has already issued the loads of its first weight row: the weights never depend on
// the previous kernel, so their DRAM latency overlaps the previous kernel's tail.
#include <algorithm>

#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float dot4(float4 a, float4 b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

// torch: C[:M] = beta * C + norm(A) @ W.T   (norm: 0 none, 1 rms, 2 layer)
// MT >= M rows of A, CH >= K / 128 float4 per lane.
template <int MT, int CH>
__global__ void __launch_bounds__(kThreads)
gemv_kernel(int M, int N, int K, const float* __restrict__ A, int lda,
            const float* __restrict__ W, int ldw, float beta, float* C, int ldc, int norm,
            float eps, const float* __restrict__ nw, const float* __restrict__ nb) {
  extern __shared__ float4 sA[];  // (M, K/4)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, K4 = K / 4;
  const int stride = gridDim.x * kWarps;
  int n = blockIdx.x * kWarps + warp;
  float4 w[CH];
  auto load_row = [&](int row) {
    const float4* wr = reinterpret_cast<const float4*>(W + size_t(row) * ldw);
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const int k4 = lane + 32 * c;
      w[c] = k4 < K4 ? __ldcs(wr + k4) : make_float4(0.f, 0.f, 0.f, 0.f);  // streamed once
    }
  };
  if (n < N) load_row(n);
  pdl_trigger();
  pdl_wait();

  // Stage A: warp m handles rows m, m + 8, ...
  for (int m = warp; m < M; m += kWarps) {
    const float4* a = reinterpret_cast<const float4*>(A + size_t(m) * lda);
    float4* s = sA + size_t(m) * K4;
    if (norm == 0) {
      for (int k4 = lane; k4 < K4; k4 += 32) s[k4] = a[k4];
      continue;
    }
    float mu = 0.f;
    if (norm == 2) {
      for (int k4 = lane; k4 < K4; k4 += 32) {
        const float4 v = a[k4];
        mu += (v.x + v.y) + (v.z + v.w);
      }
      for (int o = 16; o > 0; o >>= 1) mu += __shfl_xor_sync(kFull, mu, o);
      mu /= K;
    }
    float ss = 0.f;
    for (int k4 = lane; k4 < K4; k4 += 32) {
      const float4 v = a[k4];
      const float d0 = v.x - mu, d1 = v.y - mu, d2 = v.z - mu, d3 = v.w - mu;
      ss += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(kFull, ss, o);
    const float r = 1.0f / sqrtf(ss / K + eps);
    const float4* w4 = reinterpret_cast<const float4*>(nw);
    const float4* b4 = reinterpret_cast<const float4*>(nb);
    for (int k4 = lane; k4 < K4; k4 += 32) {
      const float4 v = a[k4], g = w4[k4];
      float4 o = make_float4((v.x - mu) * r * g.x, (v.y - mu) * r * g.y, (v.z - mu) * r * g.z,
                             (v.w - mu) * r * g.w);
      if (nb) {
        const float4 bb = b4[k4];
        o.x += bb.x, o.y += bb.y, o.z += bb.z, o.w += bb.w;
      }
      s[k4] = o;
    }
  }
  __syncthreads();

  for (; n < N; n += stride) {
    float acc[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m] = 0.f;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const int k4 = lane + 32 * c;
      if (k4 < K4) {
#pragma unroll
        for (int m = 0; m < MT; ++m)
          if (m < M) acc[m] += dot4(w[c], sA[m * K4 + k4]);
      }
    }
    const int next = n + stride;
    if (next < N) load_row(next);  // in flight during the reduction below
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(kFull, acc[m], o);
    // lane m writes row m (a compile-time index into acc: no local memory)
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (lane == m && m < M) {
        float* out = C + size_t(m) * ldc + n;
        *out = beta == 0.f ? acc[m] : acc[m] + beta * *out;
      }
    }
  }
}

template <int MT, int CH>
void launch_gemv(Ctx& c, int M, int N, int K, const float* A, int lda, const float* W, int ldw,
                 float beta, float* C, int ldc, int norm, float eps, const float* nw,
                 const float* nb) {
  const int blocks = std::min((N + kWarps - 1) / kWarps, 4 * c.sm_count);
  const size_t smem = size_t(M) * K * sizeof(float);
  launch(gemv_kernel<MT, CH>, dim3(blocks), dim3(kThreads), smem, c.stream, c.pdl, M, N, K, A, lda,
         W, ldw, beta, C, ldc, norm, eps, nw, nb);
}

template <int MT>
void dispatch_ch(Ctx& c, int M, int N, int K, const float* A, int lda, const float* W, int ldw,
                 float beta, float* C, int ldc, int norm, float eps, const float* nw,
                 const float* nb) {
  const int ch = (K / 4 + 31) / 32;
#define BHASA_GEMV_CH(X) \
  if (ch <= X) return launch_gemv<MT, X>(c, M, N, K, A, lda, W, ldw, beta, C, ldc, norm, eps, nw, nb);
  BHASA_GEMV_CH(2) BHASA_GEMV_CH(4) BHASA_GEMV_CH(6) BHASA_GEMV_CH(8) BHASA_GEMV_CH(12)
  BHASA_GEMV_CH(16)
#undef BHASA_GEMV_CH
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

bool gemv_serves(int M, int N, int K, const float* A, int lda, const float* W, int ldw,
                 const float* nw, const float* nb) {
  return M >= 1 && M <= kGemvMaxM && N >= 1 && K >= 4 && K % 4 == 0 && K <= 16 * 128 &&
         size_t(M) * K * sizeof(float) <= 48 * 1024 && lda % 4 == 0 && ldw % 4 == 0 &&
         aligned16(A) && aligned16(W) && (!nw || aligned16(nw)) && (!nb || aligned16(nb));
}

void gemv(Ctx& c, int M, int N, int K, const float* A, int lda, const float* W, int ldw, float beta,
          float* C, int ldc, int norm, float eps, const float* nw, const float* nb) {
  check(gemv_serves(M, N, K, A, lda, W, ldw, nw, nb), "gemv: shape or alignment not served");
  if (M == 1) dispatch_ch<1>(c, M, N, K, A, lda, W, ldw, beta, C, ldc, norm, eps, nw, nb);
  else if (M == 2) dispatch_ch<2>(c, M, N, K, A, lda, W, ldw, beta, C, ldc, norm, eps, nw, nb);
  else if (M <= 4) dispatch_ch<4>(c, M, N, K, A, lda, W, ldw, beta, C, ldc, norm, eps, nw, nb);
  else dispatch_ch<8>(c, M, N, K, A, lda, W, ldw, beta, C, ldc, norm, eps, nw, nb);
  BHASA_LAUNCH_CHECK("gemv");
}

}  // namespace bhasa::cuda
