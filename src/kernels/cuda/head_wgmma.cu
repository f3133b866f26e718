// The tied LM head at 1-64 rows on Hopper's warpgroup MMA (wgmma): head_mma.cu's weight
// stream and pick, with products that read the weight from shared memory once. head_mma
// runs it wherever it serves (BHASA_HEAD_WGMMA=0: head_mma's own mma.sync kernel); rows
// past M are zeros in A, never stored nor picked.
//
// head_mma's consumers (mma.sync) were the limit at M = 64: each 32-row tile took ~1.7 us of
// products and K-group sums against ~1.4 us to stream it (NOTES.md, session 11), since every
// warp reads its weight fragments from shared memory itself (each byte twice, by the two row
// groups) and the four K groups' partial tiles go through 64 KB of shared memory a tile.
// Here:
//   - the producer warp loads each 32-row stage by TMA (a 2-D tensor map over W, boxes of
//     64 k x 32 rows, 128-byte swizzle: the layout wgmma reads), completing on the stage's
//     `full` mbarrier; rows past N come back as zeros;
//   - two consumer warpgroups, one a K half, each run K / 32 wgmma m64n32k16 a stage: the
//     64 rows of A as registers (its K half, loaded once), the stage as B from shared
//     memory, 16 fp32 accumulators a thread;
//   - the halves are summed through 16 KB of shared memory (thread t of one warpgroup holds
//     the same items as thread t of the other: rows 0-31 are finished by the first, rows
//     32-63 by the second), scaled by each row's rstd, picked and stored as head_mma does.
// Measured (NOTES.md, session 13): in the decode chain at M = 64 the head went 30.3 -> 26.1 us
// (77 MB: ~17 us of copies alone), batch 64 decode 0.465 -> 0.461 ms a step; faster at 16-48
// rows too.
// torch: out = (A.float() @ W.float().T) * rstd[:, None]   (head_mma.h)
// Needs sm_90a (wgmma): compiled as such, and a no-op elsewhere (head_wgmma_serves says no).
#include <cuda.h>
#include <cuda_bf16.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cstdlib>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/head_mma.h"
#include "kernels/cuda/head_common.cuh"
#include "kernels/cuda/sm90.cuh"
#include "kernels/cuda/wgmma.cuh"
#include "kernels/sampling.h"


