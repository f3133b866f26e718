// Matrix-vector products for decoding: C (M, N) = norm?(A) (M, K) @ W^T + beta * C with
// a few rows M (a batch of tokens) and a row-major weight W (N, K). At M = 1 cuBLASLt
// runs these at 20-25% of the bandwidth (in_proj (1, 3072, 768): 11 us for 9.4 MB);
// they are a weight read, so: one warp per output row n, 16-byte loads, every one of
// the M activation rows applied to each weight load.
//
// Each block first stages A (M, K) into shared memory, normalised on the way when the
// caller fuses the pre-norm (warp m holds row m in registers and computes its mean /
// rstd), or as u = silu(conv(state, x)) for ssm_decode_in. Before it waits on the
// previous kernel (programmatic dependent launch, pdl_wait), each warp
// has already issued the loads of its first weight row: the weights never depend on
// the previous kernel, so their DRAM latency overlaps the previous kernel's tail.
//
// W16: the weight is read from its bf16 mirror (weight_mirror.cuh), 8 values a 16-byte
// load, half the bytes; products and sums stay fp32 (A is not rounded). A lane's load j
// covers k in [8j, 8j + 8): sA keeps those as float4s j and K/8 + j of the row
// (sa_pos), so a warp's shared-memory reads stay consecutive. A warp takes two weight
// rows at a time then (the same bytes in flight as one fp32 row).
#include <cuda_bf16.h>

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

// Where float4 k4 of a row of A sits in shared memory: in order for fp32 weights; for
// bf16 weights the two halves of 16-byte load j (float4s 2j, 2j+1) go to j and K4/2 + j.
template <bool W16>
__device__ __forceinline__ int sa_pos(int k4, int K4) {
  return W16 ? (k4 & 1) * (K4 / 2) + (k4 >> 1) : k4;
}

// Stores float4 v as 4 floats, or as 4 bf16 (8 bytes) for a bf16 output.
__device__ __forceinline__ void store4(float4* out, int i, float4 v) { out[i] = v; }
__device__ __forceinline__ void store4(__nv_bfloat162* out, int i, float4 v) {
  out[2 * i] = __floats2bfloat162_rn(v.x, v.y);
  out[2 * i + 1] = __floats2bfloat162_rn(v.z, v.w);
}

// One row (K floats as K4 float4, lane-strided) of A into out, normalised (norm 1 rms,
// 2 layer) with the norm weights g, bb already in registers; norm 0 copies. The row
// is loaded once, in one round trip, and reduced from registers. Float4 k4 lands at
// out[sa_pos<W16>(k4)].
template <int CH, bool W16 = false, typename Out>
__device__ __forceinline__ void norm_row(const float4* a, Out* out, int K, int norm, float eps,
                                         const float4 (&g)[CH], const float4 (&bb)[CH], int lane) {
  const int K4 = K / 4;
  float4 xv[CH];
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    const int k4 = lane + 32 * c;
    xv[c] = k4 < K4 ? a[k4] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  if (norm == 0) {
#pragma unroll
    for (int c = 0; c < CH; ++c)
      if (lane + 32 * c < K4) store4(out, sa_pos<W16>(lane + 32 * c, K4), xv[c]);
    return;
  }
  float mu = 0.f;
  if (norm == 2) {
#pragma unroll
    for (int c = 0; c < CH; ++c) mu += (xv[c].x + xv[c].y) + (xv[c].z + xv[c].w);
    for (int o = 16; o > 0; o >>= 1) mu += __shfl_xor_sync(kFull, mu, o);
    mu /= K;
  }
  float ss = 0.f;
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    if (lane + 32 * c < K4) {  // padding lanes hold 0, which is not 0 - mu
      const float d0 = xv[c].x - mu, d1 = xv[c].y - mu, d2 = xv[c].z - mu, d3 = xv[c].w - mu;
      ss += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
  }
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(kFull, ss, o);
  const float r = 1.0f / sqrtf(ss / K + eps);
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    const int k4 = lane + 32 * c;
    if (k4 < K4)
      store4(out, sa_pos<W16>(k4, K4),
             make_float4((xv[c].x - mu) * r * g[c].x + bb[c].x, (xv[c].y - mu) * r * g[c].y + bb[c].y,
                         (xv[c].z - mu) * r * g[c].z + bb[c].z, (xv[c].w - mu) * r * g[c].w + bb[c].w));
  }
}

