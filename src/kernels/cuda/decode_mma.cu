// The decode products at 8 < M <= 64 rows on tensor cores: C (M, N) fp32 = A (M, K) bf16 @
// W^T + beta * C, W (N, K) a frozen weight's bf16 mirror (weight_mirror.cuh). These are a
// weight read (in_proj 4.7 MB, 1.1 us at 4.29 TB/s), where cuBLASLt takes >= 4.2 us at any
// size (bench/cuda_lab/NOTES.md) and cannot be launched with PDL.
//
// Design: what limits a weight stream is the bytes in flight per SM (~32 KB to cover ~1 us
// of DRAM latency at ~32 GB/s per SM). So a block's whole weight tile is requested at once,
// at kernel start and before pdl_wait (weights never depend on the previous kernel): one
// cp.async.bulk per weight row segment, completing on an mbarrier. Then pdl_wait, then A's
// slice (from L2) the same way. Tiles are small (bn rows x K / split) so that even N = 768
// gives ~200 blocks; the split-K partials are summed through distributed shared memory by
// a thread-block cluster of the `split` blocks of a column tile (fixed order: no atomics,
// the result does not depend on timing): each block pushes its partials to the blocks that
// store them (st.async, counted on the owner's mbarrier), so an owner waits for its own
// inputs alone and nobody waits for the others to finish reading.
//
// Inside a block, warp (wn, wk) owns weight rows [16 wn, 16 wn + 16) and the k16 steps
// wk, wk + WK, ...: mma.sync m16n8k16 with the weight as the 16-row operand and A's rows
// as the 8-column one (D^T = W A^T), both K-contiguous in shared memory and fetched by
// ldmatrix; the number of A's 16-row tiles is a template parameter, and the rows past M
// in the last one are multiplied too (their garbage only reaches outputs never stored).
//
// Where the tile's warps along N make whole warpgroups (bn 64 or 128) and its K slices are
// whole 64s (use_wgmma), the products run on wgmma instead: the copies write both tiles in
// wgmma's 128-byte swizzle (wgmma.cuh), and each warpgroup issues m64n(16 MT)k16 on its 64
// weight rows for its k16 steps, reading both operands from shared memory itself. Its
// accumulators are mma.sync's fragments, so the epilogues are the same code. The products
// were on the step's critical path: at B = 64 taking half of in_proj's mma.sync steps away
// saved 15 us a step, all of them 39 (diagnostic builds, NOTES.md session 17); on wgmma
// batch-64 decode went 0.429 -> 0.400 ms a step.
#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/decode_mma.h"
#include "kernels/cuda/sm90.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace cg = cooperative_groups;

namespace bhasa::cuda {

namespace {

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// rows x cpr 16-byte chunks from global rows (ld elements apart) into shared rows (pitch
// bytes apart), thread t taking chunks t, t + T, ...: the row and column advance by adding
// (a division per chunk was ~30 instructions, most of a warp's work before the products)
template <int T>
__device__ __forceinline__ void copy_rows_async(unsigned char* dst, int pitch, const __nv_bfloat16* src, size_t ld,
                                                int rows, int cpr) {
  int r = threadIdx.x / cpr, c = threadIdx.x - r * cpr;
  const int dr = T / cpr, dc = T - dr * cpr;
  const __nv_bfloat16* g = src + r * ld + c * 8;
  unsigned d = smem_addr(dst) + r * pitch + c * 16;
  const size_t g_step = dr * ld + dc * 8, g_wrap = ld - size_t(cpr) * 8;  // elements
  const unsigned d_step = dr * pitch + dc * 16, d_wrap = pitch - cpr * 16;  // bytes
  while (r < rows) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(g) : "memory");
    r += dr, c += dc, g += g_step, d += d_step;
    if (c >= cpr) c -= cpr, ++r, g += g_wrap, d += d_wrap;
  }
}

// copy_rows_async into wgmma's swizzled K-major layout (wgmma.cuh): chunk c of row r to block
// c / 8 (block_bytes apart), row r (128 bytes apart), chunk (c % 8) ^ (r % 8). Consecutive
// threads take a row's consecutive chunks: each 8 of them fill one 128-byte row.
template <int T>
__device__ __forceinline__ void copy_rows_sw128(unsigned char* dst, unsigned block_bytes, const __nv_bfloat16* src,
                                                size_t ld, int rows, int cpr) {
  int r = threadIdx.x / cpr, c = threadIdx.x - r * cpr;
  const int dr = T / cpr, dc = T - dr * cpr;
  const __nv_bfloat16* g = src + r * ld + c * 8;
  const unsigned base = smem_addr(dst);
  const size_t g_step = dr * ld + dc * 8, g_wrap = ld - size_t(cpr) * 8;  // elements
  while (r < rows) {
    const unsigned d = base + unsigned(c >> 3) * block_bytes + unsigned(r) * 128u + unsigned(((c & 7) ^ (r & 7)) << 4);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(g) : "memory");
    r += dr, c += dc, g += g_step;
    if (c >= cpr) c -= cpr, ++r, g += g_wrap;
  }
}

// in_proj's outputs left of E with the decode step's conv folded in (decode_mma_norm_conv):
// torch: u = F.silu(conv_b + (cat(state, s[:, None]) * conv_w).sum(-1))   per row, channel;
//        state = cat(state[:, 1:], s)
// state (M, 3, E) fp32, conv_w (E, 4), conv_b (E) or null; u also to u16 (M, E) bf16.
constexpr int kConvTaps = 4;
struct ConvEpilogue {
  const float* w;
  const float* b;
  float* state;
  __nv_bfloat16* u16;  // or null (x_proj folded)
  int E;
  // x_proj folded (XProjFold): W_x (P, E) bf16 or null; the partials (E / BN, ldm, P); xoff:
  // the byte offset in dynamic shared memory of W_x's tile columns, then the tile's u
  const __nv_bfloat16* xw;
  float* xpart;
  int P, ldm, xoff;
};
// A decode step's RMSNorm split across two products (kNext, then kPre): out_proj's stores
// (x, the residual stream after the mixer) also write the next in_proj's A, a16 =
// bf16(x * g_next), and each row's sum of x^2 over the block's column tile, ss (tiles, ld);
// in_proj reads a16 as a plain A and scales its rows by rstd = 1 / sqrt(sum of the tiles'
// sums / K + eps), fixed order: no staging of fp32 x, no cluster sum of squares.
struct NormSplit {
  const float* g_next;   // kNext: (N)
  __nv_bfloat16* a16;    // kNext: (M, N) bf16 dense
  float* ss;             // kNext: written, kPre: read; (tiles, ld)
  int tiles, ld;         // kPre: the tiles to sum; both: ss's row stride (the batch)
};
// decode_mma_kernel's epilogue kinds (EPI bits)
constexpr int kNorm = 1, kConv = 2, kPre = 4, kNext = 8;

