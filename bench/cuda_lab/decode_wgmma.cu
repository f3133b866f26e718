// A decode GEMM shaped like cuBLASLt's M = 64 pick but launchable with PDL (issue 6: written in
// session 7, run in session 8; results in NOTES.md, session 8: correct with LBO 128 / SBO 1024,
// slower than cuBLASLt above 16 rows).
//   torch: C = A @ W.T + beta * C   A (M, K) bf16, W (N, K) bf16, C (M, N) fp32, M <= 64
// One warpgroup (128 threads) a CTA: 64 weight rows x 16 MT batch rows over the whole K (no
// split-K, so no partials to exchange). wgmma m64nNk16 with the weight tile as its A (64 rows)
// and the batch rows as its N, both K-major in shared memory without swizzle: 8-row x 16-byte
// core matrices, a stage of 64 K a row group's 8 core matrices in a row (LBO 128 bytes along
// K, SBO 1024 bytes between 8-row groups). Every stage's weight copy (cp.async, one group a
// stage) is issued before pdl_wait; A's after it; stage s's products start as soon as its A
// group lands (cp.async.wait_group), so they run under the later stages' copies.
// The lab checks the result against float64 with both readings of LBO / SBO (in case the
// descriptor's two offsets are the other way round) and times it (24 calls in a graph, PDL,
// weights rotated beyond L2) beside cuBLASLt's best candidate, for in_proj (3072 x 768) at
// M 16, 32, 64. K % 64 == 0 and K <= 768 here (all stages resident: 144 KB at K 768, MT 2).
// Build: nvcc -O3 -std=c++20 -arch=sm_90a -Isrc bench/cuda_lab/decode_wgmma.cu -lcublasLt -o decode_wgmma
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include "kernels/cuda/cuda_common.cuh"  // launch (PDL)
#include "lab_util.h"                   // CK, LT, LtDecodeGemm, bf16_bits, from_bf16_bits, upload, graph_us

namespace {

constexpr int kThreads = 128, kKT = 64;  // one warpgroup; K elements a stage
constexpr int kStageW = 64 * kKT * 2;     // bytes of a stage's weight tile (64 rows)

__device__ __forceinline__ unsigned smem_u32(const void* p) { return unsigned(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// wait until at most `pending` of this thread's groups are in flight (an immediate operand)
__device__ __forceinline__ void wait_pending(int pending) {
  switch (pending) {
#define W_(n) case n: asm volatile("cp.async.wait_group " #n ";" ::: "memory"); break;
    W_(0) W_(1) W_(2) W_(3) W_(4) W_(5) W_(6) W_(7) W_(8) W_(9) W_(10) W_(11) W_(12) W_(13) W_(14) W_(15)
#undef W_
    default: asm volatile("cp.async.wait_group 0;" ::: "memory");
  }
}
// shared memory matrix descriptor (sm_90): start >> 4 in bits 0-13, LBO >> 4 in 16-29,
// SBO >> 4 in 32-45, base offset 0, layout type 0 (no swizzle) in bits 62-63
__device__ __forceinline__ uint64_t smem_desc(unsigned addr, unsigned lbo, unsigned sbo) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lbo & 0x3FFFF) >> 4) << 16) |
         (uint64_t((sbo & 0x3FFFF) >> 4) << 32);
}

template <int N>
struct Wgmma;
template <>
struct Wgmma<16> {  // wgmma m64n16k16, D (8 floats a thread) += A (smem) B (smem)
  static __device__ __forceinline__ void mma(float (&d)[8], uint64_t a, uint64_t b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "l"(a), "l"(b), "r"(accumulate));
  }
};

template <>
struct Wgmma<32> {  // wgmma m64n32k16, D (16 floats a thread) += A (smem) B (smem)
  static __device__ __forceinline__ void mma(float (&d)[16], uint64_t a, uint64_t b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(a), "l"(b), "r"(accumulate));
  }
};

template <>
struct Wgmma<64> {  // wgmma m64n64k16, D (32 floats a thread) += A (smem) B (smem)
  static __device__ __forceinline__ void mma(float (&d)[32], uint64_t a, uint64_t b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a), "l"(b), "r"(accumulate));
  }
};