namespace bhasa::cuda {

namespace {

constexpr int kRows = 32;                          // weight rows a stage (wgmma's N)
constexpr int kBoxK = 64;                          // k a TMA box (128 bytes: the swizzle's span)
constexpr int kBoxBytes = kRows * kBoxK * 2;       // 4 KB
constexpr int kThreads = kHeadConsumers + 32;      // two warpgroups and the producer warp
constexpr int kMaxStages = 8;
constexpr size_t kSmemMax = 227 * 1024;
constexpr size_t kRedBytes = 2 * 4 * 128 * 16;    // (2 buffers, 4 float4, 128 threads)

size_t stage_bytes(int K) { return size_t(K / kBoxK) * kBoxBytes; }
size_t fixed_bytes() { return 1024 /* alignment */ + kRedBytes + 2 * kMaxStages * 8 + 64 * 4 + kMaxStages * 4; }
int stages_for(int K) { return int(std::min<size_t>(kMaxStages, (kSmemMax - fixed_bytes()) / stage_bytes(K))); }

// L2 eviction priorities of a TMA load (the cache-policy operand, as CUTLASS's CacheHintSm90)
constexpr uint64_t kEvictNormal = 0x1000000000000000ull, kEvictFirst = 0x12F0000000000000ull;

#if BHASA_WGMMA_COMPILED
// d (64 x 32, 16 floats a thread) += a (64 x 16: this warp's 16 rows, mma.sync's A fragment)
// b (32 x 16 from shared memory, K-major)
__device__ __forceinline__ void wgmma_n32(float (&d)[16], const unsigned (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
// a box {kBoxK, kRows} of the tensor map at (k, row) into dst, completing on bar
__device__ __forceinline__ void tma_box(unsigned dst, const CUtensorMap* map, int k, int row, uint64_t* bar,
                                        uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, "
      "%3}], [%4], %5;" ::"r"(dst),
      "l"(map), "r"(k), "r"(row), "r"(smem_addr(bar)), "l"(policy)
      : "memory");
}
__device__ __forceinline__ unsigned ld_b32(const __nv_bfloat16* p) { return *reinterpret_cast<const unsigned*>(p); }
#endif

// KS: k16 steps a warpgroup (K / 32)
template <int KS>
__global__ void __launch_bounds__(kThreads, 1)
head_wgmma_kernel(const __grid_constant__ CUtensorMap wmap, int M, int N, const __nv_bfloat16* __restrict__ A,
                  const float* __restrict__ ss, int tiles, int ss_ld, float eps, float* __restrict__ out, int ldc,
                  int stages, HeadPick pick, uint64_t policy) {
#if BHASA_WGMMA_COMPILED
  constexpr int K = 32 * KS, kBoxes = K / kBoxK;
  constexpr unsigned kStageBytes = kBoxes * kBoxBytes;
  extern __shared__ unsigned char smem_raw[];
  // the stages 1024-byte aligned (the swizzle's atom), then the sums, bars, rstd, tiles
  unsigned char* smem = smem_raw + ((1024 - smem_addr(smem_raw) % 1024) % 1024);
  float4* red = reinterpret_cast<float4*>(smem + stages * kStageBytes);  // (2, 4, 128)
  uint64_t* full = reinterpret_cast<uint64_t*>(red + 2 * 4 * 128);       // (kMaxStages)
  uint64_t* empty = full + kMaxStages;                                   // (kMaxStages)
  float* rstd = reinterpret_cast<float*>(empty + kMaxStages);            // (64)
  int* stage_tile = reinterpret_cast<int*>(rstd + 64);                   // (kMaxStages)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n_tiles = (N + kRows - 1) / kRows;
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) mbar_init(&full[s], 1), mbar_init(&empty[s], kHeadConsumers / 32);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
  __syncthreads();  // the last block-wide barrier: the producer leaves when its copies are issued
  pdl_trigger();

  const bool taken = pick.next_tile != nullptr;  // tiles taken in turn, as head_mma's
  if (warp == kHeadConsumers / 32) {             // the producer: its i-th tile into stage i % stages
    if (lane != 0) return;
    asm volatile("prefetch.tensormap [%0];" ::"l"(&wmap) : "memory");
    for (int i = 0;; ++i) {
      const int s = i % stages;
      if (i >= stages) mbar_wait(&empty[s], ((i / stages) - 1) & 1);
      int t = blockIdx.x + i * gridDim.x;
      if (taken) {
        t = int(atomicAdd(pick.next_tile, 1u));
        stage_tile[s] = t;  // (released by the arrive)
        if (t >= n_tiles) mbar_arrive(&full[s]);  // the consumers stop at this stage
      }
      if (t >= n_tiles) break;
      mbar_expect_tx(&full[s], kStageBytes);
      const unsigned dst = smem_addr(smem + s * kStageBytes);
      for (int b = 0; b < kBoxes; ++b) tma_box(dst + b * kBoxBytes, &wmap, b * kBoxK, t * kRows, &full[s], policy);
    }
    return;
  }

  pdl_wait();  // A and ss are the previous kernel's
  const int wg = warp / 4, w = warp % 4, g = lane / 4, c = lane % 4;
  const int r0 = 16 * w + g, r1 = r0 + 8;  // this thread's rows (of the warp's 16)
  unsigned a[KS][4];  // mma.sync's A fragment of each k16 step of this warpgroup's K half
#pragma unroll
  for (int j = 0; j < KS; ++j) {
    const int k = wg * (K / 2) + 16 * j + 2 * c;
    a[j][0] = r0 < M ? ld_b32(A + size_t(r0) * K + k) : 0u;
    a[j][1] = r1 < M ? ld_b32(A + size_t(r1) * K + k) : 0u;
    a[j][2] = r0 < M ? ld_b32(A + size_t(r0) * K + k + 8) : 0u;
    a[j][3] = r1 < M ? ld_b32(A + size_t(r1) * K + k + 8) : 0u;
  }
  if (threadIdx.x < 64)  // (seen after the first barrier below)
    rstd[threadIdx.x] = head_row_rstd(threadIdx.x, M, K, ss, tiles, ss_ld, eps);
  // Rows 0-31 (warps 0, 1 of each warpgroup) are finished by warpgroup 0, rows 32-63 by 1;
  // the other warpgroup hands its partial over through red.
  const bool finisher = (w < 2) == (wg == 0);
  const int t128 = threadIdx.x % 128;
  const bool vec = (ldc % 2 == 0) && (reinterpret_cast<size_t>(out) % 8 == 0);
  float best[2] = {-FLT_MAX, -FLT_MAX};  // rows r0, r1
  int best_v[2] = {INT_MAX, INT_MAX};
  for (int i = 0;; ++i) {
    const int s = i % stages;
    if (!taken && blockIdx.x + i * gridDim.x >= n_tiles) break;
    mbar_wait(&full[s], (i / stages) & 1);
    const int t = taken ? stage_tile[s] : blockIdx.x + i * gridDim.x;
    if (t >= n_tiles) break;
    float acc[16];
#pragma unroll
    for (int e = 0; e < 16; ++e) acc[e] = 0.f;
    // this warpgroup's K half: boxes wg * kBoxes / 2 .., k16 step j at 32 j bytes into its box row
    const unsigned half = smem_addr(smem + s * kStageBytes) + wg * (kBoxes / 2) * kBoxBytes;
    fence_operands<16>(acc);
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < KS; ++j) wgmma_n32(acc, a[j], sw128_desc(half + (j / 4) * kBoxBytes + (j % 4) * 32));
    wgmma_commit();
    wgmma_wait_all();
    fence_operands<16>(acc);
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);  // the stage is read: the producer may refill it
    float4* buf = red + (i & 1) * 4 * 128;  // its readers of two tiles ago passed the last barrier
    if (!finisher)
#pragma unroll
      for (int q = 0; q < 4; ++q) buf[q * 128 + t128] = make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]);
    head_consumers_sync();
    if (!finisher) continue;
    // acc[4 q + e]: row r0 (e < 2) or r1, column 8 q + 2 c + e % 2 of the tile
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float4 o = buf[q * 128 + t128];
      acc[4 * q] += o.x, acc[4 * q + 1] += o.y, acc[4 * q + 2] += o.z, acc[4 * q + 3] += o.w;
    }
    const float s0 = rstd[r0], s1 = rstd[r1];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int n = t * kRows + 8 * q + 2 * c;
      const float v[4] = {acc[4 * q] * s0, acc[4 * q + 1] * s0, acc[4 * q + 2] * s1, acc[4 * q + 3] * s1};
      if (pick.ids)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (n + e % 2 < N) better_pick(best[e / 2], best_v[e / 2], v[e], n + e % 2);
      if (pick.ids && !pick.logits) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = h ? r1 : r0;
        if (r >= M) continue;
        float* o = out + size_t(r) * ldc + n;
        if (vec && n + 1 < N) *reinterpret_cast<float2*>(o) = make_float2(v[2 * h], v[2 * h + 1]);
        else if (n < N) o[0] = v[2 * h];
      }
    }
  }
  if (!pick.ids) return;
  // a row's items are in the 4 lanes c of its g: merge them, then one atomicMax a row
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float b = best[h];
    int bv = best_v[h];
    for (int o = 1; o < 4; o <<= 1)
      better_pick(b, bv, __shfl_xor_sync(0xffffffffu, b, o), __shfl_xor_sync(0xffffffffu, bv, o));
    const int r = h ? r1 : r0;
    if (finisher && c == 0 && r < M && bv != INT_MAX) atomicMax(pick.keys + r, pick_key(b, bv));
  }
  pick_finish(M, N, pick);
