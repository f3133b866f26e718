// The selective-scan backward at chunk == kSub (8, the CUDA backend's chunk); see scan.cu
// for the layout and formulas it shares with scan_backward_kernel.
#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "kernels/cuda/scan_common.cuh"

namespace bhasa::cuda::scan_detail {

namespace {

// The backward at chunk == kSub (the CUDA backend's chunk, CudaBackend::scan_chunk): every
// chunk is one sub-chunk whose start state the forward saved, so there is no replay pass,
// no sub-chunk starts and no cursor; item it is chunk n_chunks-1-it. Same formulas as
// scan_backward_kernel (the torch lines above it), same order of the sums over t and over
// channels; with KL 2 the sums over n group the states as 2 x 8 instead of 4 x 4.
// KL lanes per channel (4 as in scan_backward_kernel, or 2: half the per-(t, e) work
// per state, 64 channels per block); MINB: blocks per SM to fit (4 needs <= 128
// registers and <= 56 KB of shared memory); KEEP_A: keep exp(delta A) of the 8 steps in
// registers instead of computing it again in the reverse walk; BUFS: staging buffers
// (copies run BUFS-1 chunks ahead); RS: steps of per-channel dB/dC held in shared memory
// before the block sums them (fewer: less shared memory, two more barriers per halving);
// PACK: after the transform, each step's per-channel values go to shared memory packed
// as {delta, delta u, dy, u} and {sigmoid, dz factor} (two loads per step in the reverse
// walk instead of five, one in the replay instead of two), over the raw inputs of the
// buffer (an extra barrier), and the block sum reads dB/dC in pairs.
// vec (bits, checked by the host): kVecTE: u, dt, z, dout rows are copied 16 bytes at a
// time (4 channels; E, ldz multiples of 4, aligned pointers); kVecBC: B, C rows and the
// start states 16 bytes at a time (N == NMAX, aligned).
// kVecOut: dz, ddt, du go out 16 bytes at a time (V11; E, ldz multiples of 4, aligned).
// V11 (the 2-lane layout only): dz, ddt and du of the chunk collect in shared memory and
// go out after the walk in coalesced 16-byte stores (no per-step 64-bit address
// arithmetic); dB/dC are stored unscaled (g and h) and the block sum, spread over all
// threads, multiplies by delta u and dy (8 FMULs less per step per lane); softplus and
// sigmoid of dt + bias from one exp.
// kIdx32: every tensor has < 2^31 elements, so V11 indexes with 32-bit offsets (the
// 64-bit index arithmetic was ~170 instructions per staged chunk and thread).
constexpr int kVecTE = 1, kVecBC = 2, kVecOut = 4, kIdx32 = 8, kFast = kVecTE | kVecBC | kIdx32;
template <int KL, int NPL>
struct C8Layout {
  static constexpr int C = kThreads / KL, NMAX = KL * NPL, SC = kSub * C;
  static constexpr int oBC = 0;                      // (kSub, 2*NMAX): B then C
  static constexpr int oDT = oBC + kSub * 2 * NMAX;  // (kSub, C): dt, then softplus(dt + bias)
  static constexpr int oSIG = oDT + SC;              // (kSub, C): sigmoid(dt + bias)
  static constexpr int oU = oSIG + SC;               // (kSub, C)
  static constexpr int oZ = oU + SC;                 // (kSub, C): z, then the dz factor
  static constexpr int oDO = oZ + SC;                // (kSub, C): dout, then dy
  static constexpr int oH = oDO + SC;                // (C, NMAX): the chunk's saved start state
  static constexpr int kBuf = oH + C * NMAX;
  static constexpr int kHalf = C * NMAX + 16;        // dB | dC halves, padded (banks)
  static constexpr int kOutLd = SC + 16;             // V11: dz | ddt | du, padded (banks)
  static constexpr int kBCPer = (kSub * 2 * NMAX + kThreads - 1) / kThreads;
  static constexpr int kChPer = SC / kThreads;
  static_assert(SC % kThreads == 0 && (C * NMAX) % kThreads == 0, "staging split");
  static constexpr size_t bytes(int bufs, int rs, bool v11 = false, bool db = false) {
    return (size_t(bufs) * kBuf + size_t(db ? 2 : 1) * rs * 2 * kHalf + (v11 ? 3 * kOutLd : 0)) * sizeof(float);
  }
};

// DB (V11 only): two sets of RS held rows, used in turn, so one barrier per RS steps
// (after the rows are stored; the block sum of a set ends before the set is stored again,
// two barriers later) instead of two.
// SPLIT: the sums over this lane's states (y, sum_n q A, sum_n g B) in two chains of
// NPL/2 (latency; the order differs from the CPU's, as with KL 2 already).
// SWZ (V11 only): a lane's two 16-byte halves of its dB (and dC) row swap places on
// channels with bit 1 set, so that 8 consecutive lanes' 16-byte stores hit 8 different
// bank groups (lanes are 32 bytes apart: unswizzled, each store was a 2-way conflict).
// TZ: dz's element type (float, or bf16 for a bf16 Operand).
// TA (V11 only, with every vec bit: the host checks, backward_c8_reads_bf16): the element
// type of u, dt, z, dout and ddt, float or bf16. bf16 inputs are staged as they are (a
// 16-byte copy is 8 channels: half the threads copy dt and u, half z and dout) and
// widened in the transform; ddt goes out in 8-byte stores.
// TU (V11 only): du's element type, float or bf16 (a bf16 training plan's d_xs; 8-byte
// stores as ddt's).
template <int KL, int NPL, int MINB, bool KEEP_A, int BUFS, int RS, bool PACK, class TZ, bool V11 = false,
          bool DB = false, bool SPLIT = false, bool SWZ = false, class TA = float, class TU = float>
__global__ void __launch_bounds__(kThreads, MINB)
scan_backward_c8_kernel(int vec, int L, int E, int N, const TA* __restrict__ u, const TA* __restrict__ dt,
                        const float* __restrict__ dt_bias, const float* __restrict__ A_log,
                        const float* __restrict__ Bm, const float* __restrict__ Cm, int ld_bc,
                        const float* __restrict__ Dp, const TA* __restrict__ z, int ldz,
                        const float* __restrict__ chunk_states, const TA* __restrict__ dout,
                        TU* __restrict__ du_out, TA* __restrict__ ddt_out, TZ* __restrict__ dz_out,
                        float* __restrict__ bc_partials,     // (E/C blocks, B, L, 2*NMAX)
                        float* __restrict__ param_partials)  // (B, E, NMAX + 2)
{
  using Lay = C8Layout<KL, NPL>;
  constexpr int NMAX = Lay::NMAX, C = Lay::C;
  static_assert(kSub % RS == 0 && BUFS >= 2 && (KL == 4 || KL == 2), "c8 layout");
  // the packed values (6 per (t, e)) fit over dt, sigmoid, u, z, dout and the start state
  static_assert(!PACK || 6 * Lay::SC <= 5 * Lay::SC + C * NMAX, "c8 packing");
  constexpr bool kPairSum = PACK && RS * NMAX >= kThreads;  // block sum in float2
  // V11's block sum: warp w sums row w / 2 of the held rows, dB (w even) or dC; lane: 4
  // states (lane % 4), channels lane / 4 + 8 m
  static_assert(!V11 || (KL == 2 && PACK && RS == 2 && NMAX == 16 && C == 64 && kThreads == 128), "c8 v11 layout");
  static_assert(!DB || V11, "c8 double-buffered rows");
  static_assert(!SWZ || (V11 && NPL == 8), "c8 swizzled rows");
  constexpr bool kF32 = std::is_same_v<TA, float>;
  static_assert(kF32 || V11, "c8: bf16 inputs in the V11 kernel only");
  static_assert(std::is_same_v<TU, float> || V11, "c8: a bf16 du in the V11 kernel only");
  constexpr int kSet = RS * 2 * Lay::kHalf;  // one set of held rows
  extern __shared__ __align__(16) float smem[];
  float* sred = smem + BUFS * Lay::kBuf;  // (RS, 2, C, NMAX) + padding: dB | dC per channel
  float* sout = sred + (DB ? 2 : 1) * kSet;  // V11: (3, kSub, C) + padding: dz, ddt, du of the chunk

  const int B = gridDim.y;
  const int b = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % 32, k = lane % KL;
  const int c = tid / KL;  // channel within the block
  const int e = blockIdx.x * C + c;
  const bool valid = e < E;
  const int ec = valid ? e : E - 1;
  const int n0 = k * NPL;
  const int n_chunks = (L + kSub - 1) / kSub;

  float A2[NPL], dh[NPL], dal[NPL];
#pragma unroll
  for (int i = 0; i < NPL; ++i) {
    const int n = n0 + i;
    A2[i] = n < N ? -expf(A_log[size_t(ec) * N + n]) * kLog2e : 0.0f;
    dh[i] = 0.0f;
    dal[i] = 0.0f;
  }
  const float Dv = Dp[ec];
  // the channel this thread stages (and transforms) is tid % C
  const int es = min(int(blockIdx.x) * C + tid % C, E - 1);
  const bool es_real = int(blockIdx.x) * C + tid % C < E;
  const float bias_s = dt_bias[es];
  float dD_acc = 0.0f, dbias_acc = 0.0f;

  // Copies chunk ch's inputs (B, C, dt, u, z, dout, its saved start state) into buffer
  // buf; steps past L are zeros (exact no-ops). Always commits a group (empty for ch < 0).
  auto stage = [&](int ch, int buf) {
    if (ch >= 0) {
      float* S = smem + buf * Lay::kBuf;
      const int s0 = ch * kSub, len = min(kSub, L - s0);
      if constexpr (V11) if ((vec & kFast) == kFast) {  // 16-byte copies, 32-bit offsets
        constexpr int kQ = NMAX / 4, kQE = C / 4;
        static_assert(kSub * 2 * kQ <= kThreads && kSub * kQE == kThreads && (C * kQ) % kThreads == 0, "c8 v11 staging");
        if (tid < kSub * 2 * kQ) {  // B, C: (kSub, 2 * NMAX / 4) vectors
          const int tt = tid / (2 * kQ), q = tid % (2 * kQ);
          const bool ok = tt < len;
          const int off = ok ? (b * L + s0 + tt) * ld_bc + (q % kQ) * 4 : 0;
          cp_async16(S + Lay::oBC + 4 * tid, (q < kQ ? Bm : Cm) + off, ok);
        }
#pragma unroll
        for (int j = 0; j < (C * kQ) / kThreads; ++j) {  // start state: (C, NMAX / 4)
          const int i = tid + j * kThreads, ecc = min(int(blockIdx.x) * C + i / kQ, E - 1);
          cp_async16(S + Lay::oH + 4 * i, chunk_states + ((b * n_chunks + ch) * E + ecc) * N + (i % kQ) * 4, true);
        }
        if constexpr (kF32) {
          // u, dt, z, dout: (kSub, C / 4) vectors of 4 channels, one per thread
          const int tt = tid / kQE, e4 = int(blockIdx.x) * C + (tid % kQE) * 4;
          const bool ok = tt < len && e4 < E;
          const int row = b * L + s0 + (ok ? tt : 0), col = ok ? e4 : 0, o = row * E + col;
          cp_async16(S + Lay::oDT + 4 * tid, dt + o, ok);
          cp_async16(S + Lay::oU + 4 * tid, u + o, ok);
          cp_async16(S + Lay::oZ + 4 * tid, z + row * ldz + col, ok);
          cp_async16(S + Lay::oDO + 4 * tid, dout + o, ok);
        } else {
          // bf16: (kSub, C / 8) vectors of 8 channels; threads 0..63 copy dt and u, 64..127 z
          // and dout (each into the first half of its fp32 region)
          constexpr int kQ8 = C / 8;
          static_assert(2 * kSub * kQ8 == kThreads, "c8 v11 bf16 staging");
          const int v = tid % (kSub * kQ8), tt = v / kQ8, e8 = int(blockIdx.x) * C + (v % kQ8) * 8;
          const bool ok = tt < len && e8 < E, lo = tid < kSub * kQ8;
          const int row = b * L + s0 + (ok ? tt : 0), col = ok ? e8 : 0, o = row * E + col;
          TA* s1 = reinterpret_cast<TA*>(S + (lo ? Lay::oDT : Lay::oZ)) + 8 * v;
          TA* s2 = reinterpret_cast<TA*>(S + (lo ? Lay::oU : Lay::oDO)) + 8 * v;
          cp_async16(s1, lo ? dt + o : z + row * ldz + col, ok);
          cp_async16(s2, (lo ? u : dout) + o, ok);
        }
        cp_async_commit();
        return;
      }
      if constexpr (kF32) {  // (bf16 runs the 16-byte path above only: the host checks)
        if (vec & kVecBC) {  // B, C: (kSub, 2 * NMAX / 4) vectors; start state: (C, NMAX / 4)
          constexpr int kQ = NMAX / 4;
#pragma unroll
          for (int j = 0; j < (kSub * 2 * kQ + kThreads - 1) / kThreads; ++j) {
            const int i = tid + j * kThreads, tt = i / (2 * kQ), q = i % (2 * kQ);
            if (i < kSub * 2 * kQ) {
              const bool ok = tt < len;
              const size_t off = ok ? (size_t(b) * L + s0 + tt) * ld_bc + (q % kQ) * 4 : 0;
              cp_async16(S + Lay::oBC + 4 * i, (q < kQ ? Bm : Cm) + off, ok);
            }
          }
#pragma unroll
          for (int j = 0; j < (C * kQ) / kThreads; ++j) {
            const int i = tid + j * kThreads, cc = i / kQ;
            const int ecc = min(int(blockIdx.x) * C + cc, E - 1);
            cp_async16(S + Lay::oH + 4 * i, chunk_states + ((size_t(b) * n_chunks + ch) * E + ecc) * N + (i % kQ) * 4, true);
          }
        }
        if (vec & kVecTE) {  // (kSub, C / 4) vectors of 4 channels; channels past E read zeros
          constexpr int kQ = C / 4;
#pragma unroll
          for (int j = 0; j < (kSub * kQ + kThreads - 1) / kThreads; ++j) {
            const int i = tid + j * kThreads, tt = i / kQ, e4 = int(blockIdx.x) * C + (i % kQ) * 4;
            if (i < kSub * kQ) {
              const bool ok = tt < len && e4 < E;
              const size_t row = size_t(b) * L + s0 + (ok ? tt : 0), col = ok ? e4 : 0;
              cp_async16(S + Lay::oDT + 4 * i, dt + row * E + col, ok);
              cp_async16(S + Lay::oU + 4 * i, u + row * E + col, ok);
              cp_async16(S + Lay::oZ + 4 * i, z + row * ldz + col, ok);
              cp_async16(S + Lay::oDO + 4 * i, dout + row * E + col, ok);
            }
          }
        }
#pragma unroll
        for (int j = 0; j < Lay::kBCPer; ++j) {
          const int i = tid + j * kThreads;
          const int tt = i / (2 * NMAX), kk2 = i % (2 * NMAX), n = kk2 % NMAX;
          if (i < kSub * 2 * NMAX && !(vec & kVecBC)) {
            const bool ok = tt < len && n < N;
            const size_t off = ok ? (size_t(b) * L + s0 + tt) * ld_bc + n : 0;
            cp_async4(S + Lay::oBC + i, (kk2 < NMAX ? Bm : Cm) + off, ok);
          }
        }
#pragma unroll
        for (int j = 0; j < Lay::kChPer; ++j) {
          if (vec & kVecTE) break;
          const int i = tid + j * kThreads, tt = i / C;
          const bool ok = tt < len, real = ok && es_real;
          const size_t row = size_t(b) * L + s0 + (ok ? tt : 0);
          cp_async4(S + Lay::oDT + i, dt + row * E + es, ok);
          cp_async4(S + Lay::oU + i, u + row * E + es, real);
          cp_async4(S + Lay::oZ + i, z + row * ldz + es, ok);
          cp_async4(S + Lay::oDO + i, dout + row * E + es, real);
        }
#pragma unroll
        for (int j = 0; j < (C * NMAX) / kThreads; ++j) {
          if (vec & kVecBC) break;
          const int i = tid + j * kThreads, cc = i / NMAX, n = i % NMAX;
          const int ecc = min(int(blockIdx.x) * C + cc, E - 1);
          const bool ok = n < N;
          const size_t off = ok ? ((size_t(b) * n_chunks + ch) * E + ecc) * N + n : 0;
          cp_async4(S + Lay::oH + i, chunk_states + off, ok);
        }
      }
    }
    cp_async_commit();
  };
  const float* Scur = smem;  // V11's block sum: the item's buffer (its packed delta u, dy)
  // the block's sum over its C channels of dB/dC rows lo .. lo+RS-1 of the chunk at s0,
  // in channel order: one partial per (block, row)
  auto block_sum = [&](int s0, int len, int lo) {
    if constexpr (V11) {
      // dB[t, n] = sum_c g[c, n] (delta u)[c], dC[t, n] = sum_c h[c, n] dy[c]: per lane 8
      // channels (4 states, float4), then a reduce-scatter over the 8 lanes (fixed order)
      const int w = tid / 32, r = w >> 1, half = w & 1, nq = lane & 3, j = lane >> 2;
      const int q4 = SWZ ? (nq & 2) + ((nq & 1) ^ ((j >> 1) & 1)) : nq;  // cc = j + 8 m: bit 1 of cc is j's
      const float* p = sred + (DB ? (lo / RS) % 2 * kSet : 0) + r * 2 * Lay::kHalf + half * Lay::kHalf + j * NMAX + q4 * 4;
      const float* sc = Scur + Lay::oDT + ((lo + r) * C + j) * 4 + 1 + half;  // P4 .y / .z
      float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int m = 0; m < C / 8; ++m) {
        const float4 x = *reinterpret_cast<const float4*>(p + m * 8 * NMAX);
        const float f = sc[m * 8 * 4];
        v[0] = fmaf(x.x, f, v[0]);
        v[1] = fmaf(x.y, f, v[1]);
        v[2] = fmaf(x.z, f, v[2]);
        v[3] = fmaf(x.w, f, v[3]);
      }
      int first = 0;
      reduce_scatter<16, 4, 4, 4>(v, lane, first);
      if ((lane & 4) == 0 && lo + r < len)
        bc_partials[((size_t(blockIdx.x) * B + b) * L + s0 + lo + r) * (2 * NMAX) + half * NMAX + nq * 4 + first] = v[0];
    } else if constexpr (kPairSum) {
      for (int i = tid; i < RS * NMAX; i += kThreads) {
        const int r = i / NMAX, kk2 = 2 * (i % NMAX);
        if (lo + r >= len) continue;
        const float* p = sred + r * 2 * Lay::kHalf + (kk2 / NMAX) * Lay::kHalf + kk2 % NMAX;
        float2 sum = make_float2(0.0f, 0.0f);
#pragma unroll
        for (int cc = 0; cc < C; ++cc) {
          const float2 x = *reinterpret_cast<const float2*>(p + cc * NMAX);
          sum.x += x.x;
          sum.y += x.y;
        }
        *reinterpret_cast<float2*>(bc_partials + ((size_t(blockIdx.x) * B + b) * L + s0 + lo + r) * (2 * NMAX) + kk2) = sum;
      }
    } else {
      for (int i = tid; i < RS * 2 * NMAX; i += kThreads) {
        const int r = i / (2 * NMAX), kk2 = i % (2 * NMAX);
        if (lo + r >= len) continue;
        const float* p = sred + r * 2 * Lay::kHalf + (kk2 / NMAX) * Lay::kHalf + kk2 % NMAX;
        float sum = 0.0f;
#pragma unroll
        for (int cc = 0; cc < C; ++cc) sum += p[cc * NMAX];
        bc_partials[((size_t(blockIdx.x) * B + b) * L + s0 + lo + r) * (2 * NMAX) + kk2] = sum;
      }
    }
  };

#pragma unroll
  for (int p = 0; p < BUFS - 1; ++p) stage(n_chunks - 1 - p, p);
  for (int it = 0; it < n_chunks; ++it) {
    float* S = smem + (it % BUFS) * Lay::kBuf;
    Scur = S;
    const int ch = n_chunks - 1 - it, s0 = ch * kSub, len = min(kSub, L - s0);
    cp_async_wait<BUFS - 2>();  // this item's copies landed
    __syncthreads();            // ... for every thread; the previous item is finished
    float h_start[NPL];  // h before the chunk
    float4* P4 = reinterpret_cast<float4*>(S + Lay::oDT);                // (kSub, C): delta, delta u, dy, u
    float2* P2 = reinterpret_cast<float2*>(S + Lay::oDT + 4 * Lay::SC);  // (kSub, C): sigmoid, dz factor
    // the staged u, dt, z, dout (fp32, or bf16 in the first half of their regions)
    auto in = [&](int off, int i) { return to_float(reinterpret_cast<const TA*>(S + off)[i]); };
    if constexpr (PACK) {
      load_states<NPL>(S + Lay::oH + c * NMAX + n0, h_start);
      float4 p4[Lay::kChPer];
      float2 p2[Lay::kChPer];
#pragma unroll
      for (int j = 0; j < Lay::kChPer; ++j) {
        const int i = tid + j * kThreads;
        const bool ok = i / C < len;
        const float x = in(Lay::oDT, i) + bias_s, uu = in(Lay::oU, i);
        float delta, sx;
        if constexpr (V11) {
          delta = softplus_sigmoid(x, sx);
        } else {
          delta = softplusf_(x);
          sx = sigmoid_fast(x);
        }
        delta = ok ? delta : 0.0f;
        const float zz = in(Lay::oZ, i), go = in(Lay::oDO, i), sz = sigmoid_fast(zz);
        p4[j] = make_float4(delta, delta * uu, go * zz * sz, uu);
        p2[j] = make_float2(ok ? sx : 0.0f, go * sz * (1.0f + zz * (1.0f - sz)));
      }
      __syncthreads();  // every raw input was read
#pragma unroll
      for (int j = 0; j < Lay::kChPer; ++j) {
        P4[tid + j * kThreads] = p4[j];
        P2[tid + j * kThreads] = p2[j];
      }
    } else {
      // Per (t, e) once: dt -> softplus(dt + bias) in place and sigmoid(dt + bias) (0 past
      // the end); z, dout -> the dz factor and dy.
#pragma unroll
      for (int j = 0; j < Lay::kChPer; ++j) {
        const int i = tid + j * kThreads;
        const bool ok = i / C < len;
        const float x = S[Lay::oDT + i] + bias_s;
        float sx;
        const float delta = softplus_sigmoid(x, sx);
        S[Lay::oDT + i] = ok ? delta : 0.0f;
        S[Lay::oSIG + i] = ok ? sx : 0.0f;
        const float zz = S[Lay::oZ + i], go = S[Lay::oDO + i], s = sigmoid_fast(zz);
        S[Lay::oZ + i] = go * s * (1.0f + zz * (1.0f - s));  // dz = (y + D u) * this
        S[Lay::oDO + i] = go * zz * s;                        // dy
      }
    }
    stage(ch - (BUFS - 1), (it + BUFS - 1) % BUFS);  // the previous item's buffer
    __syncthreads();
    const float* sBC = S + Lay::oBC;
    const float* sdelta = S + Lay::oDT;
    const float* su = S + Lay::oU;
    const float* ssig = S + Lay::oSIG;
    const float* sdzf = S + Lay::oZ;  // dout * silu'(z)
    const float* sdy = S + Lay::oDO;  // dout * silu(z)
    const size_t row0 = size_t(b) * L + s0;
    // KL 4: lane 0 of a group writes dz, lane 1 ddt, lane 2 du; KL 2: lane 0 dz and du,
    // lane 1 ddt (row s0 + ii: dst.store(ii, .), dst2[ii * E])
    // (TA, TU are float but in V11, which does not use dst, dst2)
    const LaneOut<TZ> dst(k == 0, dz_out + row0 * ldz + e, ldz,
                          (k == 1 ? reinterpret_cast<float*>(ddt_out) : reinterpret_cast<float*>(du_out)) + row0 * E + e, E);
    float* dst2 = reinterpret_cast<float*>(du_out) + row0 * E + e;
    // replay the chunk keeping every step's state (and decay) in registers, then walk it
    // backwards carrying dh
    float hs[kSub][NPL], as[KEEP_A ? kSub : 1][NPL];
    if constexpr (!PACK) load_states<NPL>(S + Lay::oH + c * NMAX + n0, h_start);
#pragma unroll
    for (int ii = 0; ii < kSub; ++ii) {
      float delta, dlu;
      if constexpr (PACK) {
        const float2 dd = *reinterpret_cast<const float2*>(&P4[ii * C + c]);
        delta = dd.x;
        dlu = dd.y;
      } else {
        delta = sdelta[ii * C + c];
        dlu = delta * su[ii * C + c];
      }
      float Bt[NPL];
      load_states<NPL>(sBC + ii * 2 * NMAX + n0, Bt);
#pragma unroll
      for (int i = 0; i < NPL; ++i) {
        const float a = ex2_(delta * A2[i]);
        if constexpr (KEEP_A) as[ii][i] = a;
        hs[ii][i] = a * (ii > 0 ? hs[ii - 1][i] : h_start[i]) + dlu * Bt[i];
      }
    }
#pragma unroll
    for (int ii = kSub - 1; ii >= 0; --ii) {
      float uu, delta, sig, dlu, dy, dzf;
      if constexpr (PACK) {
        const float4 p4 = P4[ii * C + c];
        const float2 p2 = P2[ii * C + c];
        delta = p4.x, dlu = p4.y, dy = p4.z, uu = p4.w, sig = p2.x, dzf = p2.y;
      } else {
        uu = su[ii * C + c], delta = sdelta[ii * C + c], sig = ssig[ii * C + c];
        dlu = delta * uu;
        dy = sdy[ii * C + c];
        dzf = sdzf[ii * C + c];
      }
      float Bt[NPL], Ct[NPL];
      load_states<NPL>(sBC + ii * 2 * NMAX + n0, Bt);
      load_states<NPL>(sBC + ii * 2 * NMAX + NMAX + n0, Ct);
      dD_acc += dy * uu;
      float ypart = 0.0f, qA = 0.0f, gB = 0.0f, ypart1 = 0.0f, qA1 = 0.0f, gB1 = 0.0f;
      float v[2 * NPL];  // [dB | dC] of this channel, for this lane's states
#pragma unroll
      for (int i = 0; i < NPL; ++i) {
        const float a = KEEP_A ? as[KEEP_A ? ii : 0][i] : ex2_(delta * A2[i]);
        const float hprev = ii > 0 ? hs[ii - 1][i] : h_start[i];
        const bool odd = SPLIT && i % 2 == 1;
        (odd ? ypart1 : ypart) += Ct[i] * hs[ii][i];
        const float g = dh[i] + dy * Ct[i];
        const float q = g * a * hprev;
        (odd ? qA1 : qA) += q * A2[i];
        (odd ? gB1 : gB) += g * Bt[i];
        dal[i] += q * delta;
        dh[i] = g * a;
        v[i] = V11 ? g : g * dlu;                      // V11: scaled in the block sum
        v[NPL + i] = V11 ? hs[ii][i] : dy * hs[ii][i];
      }
      if constexpr (SPLIT) {
        ypart += ypart1;
        qA += qA1;
        gB += gB1;
      }
      if constexpr (KL == 4) {
        // over the group: lane 0 gets y (-> dz), lane 1 ddelta (-> ddt), lane 2 sum_n g B (-> du)
        float r[kLanes] = {ypart, qA * kLn2 + gB * uu, gB, 0.0f};
        const float red = group_sum_scatter(r, lane);
        if (k == 1) dbias_acc += red * sig;  // sig = 0 past the end
        if (valid && ii < len && k < 3)  // one store per lane: dz, ddt or du
          dst.store(ii, k == 0 ? (red + Dv * uu) * dzf : (k == 1 ? red * sig : red * delta + dy * Dv));
      } else {
        // over the pair: lane 0 gets y (-> dz) and sum_n g B (-> du), lane 1 ddelta (-> ddt)
        float r[4] = {ypart, gB, qA * kLn2 + gB * uu, 0.0f};
        int first = 0;
        reduce_scatter<1, 1, 4, 4>(r, lane, first);
        if (k == 1) dbias_acc += r[0] * sig;  // sig = 0 past the end
        if constexpr (V11) {  // lane 0: dz, du; lane 1: ddt (out after the walk)
          sout[k * Lay::kOutLd + ii * C + c] = k == 0 ? (r[0] + Dv * uu) * dzf : r[0] * sig;
          if (k == 0) sout[2 * Lay::kOutLd + ii * C + c] = r[1] * delta + dy * Dv;
        } else if (valid && ii < len) {
          dst.store(ii, k == 0 ? (r[0] + Dv * uu) * dzf : r[0] * sig);
          if (k == 0) dst2[ii * E] = r[1] * delta + dy * Dv;
        }
      }
      // dB, dC of this channel; summed over the block's channels below
      float* sr = sred + (DB ? (ii / RS) % 2 * kSet : 0) + (ii % RS) * 2 * Lay::kHalf + c * NMAX + n0;
      if constexpr (SWZ) {
        const int sw = 4 * ((c >> 1) & 1);
        *reinterpret_cast<float4*>(sr + sw) = make_float4(v[0], v[1], v[2], v[3]);
        *reinterpret_cast<float4*>(sr + 4 - sw) = make_float4(v[4], v[5], v[6], v[7]);
        *reinterpret_cast<float4*>(sr + Lay::kHalf + sw) = make_float4(v[8], v[9], v[10], v[11]);
        *reinterpret_cast<float4*>(sr + Lay::kHalf + 4 - sw) = make_float4(v[12], v[13], v[14], v[15]);
      } else {
        store_states<NPL>(sr, v);
        store_states<NPL>(sr + Lay::kHalf, v + NPL);
      }
      if constexpr (DB) {
        if (ii % RS == 0) {  // the held rows are complete: sum them
          __syncthreads();
          block_sum(s0, len, ii);
        }
      } else if (ii % RS == 0 && ii > 0) {  // the held rows are complete: sum them, then reuse the space
        __syncthreads();
        block_sum(s0, len, ii);
        __syncthreads();
      }
    }
    if constexpr (!DB) {
      __syncthreads();
      block_sum(s0, len, 0);
    }
    if constexpr (V11) {  // the chunk's dz, ddt, du rows, (kSub, C) each
      if (vec & kVecOut) {
        constexpr int kQ = C / 4;
        static_assert(kSub * kQ == kThreads, "one float4 per thread and output");
        const int tt = tid / kQ, e4 = int(blockIdx.x) * C + (tid % kQ) * 4;
        if (tt < len && e4 < E) {
          const float4* so = reinterpret_cast<const float4*>(sout) + tid;
          auto put = [&](auto row) {
            store4(dz_out + row * ldz + e4, so[0]);  // fp32 or bf16
            store4(ddt_out + row * E + e4, so[Lay::kOutLd / 4]);  // fp32 or bf16
            store4(du_out + row * E + e4, so[Lay::kOutLd / 2]);  // fp32 or bf16
          };
          if (vec & kIdx32) put(b * L + s0 + tt);
          else put(size_t(b) * L + s0 + tt);
        }
      } else {  // (rare: unaligned or E % 4 != 0) one float at a time, not unrolled (registers)
#pragma unroll 1
        for (int i = tid; i < 3 * Lay::SC; i += kThreads) {
          const int a = i / Lay::SC, tt = (i % Lay::SC) / C, cc = i % C;
          const int eo = int(blockIdx.x) * C + cc;
          if (tt < len && eo < E) {
            const size_t row = size_t(b) * L + s0 + tt;
            const float v = sout[a * Lay::kOutLd + i % Lay::SC];
            if (a == 0) dz_out[row * ldz + eo] = from_float<TZ>(v);
            else if (a == 1) ddt_out[row * E + eo] = from_float<TA>(v);
            else du_out[row * E + eo] = from_float<TU>(v);
          }
        }
      }
    }
    // the next item's first barrier keeps its writes to sred (and sout) after these reads
  }
  if (valid) {
    float* pp = param_partials + (size_t(b) * E + e) * (NMAX + 2);
#pragma unroll
    for (int i = 0; i < NPL; ++i) pp[n0 + i] = dal[i] * A2[i] * kLn2;  // times A = A2 ln2
    if (k == 0) pp[NMAX] = dD_acc;
    if (k == 1) pp[NMAX + 1] = dbias_acc;
  }
}


// The vec bits (kVecTE ...) for these pointers; el: channels per 16-byte copy of u, dt,
// z, dout (4 fp32, 8 bf16).
int c8_vec(bool vec_ok, int npl, dim3 grid, int L, int E, int N, int el, const void* u, const void* dt,
           const float* Bm, const float* Cm, int ld_bc, const void* z, int ldz, const float* chunk_states,
           const void* dout, const void* du, const void* ddt, const void* dz) {
  auto al = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  const int NMAX = npl == 4 ? 16 : kLanes * npl;  // the layout's states per channel (KL * NPL)
  int vec = !vec_ok ? 0
                    : ((E % el == 0 && ldz % el == 0 && al(u) && al(dt) && al(z) && al(dout) ? kVecTE : 0) |
                       (npl % 4 == 0 && N == NMAX && ld_bc % 4 == 0 && al(Bm) && al(Cm) && al(chunk_states) ? kVecBC : 0) |
                       (E % 4 == 0 && ldz % 4 == 0 && al(dz) && al(ddt) && al(du) ? kVecOut : 0));
  const size_t rows = size_t(grid.y) * L, lim = size_t(1) << 31;
  const bool idx32 = rows * std::max(E, ldz) < lim && rows * ld_bc < lim &&
                     size_t(grid.y) * ((L + kSub - 1) / kSub) * E * N < lim;
  return vec | (idx32 ? kIdx32 : 0);
}

template <int KL, int NPL, int MINB, bool KEEP_A, int BUFS, int RS, bool PACK, bool VEC, class TZ, bool V11 = false,
          bool DB = false, bool SPLIT = false, bool SWZ = false, class TA = float, class TU = float>
void launch_c8(Ctx& c, dim3 grid, int L, int E, int N, const TA* u, const TA* dt,
               const float* dt_bias, const float* A_log, const float* Bm, const float* Cm, int ld_bc,
               const float* D, const TA* z, int ldz, const float* chunk_states, const TA* dout,
               TU* du, TA* ddt, TZ* dz, float* bc_part, float* param_part) {
  constexpr size_t bytes = C8Layout<KL, NPL>::bytes(BUFS, RS, V11, DB);
  auto* kernel = scan_backward_c8_kernel<KL, NPL, MINB, KEEP_A, BUFS, RS, PACK, TZ, V11, DB, SPLIT, SWZ, TA, TU>;
  static bool attr_set = false;  // per template instance
  if (!attr_set) {
    BHASA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    attr_set = true;
  }
  // 16-byte copies where every row lines up (VEC; otherwise 4-byte copies)
  static_assert(KL * NPL == 16 || KL == kLanes, "c8_vec's NMAX");
  const int vec = c8_vec(VEC, KL * NPL / kLanes, grid, L, E, N, 16 / sizeof(TA), u, dt, Bm, Cm, ld_bc, z, ldz,
                         chunk_states, dout, du, ddt, dz);
  if constexpr (!std::is_same_v<TA, float>)
    check((vec & (kFast | kVecOut)) == (kFast | kVecOut), "scan_backward: bf16 inputs need the 16-byte copies");
  kernel<<<grid, kThreads, bytes, c.stream>>>(vec, L, E, N, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz,
                                              chunk_states, dout, du, ddt, dz, bc_part, param_part);
}


}  // namespace