// Two orientations of the same kernel. BatchA false: the 64-row operand is 64 weight rows,
// the NB = 16 MT operand batch rows; grid (ceil(N / 64), ceil(M / NB)). BatchA true: the
// 64-row operand is the batch (M <= 64), the NB operand NB weight rows; grid ceil(N / NB).
// The weight's stages are copied before pdl_wait, the batch's after.
// swap: LBO and SBO exchanged (the lab tries both readings of the descriptor).
template <int MT, bool BatchA>
__global__ void __launch_bounds__(kThreads, 1)
wg_kernel(int M, int N, int K, const __nv_bfloat16* __restrict__ A, const __nv_bfloat16* __restrict__ W, int ldw,
          float beta, float* __restrict__ C, int ldc, int swap) {
  constexpr int NB = 16 * MT, kStageNB = NB * kKT * 2;
  extern __shared__ __align__(1024) unsigned char smem[];
  const int S = K / kKT;
  const unsigned s64 = smem_u32(smem), sNB = s64 + S * kStageW;
  const int n0 = BatchA ? blockIdx.x * NB : blockIdx.x * 64, m0 = BatchA ? 0 : blockIdx.y * NB;
  const int rows_m = min(BatchA ? 64 : NB, M - m0), t = threadIdx.x;
  // stage s, row r, 16-byte chunk c (0..7): (r / 8) 1024 + c 128 + (r % 8) 16 within the stage
  auto copy_w = [&](unsigned dst, int rows, int s) {
    for (int i = t; i < rows * 8; i += kThreads) {
      const int r = i >> 3, c = i & 7, n = min(n0 + r, N - 1);
      cp_async16(dst + (r >> 3) * 1024 + c * 128 + (r & 7) * 16, W + size_t(n) * ldw + s * kKT + c * 8, n0 + r < N);
    }
  };
  auto copy_a = [&](unsigned dst, int rows, int s) {
    for (int i = t; i < rows * 8; i += kThreads) {
      const int r = i >> 3, c = i & 7, m = m0 + min(r, rows_m - 1);
      cp_async16(dst + (r >> 3) * 1024 + c * 128 + (r & 7) * 16, A + size_t(m) * K + s * kKT + c * 8, r < rows_m);
    }
  };
  for (int s = 0; s < S; ++s) {  // the weight, before the wait: it never depends on the previous kernel
    if (BatchA) copy_w(sNB + s * kStageNB, NB, s);
    else copy_w(s64 + s * kStageW, 64, s);
    commit();
  }
  asm volatile("griddepcontrol.launch_dependents;");
  asm volatile("griddepcontrol.wait;" ::: "memory");
  for (int s = 0; s < S; ++s) {
    if (BatchA) copy_a(s64 + s * kStageW, 64, s);
    else copy_a(sNB + s * kStageNB, NB, s);
    commit();
  }
  const unsigned lbo = swap ? 1024 : 128, sbo = swap ? 128 : 1024;
  float d[NB / 2];
#pragma unroll
  for (int i = 0; i < NB / 2; ++i) d[i] = 0.f;
  for (int s = 0; s < S; ++s) {
    wait_pending(S - 1 - s);                             // this thread's copies of A's stage s (and all W)
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // visible to wgmma's async proxy
    __syncthreads();                                     // everyone's
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
    for (int j = 0; j < kKT / 16; ++j)  // k16 step j: core matrices 2j, 2j + 1 of each row group
      Wgmma<NB>::mma(d, smem_desc(s64 + s * kStageW + j * 256, lbo, sbo),
                     smem_desc(sNB + s * kStageNB + j * 256, lbo, sbo), s | j);
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
  // d[4 j + 2 i + e]: 64-row operand's row 16 warp + lane / 4 + 8 i, NB operand's row 8 j + 2 (lane % 4) + e
  const int warp = t >> 5, lane = t & 31;
#pragma unroll
  for (int j = 0; j < NB / 8; ++j)
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int r64 = 16 * warp + (lane >> 2) + 8 * i, rnb = 8 * j + 2 * (lane & 3) + e;
        const int n = n0 + (BatchA ? rnb : r64), m = BatchA ? r64 : rnb;
        if (n < N && m < rows_m) {
          float* c = C + size_t(m0 + m) * ldc + n;
          *c = d[4 * j + 2 * i + e] + (beta != 0.f ? beta * *c : 0.f);
        }
      }
}

cudaStream_t stream;
constexpr int kCalls = 24;