#endif
}

using Kernel = void (*)(const CUtensorMap, int, int, const __nv_bfloat16*, const float*, int, int, float, float*, int,
                        int, HeadPick, uint64_t);
Kernel kernel_for(int K) {
  switch (K) {
    case 256: return head_wgmma_kernel<8>;
    case 512: return head_wgmma_kernel<16>;
    case 768: return head_wgmma_kernel<24>;
    default: return nullptr;
  }
}

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      p = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// The head also needs the driver's tensor-map encoder.
bool device_has_wgmma() {
  static const bool has = device_runs_sm90a() && encode_fn() != nullptr;
  return has;
}

}  // namespace

bool device_runs_sm90a() {
  static const bool runs = [] {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    return major == 9 && minor == 0;
  }();
  return runs;
}

bool head_wgmma_serves(int M, int N, int K, const void* a16, const void* W, int ldw, const float* out, int ldc) {
  return M >= 1 && M <= 64 && N >= 1 && kernel_for(K) && stages_for(K) >= 2 && aligned16(a16) && aligned16(W) &&
         ldw % 8 == 0 && ldw >= K && (out != nullptr) && ldc >= N && device_has_wgmma();
}

void head_wgmma(cudaStream_t stream, bool pdl, int sm_count, int M, int N, int K, const void* a16, const float* ss,
                int tiles, int ss_ld, float eps, const void* W, int ldw, float* out, int ldc, const HeadPick* pick) {
  check(head_wgmma_serves(M, N, K, a16, W, ldw, out, ldc), "head_wgmma: this shape or these operands are not served");
  CUtensorMap map{};
  const cuuint64_t dims[2] = {cuuint64_t(K), cuuint64_t(N)};
  const cuuint64_t strides[1] = {cuuint64_t(ldw) * 2};
  const cuuint32_t box[2] = {kBoxK, kRows}, elem[2] = {1, 1};
  const CUresult r = encode_fn()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(W), dims, strides, box,
                                 elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                 CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  check(r == CUDA_SUCCESS, "head_wgmma: cuTensorMapEncodeTiled failed");
  const Kernel kernel = kernel_for(K);
  const int stages = stages_for(K);
  const size_t smem = size_t(stages) * stage_bytes(K) + fixed_bytes();
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
             "head_wgmma: cudaFuncSetAttribute");
  const int G = std::min((N + kRows - 1) / kRows, std::max(sm_count, 1));
  // A weight larger than half of L2 is streamed once a step and cannot stay in L2 to the next
  // (m130: 77 MB, the H200's L2 60 MB): its lines are marked evict_first, so that they leave
  // before the lines the layers pass between their kernels (BHASA_HEAD_EVICT_FIRST=0: normal;
  // a smaller weight stays normal, as it may be found in L2 again). H200, m130 decode, ms a
  // step, three runs each: B = 64 0.441 -> 0.437-0.438, B = 48 0.398-0.400 -> 0.396-0.398.
  // Keeping 16-32 MB of it in L2 from step to step instead (evict_last) did no better, and with
  // L2 set aside for persisting lines the layers slowed (B = 64 0.55-0.65: NOTES.md, session 16).
  static const bool evict_first = [] {
    const char* v = std::getenv("BHASA_HEAD_EVICT_FIRST");
    return !v || std::atoi(v) != 0;
  }();
  static const size_t l2_bytes = [] {
    int dev = 0, bytes = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&bytes, cudaDevAttrL2CacheSize, dev);
    return size_t(bytes);
  }();
  const uint64_t policy = evict_first && size_t(N) * ldw * 2 > l2_bytes / 2 ? kEvictFirst : kEvictNormal;
  launch(kernel, dim3(G), dim3(kThreads), smem, stream, pdl, map, M, N, static_cast<const __nv_bfloat16*>(a16), ss,
         tiles, ss_ld, eps, out, ldc, stages, pick ? *pick : HeadPick{}, policy);
  BHASA_LAUNCH_CHECK("head_wgmma");
}

}  // namespace bhasa::cuda