template <int CH>
__device__ __forceinline__ void load_norm_weights(const float* nw, const float* nb, int K4, int lane,
                                                  float4 (&g)[CH], float4 (&bb)[CH]) {
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    const int k4 = lane + 32 * c;
    g[c] = k4 < K4 ? reinterpret_cast<const float4*>(nw)[k4] : make_float4(0.f, 0.f, 0.f, 0.f);
    bb[c] = nb && k4 < K4 ? reinterpret_cast<const float4*>(nb)[k4] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
}

template <typename T> struct Vec4 { using type = float4; };  // what store4 writes 4 of T as
template <> struct Vec4<__nv_bfloat16> { using type = __nv_bfloat162; };
template <typename T> using Vec4Of = typename Vec4<T>::type;

// torch: out = F.rms_norm(x, (K,), nw, eps)  (or F.layer_norm with nb): one warp per row,
// for the decode step at batch sizes gemv does not serve (then cuBLASLt). Out: float, or
// __nv_bfloat16 when the GEMM that follows multiplies bf16 (a frozen weight's mirror).
template <int CH, typename Out>
__global__ void __launch_bounds__(kThreads)
norm_rows_kernel(int M, int K, int norm, float eps, const float* __restrict__ x,
                 const float* __restrict__ nw, const float* __restrict__ nb, Out* __restrict__ out) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, row = blockIdx.x * kWarps + warp;
  float4 g[CH], bb[CH];
  load_norm_weights<CH>(nw, nb, K / 4, lane, g, bb);
  pdl_trigger();
  pdl_wait();
  if (row < M)
    norm_row<CH>(reinterpret_cast<const float4*>(x + size_t(row) * K),
                 reinterpret_cast<Vec4Of<Out>*>(out + size_t(row) * K), K, norm, eps, g, bb, lane);
}

// The conv of ssm_decode_in, staged in front of x_proj: u[m, e] = silu(b[e] + sum_j
// w[e, j] [state[m, :, e], x[m, e]][j]) with d_conv kConvK (Mamba's 4).
constexpr int kConvK = 4;
__device__ __forceinline__ void load_conv_weights(const ConvIn& cv, int E, int c4, float (&cw)[4 * kConvK],
                                                  float (&cb)[4]) {
  const bool in = 4 * c4 < E;
#pragma unroll
  for (int i = 0; i < 4 * kConvK; ++i) cw[i] = in ? cv.w[size_t(4 * c4) * kConvK + i] : 0.0f;  // (E, K)
#pragma unroll
  for (int i = 0; i < 4; ++i) cb[i] = in && cv.b ? cv.b[4 * c4 + i] : 0.0f;
}

__device__ __forceinline__ float4 conv_u4(const ConvIn& cv, const float* x, int ldx, int E, int m, int c4,
                                          const float (&cw)[4 * kConvK], const float (&cb)[4]) {
  constexpr int H = kConvK - 1;
  float4 win[kConvK];
#pragma unroll
  for (int j = 0; j < H; ++j) win[j] = reinterpret_cast<const float4*>(cv.state + (size_t(m) * H + j) * E)[c4];
  win[H] = reinterpret_cast<const float4*>(x + size_t(m) * ldx)[c4];
  float u[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float p = cb[i];
#pragma unroll
    for (int j = 0; j < kConvK; ++j) {
      const float wj = cw[i * kConvK + j];
      const float xj = i == 0 ? win[j].x : i == 1 ? win[j].y : i == 2 ? win[j].z : win[j].w;
      p += wj * xj;
    }
    u[i] = p * sigmoidf_(p);
  }
  return make_float4(u[0], u[1], u[2], u[3]);
}