// The float4 items of a tile's stores that each of the S blocks of a cluster takes: whole rows
// of the tile (row_items float4s a row), so that kNext can sum a row within one block.
__host__ __device__ inline int block_share(int items, int S, int row_items) {
  return ((items + S - 1) / S + row_items - 1) / row_items * row_items;
}
// Four channels' conv, all but the new input's tap done before pdl_wait: the state, the
// weights and the bias are loaded at the kernel's start (issue); once the weight tile's copies
// are issued, each channel's sum bias + w0 s0 + w1 s1 + w2 s2 is formed and the state's shift
// (its rows 1, 2 into rows 0, 1) stored (prepare), so that after the product only p += w3 x,
// SiLU and the new row remain (the same operations in the same order as all at once). Only this kernel
// reads or writes this layer's conv state within a step, and the previous step's kernels have
// ended (the cut in embedding_prenorm_kernel). With the whole conv after the product, its
// arithmetic alone was ~0.33 us of in_proj in the chain at M = 64; split so, H200 m130 decode
// ms a step, B = 16 0.311 -> 0.305, 32 0.356 -> 0.350, 48 0.400 -> 0.395, 64 0.443 -> 0.432
// (prepare after pdl_wait, while A's copies fly, was slower at 16 and 48: NOTES.md, session 16).
struct ConvTaps {
  float4 st[kConvTaps - 1], w[4], b;  // (issue .. prepare)
  float4 pre, w3;                     // (prepare .. step)
  __device__ __forceinline__ void issue(const ConvEpilogue& cv, int m, int gn) {
#pragma unroll
    for (int j = 0; j < kConvTaps - 1; ++j)
      st[j] = *reinterpret_cast<const float4*>(cv.state + (size_t(m) * (kConvTaps - 1) + j) * cv.E + gn);
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = *reinterpret_cast<const float4*>(cv.w + size_t(gn + i) * kConvTaps);
    b = cv.b ? *reinterpret_cast<const float4*>(cv.b + gn) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  __device__ __forceinline__ void prepare(const ConvEpilogue& cv, int m, int gn) {
    const float bias[4] = {b.x, b.y, b.z, b.w};
    const float* t0 = &st[0].x;
    const float* t1 = &st[1].x;
    const float* t2 = &st[2].x;
    float p[4], w3f[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      p[i] = bias[i];
      p[i] += w[i].x * t0[i], p[i] += w[i].y * t1[i], p[i] += w[i].z * t2[i];
      w3f[i] = w[i].w;
    }
    pre = make_float4(p[0], p[1], p[2], p[3]), w3 = make_float4(w3f[0], w3f[1], w3f[2], w3f[3]);
    float* row = cv.state + size_t(m) * (kConvTaps - 1) * cv.E + gn;
    *reinterpret_cast<float4*>(row) = st[1];
    *reinterpret_cast<float4*>(row + cv.E) = st[2];
  }
  // torch: u = F.silu(pre + w3 * s); the state's last row = s
  __device__ __forceinline__ float4 step(const ConvEpilogue& cv, int m, int gn, float4 s) const {
    const float x[4] = {s.x, s.y, s.z, s.w}, pr[4] = {pre.x, pre.y, pre.z, pre.w}, w3f[4] = {w3.x, w3.y, w3.z, w3.w};
    float u[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float p = pr[i];
      p += w3f[i] * x[i];
      u[i] = p * sigmoid_fast(p);
    }
    *reinterpret_cast<float4*>(cv.state + (size_t(m) * (kConvTaps - 1) + 2) * cv.E + gn) = s;
    const float4 uv = make_float4(u[0], u[1], u[2], u[3]);
    if (cv.u16) store4(cv.u16 + size_t(m) * cv.E + gn, uv);
    return uv;
  }
};

// torch: C = A @ W.T + beta * C   A (M, K) bf16 dense, W (N, ldw) bf16, C (M, ldc) fp32.
// Grid (split, ceil(N / BN)), cluster (split, 1, 1) when split > 1: block (s, t) multiplies
// weight rows [BN t, BN t + BN) by the K slice [KS s, KS s + KS). Shared memory: the weight
// tile (BN, KS) and A's slice (M, KS) at row pitch 2 KS + 16 bytes (ldmatrix conflict-free),
// later reused for the partials (WK, M, BN + 4) fp32.
// NORM (norm_gemm's RMSNorm folded in): A = rms_norm(X, g) with X (M, ldx) fp32: the block
// stages bf16(X * g) of its K slice and the rows' sums of squares of the slice (after them in
// shared memory, (M, KS / 4)); the cluster, which covers all of K, sums those in rank order
// and the stores scale each row by its rstd = 1 / sqrt(mean(x^2) + eps) (A's argument unused).
// CONV (with NORM: in_proj of a decode step with the conv folded in, see ConvEpilogue): the
// outputs left of cv.E go through the causal conv with the state and SiLU.
// MT = ceil(M / 16): the 16-row tiles of A, fixed at compile time so that the products
// unroll without guards.
template <int WN, int WK, int MT, int EPI, bool WG>
__global__ void __launch_bounds__(32 * WN * WK, EPI & kConv ? 2 : 1)  // (kConv: <= 128 registers, 2 blocks an SM)
decode_mma_kernel(int M, int N, int K, int KS, const __nv_bfloat16* __restrict__ A,
                  const __nv_bfloat16* __restrict__ W, int ldw, float beta, float* __restrict__ C, int ldc,
                  const float* __restrict__ X, int ldx, const float* __restrict__ g, float eps, int load, int RB,
                  int roff, ConvEpilogue cv, NormSplit ns) {
  constexpr bool NORM = EPI & kNorm, CONV = EPI & kConv, PRE = EPI & kPre, NEXT = EPI & kNext;
  constexpr int BN = 16 * WN, T = 32 * WN * WK, PB = BN + 4;
  const int m0 = blockIdx.z * RB;
  {  // grid z: the block's rows [m0, m0 + RB) of A and C
    M = min(RB, M - m0), C += size_t(m0) * ldc;
    if (NORM) X += size_t(m0) * ldx;
    else A += size_t(m0) * K;
    if (CONV) cv.state += size_t(m0) * (kConvTaps - 1) * cv.E, cv.u16 += cv.u16 ? size_t(m0) * cv.E : 0;
    if (NEXT) ns.a16 += size_t(m0) * N;
  }
  extern __shared__ __align__(128) unsigned char smem_raw[];
  static_assert(!WG || WN % 4 == 0, "wgmma: the warps along N make whole warpgroups");
  // WG: the swizzled tiles' atoms start 1024-aligned (the host adds 1024 bytes)
  unsigned char* const smem = WG ? smem_raw + ((1024u - (smem_addr(smem_raw) & 1023u)) & 1023u) : smem_raw;
  __shared__ __align__(8) uint64_t bars[3];  // the weight's bulk copies, A's, the pushed partials
  // NORM: the rows' sums of squares over the block's slice; NORM, PRE: their rstd
  __shared__ float row_ss[NORM ? kMmaMaxM : 1], row_r[NORM || PRE ? kMmaMaxM : 1];
  const int S = gridDim.x, rank = blockIdx.x;  // cluster (S, 1, 1): the block rank is blockIdx.x
  const int n0 = blockIdx.y * BN, k0 = rank * KS, kl = min(KS, K - k0);
  const int rows = min(BN, N - n0), pitch = 2 * KS + 16;
  const unsigned seg = 2u * unsigned(kl);
  unsigned char* sW = smem;
  // WG: the weight tile (BN, KS) and A's (16 MT, KS) in wgmma's swizzled layout (wgmma.cuh)
  const unsigned w_block = BN * 128u, a_block = 16u * MT * 128u;  // WG: between 64-k blocks
  unsigned char* sA = smem + (WG ? size_t(KS / 64) * w_block : size_t(BN) * pitch);
  // (the warp index through a shuffle: known warp-uniform, so that wgmma's loop below counts
  // as uniform; else ptxas serialises the wgmmas, C7520)
  const int warp = __shfl_sync(0xffffffffu, int(threadIdx.x / 32), 0), lane = threadIdx.x % 32;

  if (threadIdx.x == 0) {
    mbar_init(&bars[0], 1);
    mbar_init(&bars[1], 1);
    mbar_init(&bars[2], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
  __syncthreads();
  // the whole weight tile in flight at once, before waiting on the previous kernel: one bulk
  // copy a row (load & 2: 16-byte cp.async from every thread instead)
  const int cpr = kl / 8;  // 16-byte chunks a row
  // CONV: the conv state and weights of the outputs this thread will store (items i0, i0 + T
  // of this block's share, as below), before the wait: within a step only this kernel writes
  // this layer's conv state, and the previous step's kernels have ended (the cut in
  // embedding_prenorm_kernel)
  // a block's share: whole rows of the tile (NEXT sums each row's squares across its lanes)
  const int items = M * (BN / 4);  // float4s of the tile
  const int per = block_share(items, S, BN / 4);
  const int i0 = rank * per + threadIdx.x, end = min(items, (rank + 1) * per);
  // The split-K partials of this block's share are pushed here by the S blocks (push4, slices
  // in rank order), counted on bars[2]: the owner waits only for its own inputs. (The cluster
  // barrier and pulls through DSMEM before, and the barrier keeping every block until the
  // others had read it, were ~2 us of out_proj's epilogue.) Not with NORM, whose sums of
  // squares go through DSMEM after a cluster barrier.
  const bool push = !NORM && S > 1;
  float4* recv = reinterpret_cast<float4*>(smem + roff);  // (S, per)
  if (push) {
    if (threadIdx.x == 0) mbar_expect_tx(&bars[2], unsigned(S) * unsigned(max(end - rank * per, 0)) * 16u);
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");  // bars[2] initialised (waited before pushing)
  }
  ConvTaps taps[CONV ? 2 : 1];
  if (CONV) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int i = i0 + j * T, m = i / (BN / 4), gn = n0 + (i % (BN / 4)) * 4;
      if (i < end && gn < cv.E) taps[j].issue(cv, m, gn);
    }
  }
  // NEXT: the next norm's weights of the thread's items (a weight: before the wait)
  float4 gnext[NEXT ? 2 : 1];
  if (NEXT) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int i = i0 + j * T, gn = n0 + (i % (BN / 4)) * 4;
      gnext[j] = i < end && gn + 3 < N ? *reinterpret_cast<const float4*>(ns.g_next + gn) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
  // x_proj folded: W_x's columns of this tile (P rows of BN) in flight now, as the weight
  const bool xfold = CONV && cv.xw && n0 < cv.E;  // (uniform over the block)
  const int xpitch = 2 * BN + 16;
  unsigned char* sX = smem + (CONV ? cv.xoff : 0);                 // (16 ceil(P / 16), BN) bf16
  unsigned char* sU = sX + (CONV ? (cv.P + 15) / 16 * 16 : 0) * xpitch;  // the share's u (rows, BN) bf16
  const int m_lo = rank * per / (BN / 4);  // the share's first row
  if (xfold) {
    copy_rows_async<T>(sX, xpitch, cv.xw + n0, cv.E, cv.P, BN / 8);
    cp_async_commit();
  }
  if (load & 2) {
    if (WG) copy_rows_sw128<T>(sW, w_block, W + size_t(n0) * ldw + k0, ldw, rows, cpr);
    else copy_rows_async<T>(sW, pitch, W + size_t(n0) * ldw + k0, ldw, rows, cpr);
    cp_async_commit();
  } else if (warp == 0) {
    if (lane == 0) mbar_expect_tx(&bars[0], unsigned(rows) * seg);
    __syncwarp();
    for (int r = lane; r < rows; r += 32) bulk_copy(sW + r * pitch, W + size_t(n0 + r) * ldw + k0, seg, &bars[0]);
  }
  if (!(load & 4)) pdl_trigger();  // load & 4: the next kernel launched only after our products
  if (CONV) {  // the conv's sums over the state and its shift (after the copies are issued)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int i = i0 + j * T, m = i / (BN / 4), gn = n0 + (i % (BN / 4)) * 4;
      if (i < end && gn < cv.E) taps[j].prepare(cv, m, gn);
    }
  }
  pdl_wait();
  if (NORM) {
    // bf16(x * g) into sA and x . x per float4 into sq, 8 float4 loads a thread in flight
    const int kl4 = kl / 4, total = M * kl4;
    float* sq = reinterpret_cast<float*>(sA + (WG ? size_t(KS / 64) * a_block : size_t((M + 15) / 16 * 16) * pitch));  // (M, kl4)
    for (int base = threadIdx.x; base < total; base += 8 * T) {
      float4 xv[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int i = base + j * T, m = i / kl4, c4 = i % kl4;
        if (i < total) xv[j] = *reinterpret_cast<const float4*>(X + size_t(m) * ldx + k0 + 4 * c4);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int i = base + j * T, m = i / kl4, c4 = i % kl4;
        if (i < total) {
          const float4 x = xv[j], w = *reinterpret_cast<const float4*>(g + k0 + 4 * c4);
          sq[i] = (x.x * x.x + x.y * x.y) + (x.z * x.z + x.w * x.w);
          __nv_bfloat162 h[2] = {__floats2bfloat162_rn(x.x * w.x, x.y * w.y), __floats2bfloat162_rn(x.z * w.z, x.w * w.w)};
          unsigned char* d = WG ? sA + (c4 >> 4) * a_block + m * 128 + ((((c4 >> 1) & 7) ^ (m & 7)) << 4) + (c4 & 1) * 8
                                : sA + m * pitch + c4 * 8;
          *reinterpret_cast<uint2*>(d) = *reinterpret_cast<const uint2*>(h);
        }
      }
    }
    __syncthreads();
    // each row's sum over the slice: lanes in order, then a fixed shuffle tree
    for (int m = warp; m < M; m += WN * WK) {
      float ss = 0.f;
      for (int c = lane; c < kl4; c += 32) ss += sq[m * kl4 + c];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      if (lane == 0) row_ss[m] = ss;
    }
  } else if (load & 1) {  // A (written by the previous kernel) by 16-byte cp.async from every thread
    if (WG) copy_rows_sw128<T>(sA, a_block, A + k0, K, M, cpr);
    else copy_rows_async<T>(sA, pitch, A + k0, K, M, cpr);
    cp_async_commit();
  } else if (warp == (WN * WK > 1 ? 1 : 0)) {  // or one bulk copy a row
    if (lane == 0) mbar_expect_tx(&bars[1], unsigned(M) * seg);
    __syncwarp();
    for (int r = lane; r < M; r += 32) bulk_copy(sA + r * pitch, A + size_t(r) * K + k0, seg, &bars[1]);
  }
  if (PRE) {
    // each row's rstd from the previous product's sums of squares, read while A's copies
    // fly (before them, and a load at a time, they were two and more L2 round trips in a
    // row): 4 lanes a row, each summing the tiles q = p, p + 4, .. with 8 loads in flight,
    // then the 4 lanes' sums by a fixed shuffle tree (every lane gets the same value)
    for (int base = 0; base < 4 * M; base += T) {
      const int idx = base + threadIdx.x, m = idx / 4, p = idx % 4;
      const bool active = idx < 4 * M;
      float ss = 0.f;
      for (int q0 = p; q0 < ns.tiles; q0 += 32) {
        float v[8];
#pragma unroll
        for (int j = 0; j < 8; ++j)
          v[j] = active && q0 + 4 * j < ns.tiles ? ns.ss[size_t(q0 + 4 * j) * ns.ld + m0 + m] : 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) ss += v[j];
      }
      ss += __shfl_xor_sync(0xffffffffu, ss, 1);
      ss += __shfl_xor_sync(0xffffffffu, ss, 2);
      if (active && p == 0) row_r[m] = 1.0f / sqrtf(ss / K + eps);
    }
  }

  // beta != 0 (out_proj's residual): the C elements this thread will store, fetched now,
  // off the critical path (the stores below take items i0, i0 + T, ... of this block's share)
  const bool vec = (ldc % 4 == 0) && (reinterpret_cast<size_t>(C) % 16 == 0);
  float4 cpre[2];
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int i = i0 + j * T, m = i / (BN / 4), gn = n0 + (i % (BN / 4)) * 4;
    cpre[j] = beta != 0.f && vec && i < end && gn + 3 < N
                  ? *reinterpret_cast<const float4*>(C + size_t(m) * ldc + gn)
                  : make_float4(0.f, 0.f, 0.f, 0.f);
  }

  const int wn = warp % WN, wk = warp / WN;
  float acc[2 * MT][4];