template <int MT, bool BatchA>
void launch(int M, int N, int K, const void* A, const void* W, float beta, float* C, int swap) {
  const size_t smem = size_t(K / kKT) * (kStageW + 16 * MT * kKT * 2);
  static bool raised = false;
  if (!raised)
    CK(cudaFuncSetAttribute(wg_kernel<MT, BatchA>, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
  raised = true;
  const dim3 grid = BatchA ? dim3((N + 16 * MT - 1) / (16 * MT)) : dim3((N + 63) / 64, (M + 16 * MT - 1) / (16 * MT));
  bhasa::cuda::launch(wg_kernel<MT, BatchA>, grid, dim3(kThreads), smem, stream, /*pdl=*/true, M, N, K, A, W, K, beta,
                      C, N, swap);
}

double time_graph(const std::function<void(int)>& op) {
  for (int i = 0; i < kCalls; ++i) op(i);
  CK(cudaStreamSynchronize(stream));
  CK(cudaGetLastError());
  return graph_us(stream, kCalls, op);
}

void run(int M, int N, int K, std::mt19937& rng) {
  const size_t wn = size_t(N) * K;
  const int copies = int(std::max<size_t>(2, (160u << 20) / (wn * 2) + 1));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<uint16_t> w0(wn), a0(size_t(M) * K);
  for (auto& x : w0) x = bf16_bits(0.05f * u(rng));
  for (auto& x : a0) x = bf16_bits(u(rng));
  std::vector<void*> W = {upload(w0)};
  for (int i = 1; i < copies; ++i) W.push_back(upload(w0));
  void* A = upload(a0);
  float* C;
  CK(cudaMalloc(&C, size_t(M) * N * 4));
  std::vector<double> ref(size_t(M) * N);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; n += 1) {
      double acc = 0;
      for (int k = 0; k < K; ++k) acc += double(from_bf16_bits(a0[size_t(m) * K + k])) * from_bf16_bits(w0[size_t(n) * K + k]);
      ref[size_t(m) * N + n] = acc;
    }
  auto err = [&]() {
    std::vector<float> out(size_t(M) * N);
    CK(cudaMemcpy(out.data(), C, out.size() * 4, cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      if (!std::isfinite(out[i])) return double(INFINITY);
      num += (out[i] - ref[i]) * (out[i] - ref[i]), den += ref[i] * ref[i];
    }
    return std::sqrt(num / den);
  };
  std::printf("\n### M %d N %d K %d: weight %.2f MB, floor %.2f us\n| kernel | us | rel err |\n|---|---|---|\n", M, N, K,
              wn * 2 / 1e6, wn * 2 / 4.29e6);
  for (int batch_a : {0, 1})
    for (int mt : {1, 2, 4}) {
      if (!batch_a && 16 * mt > 2 * M && mt > 1) continue;
      if (batch_a && M > 64) continue;
      for (int swap : {0, 1}) {
        auto op = [&](int c) {
          const void* w = W[c % copies];
          if (batch_a) {
            if (mt == 1) launch<1, true>(M, N, K, A, w, 0.f, C, swap);
            else if (mt == 2) launch<2, true>(M, N, K, A, w, 0.f, C, swap);
            else launch<4, true>(M, N, K, A, w, 0.f, C, swap);
          } else {
            if (mt == 1) launch<1, false>(M, N, K, A, w, 0.f, C, swap);
            else if (mt == 2) launch<2, false>(M, N, K, A, w, 0.f, C, swap);
            else launch<4, false>(M, N, K, A, w, 0.f, C, swap);
          }
        };
        CK(cudaMemset(C, 0xff, size_t(M) * N * 4));
        op(0);
        CK(cudaStreamSynchronize(stream));
        const cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) {
          std::printf("| wgmma %s %d swap %d | failed: %s | |\n", batch_a ? "batch-as-A, weight rows" : "weight-as-A, rows",
                      16 * mt, swap, cudaGetErrorString(e));
          return;  // the context may be gone
        }
        const double rel = err();
        const double us = time_graph(op);
        std::printf("| wgmma %s %d%s | %.2f | %.2e |\n", batch_a ? "batch-as-A, weight rows" : "weight-as-A, rows",
                    16 * mt, swap ? " (LBO/SBO swapped)" : "", us, rel);
      }
    }
  // cuBLASLt: column-major C^T (N, M) = W (K, N)^T A (K, M), best of its heuristic's candidates
  cublasLtHandle_t lt;
  LT(cublasLtCreate(&lt));
  void* ws;
  const size_t kWs = 32u << 20;
  CK(cudaMalloc(&ws, kWs));
  {
    const LtDecodeGemm lt_gemm(lt, ws, kWs, M, N, K);
    double best = 1e30;
    for (int i = 0; i < lt_gemm.found; ++i)
      best = std::min(best, time_graph([&](int c) { lt_gemm.run(i, W[c % copies], A, 0.f, C, stream); }));
    std::printf("| cuBLASLt best of %d | %.2f | |\n", lt_gemm.found, best);
  }
  cublasLtDestroy(lt);
  cudaFree(ws), cudaFree(A), cudaFree(C);
  for (void* p : W) cudaFree(p);
}

}  // namespace

int main() {
  CK(cudaSetDevice(0));
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::mt19937 rng(1);
  for (int M : {64, 32, 16}) run(M, 3072, 768, rng);
  return 0;
}