// The producers of cuBLASLt's bf16 A at batch sizes above the GEMV's (a frozen weight's
// mirror is the other operand): launched with PDL, so they start under the previous
// kernel's tail, as the GEMV does.
// torch: u = F.silu(conv(cat(state, x)))[:, -1].to(torch.bfloat16)   (ssm_decode_in's u)
// x (B, E) row stride ldx, cv.state (B, K-1, E); u (B, E) bf16. A thread per (b, 4 channels).
__global__ void __launch_bounds__(kThreads)
conv_rows_bf16_kernel(int B, int E, const float* __restrict__ x, int ldx, ConvIn cv, __nv_bfloat162* u) {
  const int E4 = E / 4, i = blockIdx.x * kThreads + threadIdx.x, m = i / E4, c4 = i % E4;
  float cw[4 * kConvK], cb[4];
  load_conv_weights(cv, E, c4, cw, cb);  // constants: before the wait
  pdl_trigger();
  pdl_wait();
  if (m < B) store4(u + size_t(m) * (E / 2), c4, conv_u4(cv, x, ldx, E, m, c4, cw, cb));
}

// torch: out = A[:M, :K].to(torch.bfloat16)   A (M, lda) fp32; out (M, K) bf16 dense, 4 a thread
__global__ void __launch_bounds__(kThreads)
rows_to_bf16_kernel(int M, int K, const float* __restrict__ A, int lda, __nv_bfloat162* out) {
  const int K4 = K / 4, i = blockIdx.x * kThreads + threadIdx.x, m = i / K4, c4 = i % K4;
  pdl_trigger();
  pdl_wait();
  if (m < M) store4(out + size_t(m) * (K / 2), c4, reinterpret_cast<const float4*>(A + size_t(m) * lda)[c4]);
}