#pragma unroll
  for (int j = 0; j < 2 * MT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  // ldmatrix row addresses: W rows 16 wn + (lane & 15), k half lane >> 4; A rows
  // 8 (lane >> 4) + (lane & 7), k half (lane >> 3) & 1 (matrices b0, b1 of tile 2jj, then 2jj + 1)
  const unsigned aw = smem_addr(sW) + (wn * 16 + (lane & 15)) * pitch + (lane >> 4) * 16;
  const unsigned aa = smem_addr(sA) + ((lane >> 4) * 8 + (lane & 7)) * pitch + ((lane >> 3) & 1) * 16;
  const int steps = kl / 16;
  if (!(load & 2)) mbar_wait(&bars[0], 0);
  if (!NORM && !(load & 1)) mbar_wait(&bars[1], 0);
  if (load & 3) {
    cp_async_wait<0>();
    if (WG) fence_proxy_async_smem();  // this thread's copies and stores, to wgmma's reads
    __syncthreads();  // every thread's copies have landed
  }
  // a k16 step's fragments all loaded before its products, the next step's loaded while
  // they run (the asm is volatile: program order is issue order)
  // (the 8-row tiles past M multiply unwritten rows of sA: only outputs never stored)
  // This warp's k16 steps are wk, wk + WK, ...: the fragment addresses advance by adding
  // (computed from the lane per step, they were most of the loop's instructions).
  const int my_steps = steps > wk ? (steps - wk + WK - 1) / WK : 0;
  if constexpr (WG) {
#if BHASA_WGMMA_COMPILED
    // warpgroup (warps 4 q .. 4 q + 3; wn / 4 = q % (WN / 4), wk uniform over it) runs
    // wgmma m64n(16 MT)k16 on its 64 weight rows and all of A's rows for its k16 steps
    // wk, wk + WK, ..: acc is then the same fragments as mma.sync's below (warp w of the
    // warpgroup holds weight rows 16 w .. 16 w + 15, n8 column tile j in acc[j])
    const unsigned wg_w = smem_addr(sW) + unsigned(wn / 4) * 64u * 128u, wg_a = smem_addr(sA);
    fence_operands<8 * MT>(&acc[0][0]);
    wgmma_fence();
    for (int i = 0; i < my_steps; ++i) {
      const int s = wk + i * WK;
      const unsigned kb = unsigned(s & 3) * 32u;
      wgmma_ss<MT>(acc, sw128_desc(wg_w + unsigned(s >> 2) * w_block + kb), sw128_desc(wg_a + unsigned(s >> 2) * a_block + kb));
    }
    wgmma_commit();
    wgmma_wait_all();
    fence_operands<8 * MT>(&acc[0][0]);
#endif
  } else {
    constexpr unsigned kStep = 32u * WK;
    const unsigned tile_bytes = 16u * unsigned(pitch);  // between A's 16-row tiles
    unsigned pw = aw + 32u * wk, pa = aa + 32u * wk;
    auto frags = [&](unsigned (&a)[4], unsigned (&b)[MT][4]) {
      ldmatrix_x4(a, pw);
#pragma unroll
      for (int jj = 0; jj < MT; ++jj) ldmatrix_x4(b[jj], pa + jj * tile_bytes);
      pw += kStep, pa += kStep;
    };
    auto products = [&](const unsigned (&a)[4], const unsigned (&b)[MT][4]) {
#pragma unroll
      for (int jj = 0; jj < MT; ++jj) {
        mma_bf16(acc[2 * jj], a, b[jj][0], b[jj][1]);
        mma_bf16(acc[2 * jj + 1], a, b[jj][2], b[jj][3]);
      }
    };
    unsigned a0[4], b0[MT][4], a1[4], b1[MT][4];
    if (my_steps > 0) frags(a0, b0);
    for (int i = 0; i < my_steps; i += 2) {
      if (i + 1 < my_steps) frags(a1, b1);
      products(a0, b0);
      if (i + 1 >= my_steps) break;
      if (i + 2 < my_steps) frags(a0, b0);
      products(a1, b1);
    }
  }

  if (load & 4) pdl_trigger();
  // partials (WK, M, PB) over the tiles: acc[j] = D rows n (g, g + 8), columns m (2t, 2t + 1)
  __syncthreads();  // every warp is done with sW / sA
  float* part = reinterpret_cast<float*>(smem);
  {
    float* pw = part + size_t(wk) * M * PB;
    const int g = lane >> 2, t = lane & 3, n = wn * 16 + g;
#pragma unroll
    for (int j = 0; j < 2 * MT; ++j) {
      const int m = 8 * j + 2 * t;
      if (m < M) pw[m * PB + n] = acc[j][0], pw[m * PB + n + 8] = acc[j][2];
      if (m + 1 < M) pw[(m + 1) * PB + n] = acc[j][1], pw[(m + 1) * PB + n + 8] = acc[j][3];
    }
  }
  __syncthreads();
  // the WK warp slices summed in this block, in order, into slice 0
  if (WK > 1) {
    for (int i = threadIdx.x; i < items; i += T) {
      const int m = i / (BN / 4), n = (i % (BN / 4)) * 4;
      float4 s = *reinterpret_cast<const float4*>(part + m * PB + n);
#pragma unroll
      for (int w = 1; w < WK; ++w) {
        const float4 v = *reinterpret_cast<const float4*>(part + (size_t(w) * M + m) * PB + n);
        s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
      }
      *reinterpret_cast<float4*>(part + m * PB + n) = s;
    }
  }
  cg::cluster_group cluster = cg::this_cluster();
  if (push) {
    __syncthreads();  // slice 0 complete
    asm volatile("barrier.cluster.wait.aligned;" ::: "memory");  // every block's bars[2] initialised
    // item i goes to its owner q = i / per, into slice `rank` of q's recv
    const unsigned bar = smem_addr(&bars[2]), slot = smem_addr(recv + rank * per);
    for (int i = threadIdx.x; i < items; i += T) {
      const int q = i / per, m = i / (BN / 4), n = (i % (BN / 4)) * 4;
      const float4 v = *reinterpret_cast<const float4*>(part + m * PB + n);
      push4(cluster_addr(slot + unsigned(i - q * per) * 16u, q), v, cluster_addr(bar, q));
    }
    mbar_wait(&bars[2], 0);  // the S slices of our share have landed
  } else if (S > 1) {
    cluster.sync();  // every block's slice 0 is complete and visible to the cluster
  } else {
    __syncthreads();
  }

  if (NORM) {  // rstd of each row from the S slices' sums of squares, in rank order
    for (int m = threadIdx.x; m < M; m += T) {
      float ss = 0.f;
      for (int q = 0; q < S; ++q) ss += S > 1 ? *cluster.map_shared_rank(&row_ss[m], q) : row_ss[m];
      row_r[m] = 1.0f / sqrtf(ss / K + eps);
    }
    __syncthreads();
  }
  // block `rank` sums its share of the tile over the S blocks, in rank order, and stores it:
  // item i, the thread's j-th (j a compile-time constant, so that cpre and taps stay in
  // registers: indexed at run time they went to local memory)
  // Returns the item's sum of squares of the stored values (NEXT), else 0.
  auto store_item = [&](int i, auto jc) -> float {
    constexpr int j = decltype(jc)::value;
    if (i >= end) return 0.f;
    const int m = i / (BN / 4), n = (i % (BN / 4)) * 4, gn = n0 + n;
    if (gn >= N) return 0.f;
    float4 v[8];
#pragma unroll
    for (int q = 0; q < 8; ++q)  // all S loads in flight, then the sum in order
      if (q < S)
        v[q] = push ? recv[q * per + i - rank * per]
                    : *reinterpret_cast<const float4*>((S > 1 ? cluster.map_shared_rank(part, q) : part) + m * PB + n);
    float4 s = v[0];
#pragma unroll
    for (int q = 1; q < 8; ++q)
      if (q < S) s.x += v[q].x, s.y += v[q].y, s.z += v[q].z, s.w += v[q].w;
    if (NORM || PRE) {
      const float r = row_r[m];
      s.x *= r, s.y *= r, s.z *= r, s.w *= r;
    }
    float* c = C + size_t(m) * ldc + gn;
    if constexpr (CONV && j < 2) {  // (served: vec, N % 4 == 0, at most 2 items a thread: tile_problem)
      if (gn < cv.E) {
        const float4 u = taps[j].step(cv, m, gn, s);
        *reinterpret_cast<float4*>(c) = u;
        if (xfold) {
          __nv_bfloat162 h[2] = {__floats2bfloat162_rn(u.x, u.y), __floats2bfloat162_rn(u.z, u.w)};
          *reinterpret_cast<uint2*>(sU + (m - m_lo) * xpitch + n * 2) = *reinterpret_cast<const uint2*>(h);
        }
        return 0.f;
      }
    }
    if (vec && gn + 3 < N) {
      if (beta != 0.f) {
        const float4 o = j < 2 ? cpre[j % 2] : *reinterpret_cast<const float4*>(c);
        s.x += beta * o.x, s.y += beta * o.y, s.z += beta * o.z, s.w += beta * o.w;
      }
      *reinterpret_cast<float4*>(c) = s;
      if constexpr (NEXT) {  // (served: vec, N % 4 == 0)
        const float4 w = gnext[j % 2];
        store4(ns.a16 + size_t(m) * N + gn, make_float4(s.x * w.x, s.y * w.y, s.z * w.z, s.w * w.w));
        return (s.x * s.x + s.y * s.y) + (s.z * s.z + s.w * s.w);
      }
    } else {
      const float r[4] = {s.x, s.y, s.z, s.w};
      for (int e = 0; e < 4 && gn + e < N; ++e) c[e] = beta != 0.f ? r[e] + beta * c[e] : r[e];
    }
    return 0.f;
  };
  // NEXT: item j's row sum over the BN / 4 lanes holding that row (a fixed shuffle tree),
  // stored by the row's first lane; every lane takes part
  auto row_sums = [&](int i, float v) {
#pragma unroll
    for (int o = 1; o < BN / 4; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (i < end && i % (BN / 4) == 0) ns.ss[size_t(blockIdx.y) * ns.ld + m0 + i / (BN / 4)] = v;
  };
  const float ss0 = store_item(i0, std::integral_constant<int, 0>{});
  const float ss1 = store_item(i0 + T, std::integral_constant<int, 1>{});
  if (NEXT) row_sums(i0, ss0), row_sums(i0 + T, ss1);
  for (int i = i0 + 2 * T; i < end; i += T) store_item(i, std::integral_constant<int, 2>{});  // (not NEXT)
  if (xfold) {
    // torch: part[t][rows] = u[rows, tile] @ W_x[:, tile].T   (D^T = W_x u^T: W_x's 16-row tiles
    // as mma's A, the share's u rows as its 8-column B, as the products above)
    cp_async_wait<0>();
    __syncthreads();  // the share's u in sU, W_x's columns landed
    const int SR = min(per / (BN / 4), M - m_lo), mts = (cv.P + 15) / 16, units = mts * ((SR + 15) / 16);
    float* part = cv.xpart + (size_t(blockIdx.y) * cv.ldm + m0 + m_lo) * cv.P;  // (SR, P) of tile blockIdx.y
    for (int unit = warp; unit < units; unit += WN * WK) {
      const int mt = unit % mts, rt = unit / mts;
      const unsigned px = smem_addr(sX) + (mt * 16 + (lane & 15)) * xpitch + (lane >> 4) * 16;
      const unsigned pu = smem_addr(sU) + (rt * 16 + (lane >> 4) * 8 + (lane & 7)) * xpitch + ((lane >> 3) & 1) * 16;
      float d[2][4] = {};
#pragma unroll
      for (int ks = 0; ks < BN / 16; ++ks) {
        unsigned a[4], b[4];
        ldmatrix_x4(a, px + 32 * ks);
        ldmatrix_x4(b, pu + 32 * ks);
        mma_bf16(d[0], a, b[0], b[1]);
        mma_bf16(d[1], a, b[2], b[3]);
      }
      // d[h] = D rows (x_proj outputs) j, j + 8, columns (the share's rows) r, r + 1
      const int j = mt * 16 + (lane >> 2);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = rt * 16 + 8 * h + 2 * (lane & 3);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float* o = part + size_t(r + e) * cv.P;
          if (r + e < SR && j < cv.P) o[j] = d[h][e];
          if (r + e < SR && j + 8 < cv.P) o[j + 8] = d[h][2 + e];
        }
      }
    }
  }
  // no block leaves while another reads its partials (an arrive without release: nothing
  // written since needs ordering, and the release's memory barrier cost ~0.3 us)
  if (S > 1 && !push) asm volatile("barrier.cluster.arrive.relaxed.aligned;\nbarrier.cluster.wait.aligned;" ::: "memory");
}