// BHASA_SCAN_BWD_VARIANT=10: v10 (timing). Read at every launch, so that one process can
// time the variants side by side (bench/cuda_lab/scan_bwd.cpp).
static bool bwd_v10() {
  const char* v = std::getenv("BHASA_SCAN_BWD_VARIANT");
  return v && std::atoi(v) == 10;
}

bool backward_c8_reads_bf16(int npl, dim3 grid, int L, int E, int N, ConstOperand u, ConstOperand dt,
                            const float* Bm, const float* Cm, int ld_bc, ConstOperand z, int ldz,
                            const float* chunk_states, ConstOperand dout, Operand du, Operand ddt, Operand dz) {
  const auto bf = Dtype::bf16;
  if (npl != 4 || bwd_v10() || u.dtype != bf || dt.dtype != bf || z.dtype != bf || dout.dtype != bf || ddt.dtype != bf)
    return false;
  const int vec = c8_vec(true, npl, grid, L, E, N, 8, u.p, dt.p, Bm, Cm, ld_bc, z.p, ldz, chunk_states, dout.p,
                         du.p, ddt.p, dz.p);
  return (vec & (kFast | kVecOut)) == (kFast | kVecOut);
}

void launch_backward_c8(Ctx& c, int npl, dim3 grid, int L, int E, int N, ConstOperand u_, ConstOperand dt_,
                        const float* dt_bias, const float* A_log, const float* Bm, const float* Cm, int ld_bc,
                        const float* D, ConstOperand z_, int ldz, const float* chunk_states, ConstOperand dout_,
                        Operand du_, Operand ddt_, Operand dz, float* bc_part, float* param_part) {
#define BHASA_C8(KL, NP, MINB, KEEP_A, BUFS, RS, PACK, VEC, ...)                                                    \
  static_assert(C8Layout<KL, NP>::C == c8_channels(NP * KL / kLanes), "c8 blocks");                               \
  launch_c8<KL, NP, MINB, KEEP_A, BUFS, RS, PACK, VEC, TZ, ##__VA_ARGS__>(c, grid, L, E, N, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, \
                                                       ldz, chunk_states, dout, du, ddt, d, bc_part, param_part)
  // measured variants (bench/cuda_lab/NOTES.md, v9-v10): 2 lanes per channel with the
  // packed per-step values and 16-byte copies ran 1.65 ms, 4 lanes at 4 blocks/SM 1.93
  if (u_.dtype == Dtype::bf16) {  // the V11 kernel on bf16 u, dt, z, dout, ddt; du fp32 or bf16
    check(backward_c8_reads_bf16(npl, grid, L, E, N, u_, dt_, Bm, Cm, ld_bc, z_, ldz, chunk_states, dout_, du_, ddt_, dz),
          "scan_backward: the chunk-8 kernel reads u, dt, z, dout (and writes ddt) all fp32 or all bf16 (aligned)");
    using T = __nv_bfloat16;
    const T *u = static_cast<const T*>(u_.p), *dt = static_cast<const T*>(dt_.p), *z = static_cast<const T*>(z_.p),
            *dout = static_cast<const T*>(dout_.p);
    T* ddt = static_cast<T*>(ddt_.p);
    with_operand(du_, [&](auto* du) {
      using TU = std::remove_pointer_t<decltype(du)>;
      with_operand(dz, [&](auto* d) {
        using TZ = std::remove_pointer_t<decltype(d)>;
        BHASA_C8(2, 8, 3, false, 2, 2, true, true, true, true, true, true, T, TU);
      });
    });
    return;
  }
  const float *u = u_.f32(), *dt = dt_.f32(), *z = z_.f32(), *dout = dout_.f32();
  float *ddt = ddt_.f32(), *du = du_.f32();
  with_operand(dz, [&](auto* d) {
    using TZ = std::remove_pointer_t<decltype(d)>;
    switch (npl) {  // states per lane of the 4-lane layout (N <= 4 * npl)
      case 1: { BHASA_C8(4, 1, 3, true, 3, 8, false, false); break; }
      case 2: { BHASA_C8(4, 2, 3, true, 3, 8, false, false); break; }
      case 4: {
        // BHASA_SCAN_BWD_VARIANT=10: v10 (timing). Default: V11 + 2 buffers + DB + SPLIT + SWZ,
        // 1.33 ms here against v10's 1.63 (bench/cuda_lab/NOTES.md has the other combinations)
        if (bwd_v10()) { BHASA_C8(2, 8, 3, false, 3, 2, true, true); }
        else { BHASA_C8(2, 8, 3, false, 2, 2, true, true, true, true, true, true); }
        break;
      }
      default: { BHASA_C8(4, 8, 3, false, 3, 8, false, false); break; }
    }
  });
#undef BHASA_C8
}

}  // namespace bhasa::cuda::scan_detail
