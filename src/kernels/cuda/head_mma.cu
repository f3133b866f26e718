// The tied LM head of a batch decode step: logits (M, N) = rms_norm(x) @ W^T at M <= 64 rows.
// On a compute capability 9.0 device head_mma runs head_wgmma.cu's kernel (the same design on
// wgmma and TMA, faster); this file's mma.sync kernel serves elsewhere, or with BHASA_HEAD_WGMMA=0.
// At N = the vocabulary (50280 at m130: a 77 MB bf16 weight, 18 us at the copy rate), cuBLASLt
// took 30 us for it in the decode chain at M = 64 (2.6 TB/s), and it cannot be launched with
// PDL, so its weight stream began only after the last layer had ended.
//
// Design: a weight stream through a ring of shared-memory stages, one block an SM.
//   - A producer warp copies stage after stage of 32 weight rows (one bulk copy a row, into
//     rows padded to 2K + 16 bytes), each completing on its stage's `full` mbarrier, and
//     refills a stage once the 8 consumer warps have released it on its `empty` mbarrier.
//     It starts before pdl_wait: the weight never depends on the previous kernel.
//   - The 8 consumer warps are RG row groups x KG K groups (RG KG = 8; at M = 64, 2 x 4):
//     warp (rg, kg) multiplies its rows of A by the K slice kg of every stage. Its A
//     fragments stay in registers for the whole kernel, so the products read only the
//     weight from shared memory (each byte RG times).
//   - The KG partial (M, 32) tiles are summed through shared memory in K-group order (a
//     fixed order: no atomics, the same bits every run), scaled by each row's rstd and
//     stored. The partials' buffer is double: one barrier a tile, and a tile's sums overlap
//     the next tile's products in other warps.
// No ldmatrix: within each 32-wide K block, lane (g, c) holds k = 8c .. 8c + 7 of its rows,
// 16-byte loads of A (global) and of the weight (shared) alike. The mma's k order is then a
// permutation of the true one, the same for both operands, so the dot products are the same.
#include <cuda_bf16.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cstdlib>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/head_mma.h"
#include "kernels/cuda/head_common.cuh"
#include "kernels/cuda/sm90.cuh"
#include "kernels/sampling.h"

// Lab switches (bench/cuda_lab/head_mma_lab.cu compiles this file with them; 0 here): bit 1
// skips the products, bit 2 the weight's copies, bit 4 the sums and stores, so that each
// part can be timed alone.
#ifndef HEAD_MMA_LAB
#define HEAD_MMA_LAB 0
#endif

namespace bhasa::cuda {

namespace {

constexpr int kRows = 32;                    // weight rows a stage: 4 n-tiles of 8
constexpr int kWarps = 8;                    // consumer warps
constexpr int kThreads = 32 * (kWarps + 1);  // and the producer warp
constexpr int kRedPitch = 40;                // floats a row of a partial tile (32 + 8: no bank conflicts)
constexpr int kMaxStages = 8;
constexpr size_t kSmemMax = 227 * 1024;      // sm_90's opt-in shared memory a block

// The warps' split for M rows: WM 16-row tiles a warp, RG row groups (KG = 8 / RG K groups);
// KB: 32-wide K blocks a warp. A's fragments take WM KB 8 registers a thread (<= 96).
struct HeadSplit {
  int WM = 0, RG = 0, KB = 0;
};
HeadSplit head_split(int M, int K) {
  const int MT = (M + 15) / 16;
  HeadSplit h;
  if (MT == 4 || MT == 2) h = {MT / 2, 2, K / 128};  // 2 row groups x 4 K groups
  else if (MT == 1 || MT == 3) h = {MT, 1, K / 256};  // 8 K groups
  return h;
}

struct HeadLayout {
  int pitch = 0, stages = 0;  // bytes a stage row; stages in the ring
  size_t stage_bytes = 0, red_bytes = 0, smem = 0;
};
HeadLayout head_layout(int M, int K) {
  const HeadSplit h = head_split(M, K);
  HeadLayout l;
  l.pitch = 2 * K + 16;
  l.stage_bytes = size_t(kRows) * l.pitch;
  const int KG = h.RG ? kWarps / h.RG : kWarps;
  l.red_bytes = 2 * size_t(KG) * ((M + 15) / 16 * 16) * kRedPitch * sizeof(float);  // double
  const size_t fixed = l.red_bytes + 2 * kMaxStages * sizeof(uint64_t) + 64 * sizeof(float);  // + bars, rstd
  l.stages = kSmemMax > fixed ? int(std::min<size_t>(kMaxStages, (kSmemMax - fixed) / l.stage_bytes)) : 0;
  l.smem = size_t(l.stages) * l.stage_bytes + fixed;
  return l;
}

static_assert(32 * kWarps == kHeadConsumers, "pick_finish's barrier counts the consumers");
__device__ __forceinline__ void consumers_sync() { head_consumers_sync(); }
__device__ __forceinline__ uint4 ld_shared16(const unsigned char* p) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(smem_addr(p)));
  return v;
}