using Kernel = void (*)(int, int, int, int, const __nv_bfloat16*, const __nv_bfloat16*, int, float, float*, int,
                        const float*, int, const float*, float, int, int, int, ConvEpilogue, NormSplit);

template <int WN, int WK, int EPI, bool WG>
Kernel kernel_rows(int M) {
  switch ((M + 15) / 16) {
    case 1: return decode_mma_kernel<WN, WK, 1, EPI, WG>;
    case 2: return decode_mma_kernel<WN, WK, 2, EPI, WG>;
    case 3: return decode_mma_kernel<WN, WK, 3, EPI, WG>;
    default: return decode_mma_kernel<WN, WK, 4, EPI, WG>;
  }
}
// wg: the products on wgmma (whole warpgroups along N only)
template <int WN, int WK, int EPI>
Kernel kernel_mt(int M, bool wg) {
  if constexpr (WN % 4 == 0)
    if (wg) return kernel_rows<WN, WK, EPI, true>(M);
  return kernel_rows<WN, WK, EPI, false>(M);
}
// The tiles compiled for an epilogue kind: all for the plain and norm-folded products;
// in_proj's (decode_mma_pick's at N >= 256, and the fused mixer's 128 columns) with the
// conv; out_proj's with kNext.
template <int EPI>
Kernel kernel_for(int bn, int wk, int M, bool wg = false) {
  constexpr bool all = EPI == 0 || EPI == kNorm, in_proj = EPI & kConv, out_proj = EPI == kNext;
  switch (bn * 16 + wk) {
    case 16 * 16 + 4: if constexpr (all || out_proj) return kernel_mt<1, 4, EPI>(M, wg); break;
    case 16 * 16 + 8: if constexpr (all || out_proj) return kernel_mt<1, 8, EPI>(M, wg); break;
    case 32 * 16 + 2: if constexpr (all || in_proj || out_proj) return kernel_mt<2, 2, EPI>(M, wg); break;
    case 32 * 16 + 4: if constexpr (all || in_proj || out_proj) return kernel_mt<2, 4, EPI>(M, wg); break;
    case 64 * 16 + 1: if constexpr (all) return kernel_mt<4, 1, EPI>(M, wg); break;
    case 64 * 16 + 2: if constexpr (all || in_proj || out_proj) return kernel_mt<4, 2, EPI>(M, wg); break;
    case 64 * 16 + 4: if constexpr (all) return kernel_mt<4, 4, EPI>(M, wg); break;
    case 128 * 16 + 1: if constexpr (all || in_proj) return kernel_mt<8, 1, EPI>(M, wg); break;
    default: break;
  }
  return nullptr;
}