// bf16 pairs to fp32: the high half is the fp32 bit pattern, the low half shifted up.
__device__ __forceinline__ float bf_lo(unsigned u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf_hi(unsigned u) { return __uint_as_float(u & 0xffff0000u); }

// torch: C[:M] = beta * C + norm(A) @ W.T   (CONV: C = silu(conv(state, A)) @ W.T)   (norm: 0 none, 1 rms, 2 layer)
// MT >= M rows of A, CH >= K / 128 float4 per lane. W (N, ldw) fp32, or bf16 when W16
// (then CW = CH / 2 loads of 8 values per lane, K % 8 == 0). RW weight rows per warp at a time.
template <int MT, int CH, bool CONV, bool W16, int RW>
__global__ void __launch_bounds__(kThreads)
gemv_kernel(int M, int N, int K, const float* __restrict__ A, int lda,
            const void* __restrict__ W, int ldw, float beta, float* C, int ldc, int norm,
            float eps, const float* __restrict__ nw, const float* __restrict__ nb, ConvIn cv) {
  extern __shared__ float4 sA[];  // (M, K/4), float4s in sa_pos<W16> order
  constexpr int CW = W16 ? (CH + 1) / 2 : CH;  // 16-byte weight loads per lane and row
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, K4 = K / 4, KW = W16 ? K / 8 : K4;
  const int stride = gridDim.x * kWarps * RW;
  int n = (blockIdx.x * kWarps + warp) * RW;  // this warp's rows n .. n + RW - 1
  uint4 w[RW][CW];
  auto load_rows = [&](int row) {
#pragma unroll
    for (int r = 0; r < RW; ++r) {
      const size_t at = size_t(row + r) * ldw;
      const uint4* wr = W16 ? reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(W) + at)
                            : reinterpret_cast<const uint4*>(static_cast<const float*>(W) + at);
#pragma unroll
      for (int c = 0; c < CW; ++c) {
        const int j = lane + 32 * c;
        w[r][c] = j < KW && row + r < N ? __ldcs(wr + j) : make_uint4(0u, 0u, 0u, 0u);  // streamed once
      }
    }
  };
  // the norm's weights are constants too: fetch them before the wait as well
  float4 g[CH], bb[CH];
  float cw[4 * kConvK], cb[4];  // CONV: this thread's first 4 channels' conv weights
  if (CONV) load_conv_weights(cv, K, threadIdx.x, cw, cb);
  else if (norm && warp < M) load_norm_weights<CH>(nw, nb, K4, lane, g, bb);
  if (n < N) load_rows(n);
  pdl_trigger();
  pdl_wait();

  // Stage A: warp m loads row m (M <= kWarps) into registers in one round trip, then
  // normalises it from there. CONV: the block computes u = silu(conv(state, x)) for
  // every (m, channel), 4 channels a thread.
  if (CONV) {
    for (int c4 = threadIdx.x; 4 * c4 < K; c4 += kThreads) {
      if (c4 != int(threadIdx.x)) load_conv_weights(cv, K, c4, cw, cb);
      for (int m = 0; m < M; ++m)
        sA[size_t(m) * K4 + sa_pos<W16>(c4, K4)] = conv_u4(cv, A, lda, K, m, c4, cw, cb);
    }
  } else if (warp < M) {
    norm_row<CH, W16>(reinterpret_cast<const float4*>(A + size_t(warp) * lda), sA + size_t(warp) * K4, K,
                      norm, eps, g, bb, lane);
  }
  __syncthreads();

  for (; n < N; n += stride) {
    float acc[RW][MT];
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[r][m] = 0.f;
#pragma unroll
    for (int c = 0; c < CW; ++c) {
      const int j = lane + 32 * c;
      if (j < KW) {
        if (W16) {  // k in [8j, 8j + 8): float4s j and K4/2 + j of each row of sA
          float4 lo[RW], hi[RW];
#pragma unroll
          for (int r = 0; r < RW; ++r) {
            const uint4 u = w[r][c];
            lo[r] = make_float4(bf_lo(u.x), bf_hi(u.x), bf_lo(u.y), bf_hi(u.y));
            hi[r] = make_float4(bf_lo(u.z), bf_hi(u.z), bf_lo(u.w), bf_hi(u.w));
          }
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            if (m < M) {
              const float4 a0 = sA[m * K4 + j], a1 = sA[m * K4 + KW + j];
#pragma unroll
              for (int r = 0; r < RW; ++r) acc[r][m] += dot4(lo[r], a0) + dot4(hi[r], a1);
            }
          }
        } else {
          const float4 wf = make_float4(__uint_as_float(w[0][c].x), __uint_as_float(w[0][c].y),
                                        __uint_as_float(w[0][c].z), __uint_as_float(w[0][c].w));
#pragma unroll
          for (int m = 0; m < MT; ++m)
            if (m < M) acc[0][m] += dot4(wf, sA[m * K4 + j]);
        }
      }
    }
    const int next = n + stride;
    if (next < N) load_rows(next);  // in flight during the reduction below
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[r][m] += __shfl_xor_sync(kFull, acc[r][m], o);
    // lane r * MT + m writes (m, n + r) (compile-time indices into acc: no local memory)
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (lane == r * MT + m && m < M && n + r < N) {
          float* out = C + size_t(m) * ldc + n + r;
          *out = beta == 0.f ? acc[r][m] : acc[r][m] + beta * *out;
        }
      }
  }
}

// bf16 rows are half as long: a warp takes two at a time, so it keeps as many bytes in
// flight as with fp32 and reads each A value from shared memory once per two rows.
// Measured at B = 1 (decode_ops, us): norm_gemm in_proj 2.53 with two rows a warp
// against 4.02 with one (384 blocks, more than fit at once) and 4.54 for fp32; the head 19.7 (4.0
// TB/s) against 36.0. (One row a warp for N < 4224 cost cuda_decode 0.242 -> 0.281
// ms/token.) The conv-staged GEMV (ssm_decode_in, N = 80) keeps one: 2.93 either way.
template <int MT, int CH, bool W16>
void launch_gemv(Ctx& c, int M, int N, int K, const float* A, int lda, const void* W, int ldw,
                 float beta, float* C, int ldc, int norm, float eps, const float* nw,
                 const float* nb, const ConvIn& cv) {
  const bool two = W16 && !cv.state;
  const int rows = two ? 2 * kWarps : kWarps;  // output rows a block takes at a time
  const int blocks = std::min((N + rows - 1) / rows, 4 * c.sm_count);
  const size_t smem = size_t(M) * K * sizeof(float);
  if (cv.state)
    launch(gemv_kernel<MT, CH, true, W16, 1>, dim3(blocks), dim3(kThreads), smem, c.stream, c.pdl, M, N, K,
           A, lda, W, ldw, beta, C, ldc, norm, eps, nw, nb, cv);
  else if (two)
    launch(gemv_kernel<MT, CH, false, true, 2>, dim3(blocks), dim3(kThreads), smem, c.stream, c.pdl, M, N, K,
           A, lda, W, ldw, beta, C, ldc, norm, eps, nw, nb, cv);
  else
    launch(gemv_kernel<MT, CH, false, false, 1>, dim3(blocks), dim3(kThreads), smem, c.stream, c.pdl, M, N,
           K, A, lda, W, ldw, beta, C, ldc, norm, eps, nw, nb, cv);
}