// The greedy ids from the consumers' bests (head_mma's pick): each row's best of this block
// (the 8 lanes of a row's items) goes into the row's key by atomicMax; pick_finish does the rest.
__device__ void pick_ids(int M, int N, const HeadPick& pick, const float (&best)[2], const int (&best_v)[2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    float b = best[k];
    int bv = best_v[k];
    for (int o = 1; o < 8; o <<= 1)  // the row's 8 lanes (items of a row are 8 consecutive threads)
      better_pick(b, bv, __shfl_xor_sync(0xffffffffu, b, o), __shfl_xor_sync(0xffffffffu, bv, o));
    const int r = (threadIdx.x + k * 32 * kWarps) / (kRows / 4);
    if (lane % 8 == 0 && r < M && bv != INT_MAX) atomicMax(pick.keys + r, pick_key(b, bv));
  }
  pick_finish(M, N, pick);
}

// torch: out = (A.float() @ W.float().T) * rstd[:, None]   (HeadSplit's WM, RG, KB)
template <int WM, int RG, int KB>
__global__ void __launch_bounds__(kThreads, 1)
head_mma_kernel(int M, int N, const __nv_bfloat16* __restrict__ A, const float* __restrict__ ss, int tiles,
                int ss_ld, float eps, const __nv_bfloat16* __restrict__ W, int ldw, float* __restrict__ out, int ldc,
                int stages, int pitch, HeadPick pick) {
  constexpr int KG = kWarps / RG, K = 32 * KB * KG, MR = 16 * WM * RG;
  extern __shared__ __align__(128) unsigned char smem[];
  const size_t stage_bytes = size_t(kRows) * pitch;
  float* red = reinterpret_cast<float*>(smem + stages * stage_bytes);  // (2, KG, MR, kRedPitch)
  uint64_t* full = reinterpret_cast<uint64_t*>(red + 2 * KG * MR * kRedPitch);  // (kMaxStages)
  uint64_t* empty = full + kMaxStages;                                          // (kMaxStages)
  float* rstd = reinterpret_cast<float*>(empty + kMaxStages);                   // (MR)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n_tiles = (N + kRows - 1) / kRows;
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) mbar_init(&full[s], 1), mbar_init(&empty[s], kWarps);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
  __syncthreads();  // the last block-wide barrier: the producer leaves when its copies are issued
  pdl_trigger();

  // pick.next_tile: the stage's tile, taken in turn by whichever block's producer is ready
  // (one past the last: no more), so that blocks on SMs the previous kernel left free early
  // take more tiles; else block b takes tiles b, b + grid, ...
  __shared__ int stage_tile[kMaxStages];
  const bool taken = pick.next_tile != nullptr;
  if (warp == kWarps) {  // the producer: its i-th tile into stage i % stages
    constexpr unsigned row_bytes = 2u * K;
    for (int i = 0;; ++i) {
      const int s = i % stages;
      if (i >= stages) mbar_wait(&empty[s], ((i / stages) - 1) & 1);
      int t = blockIdx.x + i * gridDim.x;
      if (taken) {
        if (lane == 0) t = int(atomicAdd(pick.next_tile, 1u)), stage_tile[s] = t;  // (released by the arrive)
        t = __shfl_sync(0xffffffffu, t, 0);
        if (t >= n_tiles && lane == 0) mbar_arrive(&full[s]);  // the consumers stop at this stage
      }
      if (t >= n_tiles) break;
      if (HEAD_MMA_LAB & 2) {
        if (lane == 0) mbar_arrive(&full[s]);
        continue;
      }
      const int rows = min(kRows, N - t * kRows);  // the last tile's other rows: stale, never stored
      if (lane == 0) mbar_expect_tx(&full[s], rows * row_bytes);
      __syncwarp();
      if (lane < rows) bulk_copy(smem + s * stage_bytes + lane * pitch, W + size_t(t * kRows + lane) * ldw, row_bytes, &full[s]);
    }
    return;
  }

  pdl_wait();  // A and ss are the previous kernel's
  const int g = lane / 4, c = lane % 4, rg = warp / KG, kg = warp % KG, kw = kg * (K / KG);
  uint4 a[WM][KB][2];  // rows 16 (rg WM + m) + g (+ 8), k = kw + 32 kb + 8c .. + 8