// K slices of a multiple of 16 (every slice non-empty) and the dynamic shared memory of a tile
struct Layout {
  int KS, S;
  size_t smem;
  int xoff = 0;  // x_proj folded: where its operands start (ConvEpilogue::xoff)
  int roff = 0;  // split-K without the norm: the pushed partials (S, share) float4
};
Layout layout(const MmaTile& t, int M, int K, bool norm, int xP = 0, bool wg = false) {
  const int split = std::clamp(t.split, 1, std::min(8, K / 16));
  Layout l;
  l.KS = (K / 16 + split - 1) / split * 16, l.S = (K + l.KS - 1) / l.KS;
  const int pitch = 2 * l.KS + 16;
  // A's rows rounded up to 16: ldmatrix reads whole 16-row tiles (rows >= M unwritten);
  // norm: then the sums of squares (M, KS / 4)
  // (wg: unpadded, swizzled, from 1024-aligned: the host adds those 1024 bytes at the end)
  const size_t tiles = size_t(t.bn + (M + 15) / 16 * 16) * (wg ? 2 * l.KS : pitch) + (norm ? size_t(M) * (l.KS / 4) * 4 : 0);
  l.smem = std::max(tiles, size_t(t.wk) * M * (t.bn + 4) * 4);
  if (xP > 0) {  // then W_x's tile columns (xP rows, in 16-row tiles) and the block's share of u
    const int share_rows = block_share(M * (t.bn / 4), l.S, t.bn / 4) / (t.bn / 4);
    l.xoff = int((l.smem + 127) / 128 * 128);
    l.smem = l.xoff + size_t((xP + 15) / 16 * 16 + (share_rows + 15) / 16 * 16) * (2 * t.bn + 16);
  }
  if (!norm && l.S > 1) {  // (the kernel's push)
    l.roff = int((l.smem + 127) / 128 * 128);
    l.smem = l.roff + size_t(l.S) * block_share(M * (t.bn / 4), l.S, t.bn / 4) * 16;
  }
  if (wg) l.smem += 1024;
  return l;
}
constexpr size_t kMaxSmem = 226 * 1024;  // the opt-in limit (227 KB) less the static part