template <int MT>
void dispatch_ch(Ctx& c, int M, int N, int K, const float* A, int lda, const float* W, const void* w16,
                 int ldw, float beta, float* C, int ldc, int norm, float eps, const float* nw,
                 const float* nb, const ConvIn& cv) {
  const int ch = (K / 4 + 31) / 32;
#define BHASA_GEMV_CH(X)                                                                              \
  if (ch <= X)                                                                                      \
    return w16 ? launch_gemv<MT, X, true>(c, M, N, K, A, lda, w16, ldw, beta, C, ldc, norm, eps, nw, nb, cv) \
               : launch_gemv<MT, X, false>(c, M, N, K, A, lda, W, ldw, beta, C, ldc, norm, eps, nw, nb, cv);
  BHASA_GEMV_CH(2) BHASA_GEMV_CH(4) BHASA_GEMV_CH(6) BHASA_GEMV_CH(8) BHASA_GEMV_CH(12)
  BHASA_GEMV_CH(16)
#undef BHASA_GEMV_CH
}


}  // namespace

bool norm_rows_serves(int K, const float* x, const float* nw, const float* nb, const float* out) {
  return K % 4 == 0 && K <= 16 * 128 && aligned16(x) && aligned16(nw) && (!nb || aligned16(nb)) &&
         aligned16(out);
}

namespace {
template <typename Out>
void norm_rows_impl(Ctx& c, int M, int K, bool rms, float eps, const float* x, const float* nw,
                    const float* nb, Out* out) {
  check(norm_rows_serves(K, x, nw, nb, reinterpret_cast<const float*>(out)),
        "norm_rows: shape or alignment not served");
  const int ch = (K / 4 + 31) / 32, blocks = (M + kWarps - 1) / kWarps, norm = rms ? 1 : 2;
#define BHASA_NORM_CH(X)                                                                          \
  if (ch <= X) {                                                                                 \
    launch(norm_rows_kernel<X, Out>, dim3(blocks), dim3(kThreads), 0, c.stream, c.pdl, M, K, norm, eps, \
           x, nw, nb, out);                                                                      \
    return BHASA_LAUNCH_CHECK("norm_rows");                                                      \
  }
  BHASA_NORM_CH(2) BHASA_NORM_CH(4) BHASA_NORM_CH(6) BHASA_NORM_CH(8) BHASA_NORM_CH(12)
  BHASA_NORM_CH(16)
#undef BHASA_NORM_CH
}
}  // namespace

void norm_rows(Ctx& c, int M, int K, bool rms, float eps, const float* x, const float* nw,
               const float* nb, float* out) {
  norm_rows_impl(c, M, K, rms, eps, x, nw, nb, out);
}
void norm_rows_bf16(Ctx& c, int M, int K, bool rms, float eps, const float* x, const float* nw,
                    const float* nb, void* out) {
  norm_rows_impl(c, M, K, rms, eps, x, nw, nb, static_cast<__nv_bfloat16*>(out));
}