#pragma unroll
  for (int m = 0; m < WM; ++m)
#pragma unroll
    for (int kb = 0; kb < KB; ++kb)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = 16 * (rg * WM + m) + g + 8 * h;
        a[m][kb][h] = r < M ? __ldg(reinterpret_cast<const uint4*>(A + size_t(r) * K + kw + 32 * kb + 8 * c))
                            : make_uint4(0, 0, 0, 0);
      }
  if (threadIdx.x < MR)  // (seen after the first consumers_sync below)
    rstd[threadIdx.x] = head_row_rstd(threadIdx.x, M, K, ss, tiles, ss_ld, eps);

  const bool vec = (ldc % 4 == 0) && (reinterpret_cast<size_t>(out) % 16 == 0);
  // pick: this thread's best (score, then the smaller index) of its items' rows, items
  // threadIdx.x and threadIdx.x + 256 of every tile (M 8 <= 512 items: two rows at most)
  float best[2] = {-FLT_MAX, -FLT_MAX};
  int best_v[2] = {INT_MAX, INT_MAX};
  for (int i = 0;; ++i) {
    const int s = i % stages;
    float acc[WM][4][4] = {};  // (m-tile, n-tile of 8 weight rows, fragment)
    if (!taken && blockIdx.x + i * gridDim.x >= n_tiles) break;
    mbar_wait(&full[s], (i / stages) & 1);
    const int t = taken ? stage_tile[s] : blockIdx.x + i * gridDim.x;
    if (t >= n_tiles) break;
    const unsigned char* stage = smem + s * stage_bytes + g * pitch + 2 * (kw + 8 * c);
    // k block by k block, the 4 weight fragments loaded first; consecutive mma then feed
    // 4 WM different accumulators (a chain of dependent mma a few deep stalled the pipe)
#pragma unroll
    for (int kb = 0; kb < (HEAD_MMA_LAB & 1 ? 0 : KB); ++kb) {
      uint4 w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) w[j] = ld_shared16(stage + j * 8 * pitch + 64 * kb);  // weight row 8 j + g
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int m = 0; m < WM; ++m) {
          const unsigned lo[4] = {a[m][kb][0].x, a[m][kb][1].x, a[m][kb][0].y, a[m][kb][1].y};
          mma_bf16(acc[m][j], lo, w[j].x, w[j].y);
        }
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int m = 0; m < WM; ++m) {
          const unsigned hi[4] = {a[m][kb][0].z, a[m][kb][1].z, a[m][kb][0].w, a[m][kb][1].w};
          mma_bf16(acc[m][j], hi, w[j].z, w[j].w);
        }
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);  // the stage is read: the producer may refill it
    // this tile's partials into buffer i % 2 (its readers of two tiles ago passed the last barrier)
    float* buf = red + (i & 1) * KG * MR * kRedPitch;
#pragma unroll
    for (int m = 0; m < WM; ++m)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float* p = buf + (kg * MR + 16 * (rg * WM + m) + g) * kRedPitch + 8 * j + 2 * c;
        *reinterpret_cast<float2*>(p) = make_float2(acc[m][j][0], acc[m][j][1]);
        *reinterpret_cast<float2*>(p + 8 * kRedPitch) = make_float2(acc[m][j][2], acc[m][j][3]);
      }
    consumers_sync();
    // float4 item q of row r: the KG partials in K-group order, times rstd