MmaTile complete(MmaTile tile, int M, int N, int K) {
  const MmaTile pick = decode_mma_pick(M, N, K);
  if (tile.bn == 0) tile.bn = pick.bn;
  if (tile.split == 0) tile.split = pick.split;
  if (tile.wk == 0) tile.wk = tile.bn == pick.bn ? pick.wk : 8 / (tile.bn / 16);
  if (tile.load < 0) tile.load = pick.load;
  if (tile.rows == 0) tile.rows = pick.rows;
  return tile;
}

// Whether a (completed) tile's products run on wgmma: a warpgroup's 64 weight rows (bn a
// multiple of 64), K slices of whole 128-byte swizzle spans (64 k), both operands by cp.async
// (the copies write the swizzled layout), on a device running sm_90a. Not with load & 8 (a
// tile's choice) nor BHASA_MMA_WGMMA=0 (read once).
bool wgmma_on() {
  static const bool v = [] { const char* s = std::getenv("BHASA_MMA_WGMMA"); return !s || std::atoi(s) != 0; }();
  return v;
}
bool use_wgmma(const MmaTile& t, int RB, int K, bool norm, int xP) {
  if (!wgmma_on() || (t.load & 8) || t.bn % 64 || K % 64 || !(t.load & 2) || !(norm || (t.load & 1))) return false;
  const Layout l = layout(t, RB, K, norm, xP, true);
  return l.KS % 64 == 0 && l.smem <= kMaxSmem && device_runs_sm90a();
}