bool gemv_serves(int M, int N, int K, const float* A, int lda, const float* W, int ldw,
                 const float* nw, const float* nb) {
  static_assert(kGemvMaxM <= kWarps, "a warp stages each row of A");
  return M >= 1 && M <= kGemvMaxM && N >= 1 && K >= 4 && K % 4 == 0 && K <= 16 * 128 &&
         size_t(M) * K * sizeof(float) <= 48 * 1024 && lda % 4 == 0 && ldw % 4 == 0 &&
         aligned16(A) && aligned16(W) && (!nw || aligned16(nw)) && (!nb || aligned16(nb));
}

bool gemv_w16_serves(int K, int ldw, const void* w16) {
  return w16 && K % 8 == 0 && ldw % 8 == 0 && aligned16(w16);
}

void gemv(Ctx& c, int M, int N, int K, const float* A, int lda, const float* W, int ldw, float beta,
          float* C, int ldc, int norm, float eps, const float* nw, const float* nb, const ConvIn& cv,
          const void* w16) {
  check(gemv_serves(M, N, K, A, lda, W, ldw, nw, nb), "gemv: shape or alignment not served");
  check(!cv.state || (cv.K == kConvK && aligned16(cv.state)), "gemv: conv staging needs d_conv 4");
  check(!w16 || gemv_w16_serves(K, ldw, w16), "gemv: the bf16 weight needs K, ldw % 8 == 0 and 16-byte alignment");
  if (M == 1) dispatch_ch<1>(c, M, N, K, A, lda, W, w16, ldw, beta, C, ldc, norm, eps, nw, nb, cv);
  else if (M == 2) dispatch_ch<2>(c, M, N, K, A, lda, W, w16, ldw, beta, C, ldc, norm, eps, nw, nb, cv);
  else if (M <= 4) dispatch_ch<4>(c, M, N, K, A, lda, W, w16, ldw, beta, C, ldc, norm, eps, nw, nb, cv);
  else dispatch_ch<8>(c, M, N, K, A, lda, W, w16, ldw, beta, C, ldc, norm, eps, nw, nb, cv);
  BHASA_LAUNCH_CHECK("gemv");
}

bool rows_to_bf16_serves(int K, const float* A, int lda) {
  return K % 4 == 0 && lda % 4 == 0 && aligned16(A);
}

void rows_to_bf16(Ctx& c, int M, int K, const float* A, int lda, void* out) {
  check(rows_to_bf16_serves(K, A, lda), "rows_to_bf16: shape or alignment not served");
  launch(rows_to_bf16_kernel, dim3(blocks_for(size_t(M) * (K / 4), kThreads)), dim3(kThreads), 0, c.stream,
         c.pdl, M, K, A, lda, static_cast<__nv_bfloat162*>(out));
  BHASA_LAUNCH_CHECK("rows_to_bf16");
}

bool conv_rows_serves(int E, int K, const float* x, int ldx, const float* state) {
  return K == kConvK && E % 4 == 0 && ldx % 4 == 0 && aligned16(x) && aligned16(state);
}

void conv_rows_bf16(Ctx& c, int B, int E, const float* x, int ldx, const ConvIn& cv, void* u) {
  check(conv_rows_serves(E, cv.K, x, ldx, cv.state), "conv_rows_bf16: shape or alignment not served");
  launch(conv_rows_bf16_kernel, dim3(blocks_for(size_t(B) * (E / 4), kThreads)), dim3(kThreads), 0, c.stream,
         c.pdl, B, E, x, ldx, cv, static_cast<__nv_bfloat162*>(u));
  BHASA_LAUNCH_CHECK("conv_rows_bf16");
}

// (Tried for B > 8 in tiles of 8 rows of A, each tile re-reading x_proj from L2: 16.9 us
// at B = 64, against 7.2 for conv_decode + cuBLASLt, since a block stages its rows' conv
// one row after another; so B <= 8 only.)
bool conv_gemv_serves(int B, int E, int K, int P, const float* x, int ldx, const float* state,
                      const float* x_proj) {
  return K == kConvK && gemv_serves(B, P, E, x, ldx, x_proj, E, nullptr, nullptr) && aligned16(state);
}

}  // namespace bhasa::cuda