#pragma unroll
    for (int k = 0; k < 2; ++k) {  // items threadIdx.x, + 256: M 8 <= 512
      const int it = threadIdx.x + k * 32 * kWarps;
      if (it >= (HEAD_MMA_LAB & 4 ? 0 : M) * (kRows / 4)) break;
      const int r = it / (kRows / 4), q = it % (kRows / 4), n = t * kRows + 4 * q;
      const float* p = buf + r * kRedPitch + 4 * q;
      float4 v = *reinterpret_cast<const float4*>(p);
#pragma unroll
      for (int q2 = 1; q2 < KG; ++q2) {
        const float4 u = *reinterpret_cast<const float4*>(p + q2 * MR * kRedPitch);
        v.x += u.x, v.y += u.y, v.z += u.z, v.w += u.w;
      }
      const float sc = rstd[r];
      v.x *= sc, v.y *= sc, v.z *= sc, v.w *= sc;
      if (pick.ids) {
        const float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (n + j < N) better_pick(best[k], best_v[k], e[j], n + j);
      }
      if (pick.ids && !pick.logits) continue;
      float* o = out + size_t(r) * ldc + n;
      if (vec && n + 3 < N) {
        *reinterpret_cast<float4*>(o) = v;
      } else {
        const float e[4] = {v.x, v.y, v.z, v.w};
        for (int k = 0; k < 4 && n + k < N; ++k) o[k] = e[k];
      }
    }
  }
  if (pick.ids) pick_ids(M, N, pick, best, best_v);
}

int head_mma_blocks(int N, int sm_count) { return std::min((N + kRows - 1) / kRows, std::max(sm_count, 1)); }

using Kernel = void (*)(int, int, const __nv_bfloat16*, const float*, int, int, float, const __nv_bfloat16*, int,
                        float*, int, int, int, HeadPick);

template <int WM, int RG>
Kernel kernel_for_kb(int KB) {
  switch (KB) {
    case 1: if constexpr (RG == 1) return head_mma_kernel<WM, RG, 1>; break;
    case 2: return head_mma_kernel<WM, RG, 2>;
    case 3: if constexpr (RG == 1) return head_mma_kernel<WM, RG, 3>; break;
    case 4: if constexpr (RG == 2) return head_mma_kernel<WM, RG, 4>; break;
    case 6: if constexpr (RG == 2) return head_mma_kernel<WM, RG, 6>; break;
    default: break;
  }
  return nullptr;
}
// K 256, 512 or 768 (A's fragments: at most 96 registers a thread)
Kernel kernel_for(int M, int K) {
  if (M < 1 || M > 64 || K % 256 || K > 768) return nullptr;
  const HeadSplit h = head_split(M, K);
  switch (h.WM * 16 + h.RG) {
    case 16 + 1: return kernel_for_kb<1, 1>(h.KB);
    case 48 + 1: return kernel_for_kb<3, 1>(h.KB);
    case 16 + 2: return kernel_for_kb<1, 2>(h.KB);
    case 32 + 2: return kernel_for_kb<2, 2>(h.KB);
    default: return nullptr;
  }
}

}  // namespace

bool head_mma_serves(int M, int N, int K, const void* a16, const void* W, int ldw, const float* out, int ldc) {
  return N >= 1 && kernel_for(M, K) && head_layout(M, K).stages >= 2 && aligned16(a16) && aligned16(W) &&
         ldw % 8 == 0 && ldw >= K && aligned16(out) && ldc % 4 == 0 && ldc >= N;
}

void head_mma(cudaStream_t stream, bool pdl, int sm_count, int M, int N, int K, const void* a16, const float* ss,
              int tiles, int ss_ld, float eps, const void* W, int ldw, float* out, int ldc, const HeadPick* pick) {
  check(head_mma_serves(M, N, K, a16, W, ldw, out, ldc), "head_mma: this shape or these operands are not served");
  const char* wgmma = std::getenv("BHASA_HEAD_WGMMA");  // (each call: the tests run both)
  if ((!wgmma || std::atoi(wgmma) != 0) && head_wgmma_serves(M, N, K, a16, W, ldw, out, ldc))
    return head_wgmma(stream, pdl, sm_count, M, N, K, a16, ss, tiles, ss_ld, eps, W, ldw, out, ldc, pick);
  const Kernel kernel = kernel_for(M, K);
  const HeadLayout l = head_layout(M, K);
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(l.smem)),
             "head_mma: cudaFuncSetAttribute");
  const int G = head_mma_blocks(N, sm_count);
  launch(kernel, dim3(G), dim3(kThreads), l.smem, stream, pdl, M, N, static_cast<const __nv_bfloat16*>(a16), ss,
         tiles, ss_ld, eps, static_cast<const __nv_bfloat16*>(W), ldw, out, ldc, l.stages, l.pitch,
         pick ? *pick : HeadPick{});
  BHASA_LAUNCH_CHECK("head_mma");
}

}  // namespace bhasa::cuda