// Why a (completed) tile cannot run an EPI product of M rows over K, or null: the checks of
// the serves functions and of launch, one place.
// xP > 0: with x_proj folded (W_x's xP rows).
template <int EPI>
const char* tile_problem(const MmaTile& t, int M, int K, int xP = 0) {
  const int RB = t.rows > 0 ? std::min(t.rows, M) : M;  // rows a block
  if (RB > kMmaMaxM) return "more than 64 rows a block";
  if (!kernel_for<EPI>(t.bn, t.wk, RB, false)) return "no kernel compiled for this tile (weight rows, warps along K)";
  if (xP > 128) return "x_proj folded: more than 128 outputs";
  const Layout l = layout(t, RB, K, EPI & kNorm, xP);
  if (l.smem > kMaxSmem) return "the tile needs more shared memory than a block has";
  const int threads = 32 * (t.bn / 16) * t.wk, items = RB * (t.bn / 4);
  if ((EPI & (kConv | kNext)) && block_share(items, l.S, t.bn / 4) > 2 * threads)
    return "the conv and next-norm epilogues take at most 2 outputs a thread";  // (taps, row sums)
  return nullptr;
}

template <int EPI>
void launch(cudaStream_t stream, bool pdl, int M, int N, int K, const void* A, const void* W, int ldw, float beta,
            float* C, int ldc, const float* X, int ldx, const float* g, float eps, MmaTile tile,
            ConvEpilogue cv = {}, const NormSplit& ns = {}) {
  constexpr bool NORM = EPI & kNorm;
  tile = complete(tile, M, N, K);
  const int xP = cv.xw ? cv.P : 0;
  if (const char* why = tile_problem<EPI>(tile, M, K, xP)) throw Error(std::string("decode_mma: ") + why);
  if (xP && cv.E % tile.bn) throw Error("decode_mma: x_proj folded needs E a multiple of the tile's columns");
  const int RB = tile.rows > 0 ? std::min(tile.rows, M) : M;  // rows a block
  const bool wg = use_wgmma(tile, RB, K, NORM, xP);
  Kernel kernel = kernel_for<EPI>(tile.bn, tile.wk, RB, wg);
  const Layout l = layout(tile, RB, K, NORM, xP, wg);
  cv.xoff = l.xoff, cv.ldm = M;
  const int threads = 32 * (tile.bn / 16) * tile.wk;
  static int raised[2][4][8 * 16 + 8 * 16] = {};  // per kernel: the dynamic shared memory allowed so far
  int& allowed = raised[wg][(RB + 15) / 16 - 1][(tile.bn / 16) * 16 + tile.wk];
  if (l.smem > 48 * 1024 && int(l.smem) > allowed) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(l.smem)),
               "decode_mma: cudaFuncSetAttribute");
    allowed = int(l.smem);
  }
  // clusters of the S blocks of a column tile (the K slices)
  launch_clustered(kernel, dim3(l.S, (N + tile.bn - 1) / tile.bn, (M + RB - 1) / RB), dim3(threads), l.smem, stream,
                   pdl, l.S, M, N, K, l.KS, static_cast<const __nv_bfloat16*>(A), static_cast<const __nv_bfloat16*>(W),
                   ldw, beta, C, ldc, X, ldx, g, eps, tile.load, RB, l.roff, cv, ns);
}


}  // namespace

// From the lab (bench/cuda_lab/NOTES.md, dgemm3 runs 1-2): K slices of ~384 where N gives
// enough column tiles, of ~192 for x_proj's 80 columns (4 warps along K there); operands by
// cp.async from every thread (load 3: as fast as or faster than bulk copies at every shape).
// Above 16 rows, blocks of 16 rows (32 for wide outputs at M > 32): each block's serial work
// grows with its rows (lab, M 32: in_proj 5.51 -> 5.28 us, out_proj 4.29 -> 4.03, x_proj 2.64
// -> 2.48; M 64: in_proj 7.76 -> 6.58 at 32 rows, 7.41 at 16; x_proj 3.11 -> 2.82 at 16).
MmaTile decode_mma_pick(int M, int N, int K) {
  MmaTile t;
  t.rows = M <= 16 ? 0 : N <= 128 || M <= 32 ? 16 : 32;
  t.split = std::clamp(N < 256 ? (K + 191) / 192 : (K + 383) / 384, 1, 8);
  t.bn = N >= 16384 ? 128 : N >= 2048 ? 64 : N >= 256 ? 32 : 16;
  t.wk = N < 256 ? 4 : 8 / (t.bn / 16);
  t.load = 3;
  return t;
}

namespace {

// A product of this shape on operands so aligned, with the tile (completed) an EPI kernel can
// run: what each serves function checks, besides its own epilogue's operands.
template <int EPI>
bool serves_as(int M, int N, int K, const void* A, const void* W, int ldw, const MmaTile& tile) {
  return M > 0 && M <= kMmaMaxM && N > 0 && K > 0 && K % 16 == 0 && ldw % 8 == 0 && aligned16(A) &&
         aligned16(W) && !tile_problem<EPI>(complete(tile, M, N, K), M, K);
}
// The conv epilogue's operands, with x_proj folded in when xp says so.
ConvEpilogue conv_epilogue(int E, const float* conv_w, const float* conv_b, float* conv_state, void* u16,
                           const XProjFold* xp) {
  ConvEpilogue cv{conv_w, conv_b, conv_state, static_cast<__nv_bfloat16*>(u16), E};
  if (xp && xp->w) {
    if (!aligned16(xp->w) || !aligned16(xp->part)) throw Error("decode_mma: x_proj folded: operands not 16-byte aligned");
    cv.u16 = nullptr, cv.xw = static_cast<const __nv_bfloat16*>(xp->w), cv.xpart = xp->part, cv.P = xp->P;
  }
  return cv;
}
// in_proj's outputs C (M, 2E) row stride ldc and the conv epilogue's operands (ConvEpilogue)
bool conv_serves(int E, const float* C, int ldc, int d_conv, const float* conv_w, const float* conv_b,
                 const float* conv_state) {
  return d_conv == kConvTaps && E % 4 == 0 && ldc % 4 == 0 && aligned16(C) && aligned16(conv_w) &&
         aligned16(conv_state) && (!conv_b || aligned16(conv_b));
}

}  // namespace

bool decode_mma_serves(int M, int N, int K, const void* A, const void* W, int ldw, MmaTile tile) {
  return serves_as<0>(M, N, K, A, W, ldw, tile);
}

void decode_mma(cudaStream_t stream, bool pdl, int M, int N, int K, const void* A, const void* W, int ldw,
                float beta, float* C, int ldc, MmaTile tile) {
  launch<0>(stream, pdl, M, N, K, A, W, ldw, beta, C, ldc, nullptr, 0, nullptr, 0.f, tile);
}

bool decode_mma_norm_serves(int M, int N, int K, const float* x, int ldx, const float* g, const void* W, int ldw,
                            MmaTile tile) {
  return ldx % 4 == 0 && aligned16(x) && aligned16(g) && serves_as<kNorm>(M, N, K, W, W, ldw, tile);
}

void decode_mma_norm(cudaStream_t stream, bool pdl, int M, int N, int K, const float* x, int ldx, const float* g,
                     float eps, const void* W, int ldw, float* C, int ldc, MmaTile tile) {
  launch<kNorm>(stream, pdl, M, N, K, nullptr, W, ldw, 0.f, C, ldc, x, ldx, g, eps, tile);
}

int decode_mma_xproj_tiles(int M, int E, int K, int P, MmaTile tile) {
  const MmaTile t = complete(tile, M, 2 * E, K);
  if (P <= 0 || E % t.bn || tile_problem<kPre | kConv>(t, M, K, P) || tile_problem<kNorm | kConv>(t, M, K, P))
    return 0;
  return E / t.bn;
}

bool decode_mma_norm_conv_serves(int M, int E, int K, const float* x, int ldx, const float* g, const void* W,
                                 int ldw, const float* C, int ldc, int d_conv, const float* conv_w,
                                 const float* conv_b, const float* conv_state, MmaTile tile) {
  return conv_serves(E, C, ldc, d_conv, conv_w, conv_b, conv_state) && ldx % 4 == 0 && aligned16(x) &&
         aligned16(g) && serves_as<kNorm | kConv>(M, 2 * E, K, W, W, ldw, tile);
}

void decode_mma_norm_conv(cudaStream_t stream, bool pdl, int M, int E, int K, const float* x, int ldx,
                          const float* g, float eps, const void* W, int ldw, float* C, int ldc, const float* conv_w,
                          const float* conv_b, float* conv_state, void* u16, MmaTile tile, const XProjFold* xp) {
  const ConvEpilogue cv = conv_epilogue(E, conv_w, conv_b, conv_state, u16, xp);
  launch<kNorm | kConv>(stream, pdl, M, 2 * E, K, nullptr, W, ldw, 0.f, C, ldc, x, ldx, g, eps, tile, cv);
}

bool decode_mma_next_norm_serves(int M, int N, int K, const void* A, const void* W, int ldw, const float* C, int ldc,
                                 const float* g_next, MmaTile tile) {
  return N % 4 == 0 && ldc % 4 == 0 && aligned16(C) && aligned16(g_next) &&
         serves_as<kNext>(M, N, K, A, W, ldw, tile);
}

int decode_mma_next_norm(cudaStream_t stream, bool pdl, int M, int N, int K, const void* A, const void* W, int ldw,
                         float* C, int ldc, const float* g_next, void* a16, float* ss, MmaTile tile) {
  const MmaTile t = complete(tile, M, N, K);
  const NormSplit ns{g_next, static_cast<__nv_bfloat16*>(a16), ss, 0, M};
  launch<kNext>(stream, pdl, M, N, K, A, W, ldw, 1.f, C, ldc, nullptr, 0, nullptr, 0.f, t, {}, ns);
  return (N + t.bn - 1) / t.bn;
}

bool decode_mma_prenorm_conv_serves(int M, int E, int K, const void* a16, const void* W, int ldw, const float* C,
                                    int ldc, int d_conv, const float* conv_w, const float* conv_b,
                                    const float* conv_state, MmaTile tile) {
  return conv_serves(E, C, ldc, d_conv, conv_w, conv_b, conv_state) &&
         serves_as<kPre | kConv>(M, 2 * E, K, a16, W, ldw, tile);
}

void decode_mma_prenorm_conv(cudaStream_t stream, bool pdl, int M, int E, int K, const void* a16, const float* ss,
                             int tiles, float eps, const void* W, int ldw, float* C, int ldc, const float* conv_w,
                             const float* conv_b, float* conv_state, void* u16, MmaTile tile,
                             const XProjFold* xp) {
  const ConvEpilogue cv = conv_epilogue(E, conv_w, conv_b, conv_state, u16, xp);
  const NormSplit ns{nullptr, nullptr, const_cast<float*>(ss), tiles, M};
  launch<kPre | kConv>(stream, pdl, M, 2 * E, K, a16, W, ldw, 0.f, C, ldc, nullptr, 0, nullptr, eps, tile, cv, ns);
}

}  // namespace bhasa::cuda
