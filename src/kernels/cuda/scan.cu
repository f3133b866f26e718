// The selective scan (Mamba's S6 recurrence), chunked exactly like the CPU one: the
// forward pass saves the state at the start of each chunk, the backward pass
// recomputes the states inside a chunk from it. The state stays fp32.
//
// Layout. A group of kLanes = 4 consecutive lanes owns one (b, e) channel; lane k of
// the group keeps states n = k*NPL .. k*NPL + NPL - 1 in registers (templated on NPL,
// states per lane; padding states have A = B = C = 0 and stay 0). A block of 128
// threads is 32 channels, so B*E*4 threads keep the chip busy (one thread per channel
// left it latency-bound at ~6 warps per SM). Sums over n (y, ddelta, du) are warp
// shuffles inside the group; B[t, :] and C[t, :] are the same for the whole block and
// are staged in shared memory.
//
// Inputs reach the compute loops through shared memory only: cp.async copies them a
// tile (forward, 32 steps) or two sub-chunks (backward) ahead, so no step waits on
// device memory; per-(t, e) functions (softplus, sigmoid) are computed once there.
//
// Backward, per chunk (walked last to first): (1) replay the chunk from its saved
// start state, keeping the state at every sub-chunk start (kSub steps) in shared
// memory; (2) for each sub-chunk, last first, replay it keeping every step's state and
// decay exp(delta A) in registers (fully unrolled), then walk it backwards carrying dh:
// two exps per (t, e, n) in all. dB and dC sum over channels: every lane puts its
// channel's values in shared memory and the block adds its 32 channels in order, one
// partial per block that a second kernel adds in block order (deterministic, no
// atomics). dA_log, dD and ddt_bias sum over b: per-(b, e) partials, added in b order.
//
// At chunk 8 (= kSub, the CUDA backend's chunk) both passes have their own kernels: the
// forward stores the state at compile-time-known steps, and the backward has no replay
// pass, so for N <= 16 it runs 2 lanes per channel (8 states each: the per-(t, e) work
// of loads, sums and stores is shared by half as many lanes) with the per-step values
// packed in shared memory and 16-byte staging copies (scan_backward_c8_kernel).
#include <cstdlib>

#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kLanes = 4;                      // lanes per channel
constexpr int kThreads = 128;                  // threads per block (both passes)
constexpr int kChannels = kThreads / kLanes;   // channels per block
constexpr int kFwdTile = 32;  // time steps of B, C staged per forward tile
// Blocks per SM the forward must fit: 6 x 4 warps x 132 SMs holds the whole (16, 1536)
// grid in one wave (at 4 blocks per SM it ran in 1.45 waves: 1.84 ms instead of 1.39).
constexpr int kFwdMinBlocks = 6;
constexpr int kSub = 8;       // backward sub-chunk: steps replayed in registers
constexpr int kBwdBufs = 3;   // backward staging buffers: copies run 2 sub-chunks ahead
constexpr int kBwdMinBlocks = 3;
static_assert(kFwdTile % kLanes == 0 && kChannels == 32, "tile sizes");

// 2^x on the special-function unit, denormal results flushed to 0 (exp2f adds a
// denormal range fix-up, ~3 instructions per decay; a decay under 2^-126 contributes
// nothing anyway).
__device__ __forceinline__ float ex2_(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// sigmoid(x) = 1 / (1 + exp(-x)) with the approximate divide (2 ulp; sigmoidf_'s IEEE
// divide costs ~10 instructions more).
__device__ __forceinline__ float sigmoid_fast(float x) { return __fdividef(1.0f, 1.0f + ex2_(-x * kLog2e)); }

// Index of (step r, channel c) in a (kFwdTile, 32) shared tile, columns XOR-swizzled by
// r % 4 so that 4 consecutive steps of 8 channels (one warp's epilogue reads) hit 32 banks.
__device__ __forceinline__ int swz(int r, int c) { return r * kChannels + (c ^ ((r & 3) << 3)); }

// cp.async: a 4-byte copy global -> shared that bypasses registers; ok = false writes 0.
__device__ __forceinline__ void cp_async4(float* dst, const float* src, bool ok) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 4 : 0)
               : "memory");
}
// cp.async of 16 bytes (both addresses 16-byte aligned); ok = false writes zeros.
__device__ __forceinline__ void cp_async16(float* dst, const float* src, bool ok) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// waits until at most P of this thread's committed groups are still in flight
template <int P>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(P) : "memory"); }

// One backward staging buffer (floats), and the rest of the backward's shared memory.
template <int NPL>
struct BwdLayout {
  static constexpr int NMAX = kLanes * NPL, SC = kSub * kChannels;
  static constexpr int oBC = 0;                      // (kSub, 2*NMAX): B then C
  static constexpr int oDT = oBC + kSub * 2 * NMAX;  // (kSub, C): dt, then softplus(dt + bias)
  static constexpr int oSIG = oDT + SC;              // (kSub, C): sigmoid(dt + bias)
  static constexpr int oU = oSIG + SC;               // (kSub, C)
  static constexpr int oZ = oU + SC;                 // (kSub, C)
  static constexpr int oDO = oZ + SC;                // (kSub, C): dout
  static constexpr int oH = oDO + SC;                // (C, NMAX): the chunk's saved start state
  static constexpr int kBuf = oH + kChannels * NMAX;
  // dB | dC of every channel, (kSub, 2, C, NMAX): the halves padded by 16 floats so the
  // block sum's reads of dB and dC columns fall in different banks
  static constexpr int kHalf = kChannels * NMAX + 16;
  static constexpr int kRed = kSub * 2 * kHalf;
  static constexpr int kBCPer = (kSub * 2 * NMAX + kThreads - 1) / kThreads;
  static constexpr int kChPer = SC / kThreads;
  static_assert(SC % kThreads == 0 && (kChannels * NMAX) % kThreads == 0, "staging split");
  static size_t bytes(int chunk) {  // starts: (n_sub_max, NPL, kThreads)
    return (size_t(kBwdBufs) * kBuf + kRed + size_t((chunk + kSub - 1) / kSub) * NPL * kThreads) * sizeof(float);
  }
};

// Warp reduce-scatter of V values per lane over the lane bits O, O/2, .., OMIN: each
// level sends half the remaining values to the partner lane and keeps the other half;
// once one value is left the remaining levels are plain butterflies. Afterwards v[0 ..
// max(1, V / (2O/OMIN)) - 1] hold the sums of values first .. over those lanes.
template <int O, int OMIN, int COUNT, int V>
__device__ __forceinline__ void reduce_scatter(float (&v)[V], int lane, int& first) {
  if constexpr (COUNT >= 2) {
    constexpr int half = COUNT / 2;
    const bool upper = (lane & O) != 0;
#pragma unroll
    for (int j = 0; j < half; ++j) {
      const float send = upper ? v[j] : v[j + half];
      const float keep = upper ? v[j + half] : v[j];
      v[j] = keep + __shfl_xor_sync(kFull, send, O);
    }
    if (upper) first += half;
  } else {
    v[0] += __shfl_xor_sync(kFull, v[0], O);
  }
  if constexpr (O / 2 >= OMIN) reduce_scatter<O / 2, OMIN, (COUNT >= 2 ? COUNT / 2 : 1), V>(v, lane, first);
}

// Sums v over the 4 lanes of a channel group; lane k of the group gets the sum of v[k].
__device__ __forceinline__ float group_sum_scatter(float (&v)[kLanes], int lane) {
  int first = 0;
  reduce_scatter<2, 1, kLanes, kLanes>(v, lane, first);
  return v[0];
}

// x[k] with k a run-time lane index, without dynamic register indexing (local memory).
template <int S>
__device__ __forceinline__ float pick(const float (&x)[S], int base, int k) {
  float r = x[base];
#pragma unroll
  for (int j = 1; j < kLanes; ++j)
    if (k == j) r = x[base + j];
  return r;
}

// NPL consecutive floats from shared memory (16-byte loads when they line up).
template <int NPL>
__device__ __forceinline__ void load_states(const float* p, float (&v)[NPL]) {
  if constexpr (NPL % 4 == 0) {
#pragma unroll
    for (int q = 0; q < NPL / 4; ++q) {
      const float4 f = reinterpret_cast<const float4*>(p)[q];
      v[4 * q] = f.x; v[4 * q + 1] = f.y; v[4 * q + 2] = f.z; v[4 * q + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < NPL; ++i) v[i] = p[i];
  }
}

// NPL consecutive floats to shared memory (16-byte stores when they line up).
template <int NPL>
__device__ __forceinline__ void store_states(float* p, const float* v) {
  if constexpr (NPL % 4 == 0) {
#pragma unroll
    for (int q = 0; q < NPL / 4; ++q)
      reinterpret_cast<float4*>(p)[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
  } else {
#pragma unroll
    for (int i = 0; i < NPL; ++i) p[i] = v[i];
  }
}

// delta = F.softplus(dt + dt_bias); A = -torch.exp(A_log)
// for t: h = torch.exp(delta[t, :, None] * A) * h + (delta[t] * u[t])[:, None] * Bm[t]
//        out[t] = (h @ Cm[t] + D * u[t]) * F.silu(z[t])
// Tiles of kFwdTile steps (B, C, and u, dt, z of the block's 32 channels) are copied
// into shared memory one tile ahead (cp.async), so no step waits on device memory.
// C8 (chunk == kSub): the chunk starts are the steps tt % 8 == 0 of each tile, known at
// compile time in full tiles (no per-step test against a running next-save step), and
// the state goes out in 16-byte stores where they line up (0.737 -> 0.620 ms here).
template <int NPL, bool C8>
__global__ void __launch_bounds__(kThreads, kFwdMinBlocks)
scan_forward_kernel(int L, int E, int N, int chunk, const float* __restrict__ u,
                    const float* __restrict__ dt, const float* __restrict__ dt_bias,
                    const float* __restrict__ A_log, const float* __restrict__ Bm,
                    const float* __restrict__ Cm, int ld_bc, const float* __restrict__ Dp,
                    const float* __restrict__ z, int ldz, float* __restrict__ out,
                    float* __restrict__ chunk_states, const float* h0, float* h_last) {
  constexpr int NMAX = kLanes * NPL;
  constexpr int TC = kFwdTile * kChannels;
  __shared__ __align__(16) float sB[2][kFwdTile][NMAX];
  __shared__ __align__(16) float sC[2][kFwdTile][NMAX];
  __shared__ float sU[2][TC], sDT[2][TC], sZ[2][TC];  // (tile step, channel), swizzled by swz
  const int b = blockIdx.y, tid = threadIdx.x;
  const int lane = tid % 32, k = lane % kLanes, group0 = lane - k;
  const int c = tid / kLanes;
  const int e = blockIdx.x * kChannels + c;
  const bool valid = e < E;
  const int ec = valid ? e : E - 1;  // padding channels compute on a real channel, store nothing
  const int n0 = k * NPL;
  const int n_chunks = (L + chunk - 1) / chunk;
  float A2[NPL], h[NPL];  // A * log2(e), state
  const size_t state_off = (size_t(b) * E + ec) * N;
#pragma unroll
  for (int i = 0; i < NPL; ++i) {
    const int n = n0 + i;
    A2[i] = n < N ? -expf(A_log[size_t(ec) * N + n]) * kLog2e : 0.0f;
    h[i] = (h0 && n < N) ? h0[state_off + n] : 0.0f;
  }
  const float bias = dt_bias[ec], Dv = Dp[ec];
  const bool vec_save = C8 && NPL % 4 == 0 && N == NMAX && (reinterpret_cast<uintptr_t>(chunk_states) & 15) == 0;

  // Copies tile [t0, t0 + kFwdTile) into buffer buf; steps past L and states past N are zeros.
  auto stage = [&](int t0, int buf) {
    const int cc = tid % kChannels, ecc = min(int(blockIdx.x) * kChannels + cc, E - 1);
#pragma unroll
    for (int j = 0; j < TC / kThreads; ++j) {
      const int r = tid / kChannels + j * (kThreads / kChannels), t = t0 + r;
      const bool ok = t < L;
      const size_t row = size_t(b) * L + (ok ? t : 0);
      cp_async4(&sU[buf][swz(r, cc)], u + row * E + ecc, ok);
      cp_async4(&sDT[buf][swz(r, cc)], dt + row * E + ecc, ok);
      cp_async4(&sZ[buf][swz(r, cc)], z + row * ldz + ecc, ok);
    }
#pragma unroll
    for (int j = 0; j < (kFwdTile * NMAX) / kThreads; ++j) {
      const int i = tid + j * kThreads, tt = i / NMAX, n = i % NMAX, t = t0 + tt;
      const bool ok = t < L && n < N;
      const size_t off = ok ? (size_t(b) * L + t) * ld_bc + n : 0;
      cp_async4(&sB[buf][tt][n], Bm + off, ok);
      cp_async4(&sC[buf][tt][n], Cm + off, ok);
    }
    cp_async_commit();
  };

  const int n_tiles = (L + kFwdTile - 1) / kFwdTile;
  if (n_tiles > 0) stage(0, 0);
  int next_save = 0;  // the next chunk start
  for (int it = 0; it < n_tiles; ++it) {
    const int buf = it & 1, t0 = it * kFwdTile, tn = min(kFwdTile, L - t0);
    if (it + 1 < n_tiles) stage(t0 + kFwdTile, buf ^ 1);
    else cp_async_commit();
    cp_async_wait<1>();  // this tile landed (the next may still be in flight)
    __syncthreads();
    const float* su = sU[buf];
    // Four steps; lane k finishes step s0 + k. Each lane computes one step's softplus
    // and the group shares them by shuffles.
    auto steps4 = [&](int s0, int tn) {  // tn: the tile's length
      const int my = s0 + k;
      const float my_delta = softplusf_(sDT[buf][swz(my, c)] + bias);
      float ypart[kLanes];
#pragma unroll
      for (int j = 0; j < kLanes; ++j) {
        const int tt = s0 + j, t = t0 + tt;
        const float delta = __shfl_sync(kFull, my_delta, group0 + j);
        ypart[j] = 0.0f;
        if (tt < tn) {  // uniform over the block
          if constexpr (C8) {
            if (chunk_states && tt % kSub == 0 && valid) {
              float* cs = chunk_states + ((size_t(b) * n_chunks + t / kSub) * E + e) * N + n0;
              if (vec_save) {
                store_states<NPL>(cs, h);  // 16-byte stores
              } else {
#pragma unroll
                for (int i = 0; i < NPL; ++i)
                  if (n0 + i < N) cs[i] = h[i];
              }
            }
          } else if (chunk_states && t == next_save) {
            if (valid) {
              float* cs = chunk_states + ((size_t(b) * n_chunks + t / chunk) * E + e) * N;
#pragma unroll
              for (int i = 0; i < NPL; ++i)
                if (n0 + i < N) cs[n0 + i] = h[i];
            }
            next_save += chunk;
          }
          const float dlu = delta * su[swz(tt, c)];
          float Bt[NPL], Ct[NPL];
          load_states<NPL>(&sB[buf][tt][n0], Bt);
          load_states<NPL>(&sC[buf][tt][n0], Ct);
          float y = 0.0f;
#pragma unroll
          for (int i = 0; i < NPL; ++i) {
            h[i] = ex2_(delta * A2[i]) * h[i] + dlu * Bt[i];
            y += Ct[i] * h[i];
          }
          ypart[j] = y;
        }
      }
      const float y = group_sum_scatter(ypart, lane);
      if (valid && my < tn) {
        const float uu = su[swz(my, c)], zz = sZ[buf][swz(my, c)];
        out[(size_t(b) * L + t0 + my) * E + e] = (y + Dv * uu) * zz * sigmoid_fast(zz);
      }
    };
    if (tn == kFwdTile) {  // full tile: unrolled, so shared-memory offsets are constants
#pragma unroll
      for (int s0 = 0; s0 < kFwdTile; s0 += kLanes) steps4(s0, kFwdTile);
    } else {
      for (int s0 = 0; s0 < tn; s0 += kLanes) steps4(s0, tn);
    }
    __syncthreads();  // the next iteration's copies overwrite this buffer
  }
  // h0 may alias h_last: each thread read its own slice above and writes it here.
  if (h_last && valid) {
#pragma unroll
    for (int i = 0; i < NPL; ++i)
      if (n0 + i < N) h_last[state_off + n0 + i] = h[i];
  }
}

// The backward pass visits, per chunk (last to first), its replay items (sub-chunks 0 ..
// n_sub-2, forwards: the state at each sub-chunk start) and then its gradient items
// (sub-chunks n_sub-1 .. 0). A cursor walks that sequence; a second cursor kBwdBufs-1
// items ahead issues the copies.
struct BwdCursor {
  int ch, kk, n_sub;
  bool replay;
  __device__ void start(int L, int chunk) {
    ch = (L + chunk - 1) / chunk - 1;
    enter(L, chunk);
  }
  __device__ void enter(int L, int chunk) {
    n_sub = (min(L, (ch + 1) * chunk) - ch * chunk + kSub - 1) / kSub;
    replay = n_sub > 1;
    kk = replay ? 0 : n_sub - 1;
  }
  __device__ void advance(int L, int chunk) {
    if (replay) {
      if (++kk == n_sub - 1) replay = false;  // the last sub-chunk is never replayed
    } else if (--kk < 0 && --ch >= 0) {
      enter(L, chunk);
    }
  }
  __device__ bool done() const { return ch < 0; }
  // the item that needs the chunk's saved start state
  __device__ bool first() const { return replay ? kk == 0 : n_sub == 1; }
};

// Reverse-mode through the recurrence (the CPU's scan_backward, same formulas):
//   dy = dout * silu(z);  dz = dout * y * silu'(z);  dD += dy * u;  dC[t, n] = sum_e dy * h_t
//   g_n = dh_n + dy * C_n;  ddelta = sum_n g_n (A_n a_n h_{t-1,n} + B_n u);  dB[t, n] = sum_e g_n delta u
//   du = dy D + sum_n g_n delta B_n;  dA_log_n += g_n a_n h_{t-1,n} delta A_n;  dh_{t-1} = g a
//   ddt = ddelta * sigmoid(dt + dt_bias);  ddt_bias += ddt        (a_n = exp(delta A_n))
template <int NPL>
__global__ void __launch_bounds__(kThreads, kBwdMinBlocks)
scan_backward_kernel(int L, int E, int N, int chunk, const float* __restrict__ u,
                     const float* __restrict__ dt, const float* __restrict__ dt_bias,
                     const float* __restrict__ A_log, const float* __restrict__ Bm,
                     const float* __restrict__ Cm, int ld_bc, const float* __restrict__ Dp,
                     const float* __restrict__ z, int ldz, const float* __restrict__ chunk_states,
                     const float* __restrict__ dout, float* __restrict__ du_out,
                     float* __restrict__ ddt_out, float* __restrict__ dz_out,
                     float* __restrict__ bc_partials,     // (E/32 blocks, B, L, 2*NMAX)
                     float* __restrict__ param_partials)  // (B, E, NMAX + 2)
{
  constexpr int NMAX = kLanes * NPL;
  constexpr int C = kChannels;
  using Lay = BwdLayout<NPL>;
  extern __shared__ __align__(16) float smem[];
  float* sred = smem + kBwdBufs * Lay::kBuf;   // (kSub, 2, C, NMAX) + padding: dB | dC per channel
  float* starts = sred + Lay::kRed;            // (n_sub_max, NPL, kThreads): h at sub-chunk starts

  const int B = gridDim.y;
  const int b = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % 32, k = lane % kLanes;
  const int c = tid / kLanes;  // channel within the block
  const int e = blockIdx.x * C + c;
  const bool valid = e < E;
  const int ec = valid ? e : E - 1;
  const int n0 = k * NPL;
  const int n_chunks = (L + chunk - 1) / chunk;

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

  // Copies one item's inputs into buffer buf: B (and C), dt, u (and z, dout) of the
  // sub-chunk, and on a chunk's first item its saved start state. Steps past the end
  // are zeros (u = dout = 0 also on padding channels), which make them exact no-ops.
  // Always commits a group (empty past the last item), so the wait counts hold.
  auto stage = [&](const BwdCursor& it, int buf) {
    if (!it.done()) {
      float* S = smem + buf * Lay::kBuf;
      const int t0 = it.ch * chunk, s0 = t0 + it.kk * kSub;
      const int len = min(kSub, min(L, t0 + chunk) - s0);
      const bool grad = !it.replay;
#pragma unroll
      for (int j = 0; j < Lay::kBCPer; ++j) {
        const int i = tid + j * kThreads;
        const int tt = i / (2 * NMAX), kk2 = i % (2 * NMAX), n = kk2 % NMAX;
        const bool is_b = kk2 < NMAX;
        if (i < kSub * 2 * NMAX && (is_b || grad)) {
          const bool ok = tt < len && n < N;
          const size_t off = ok ? (size_t(b) * L + s0 + tt) * ld_bc + n : 0;
          cp_async4(S + Lay::oBC + i, (is_b ? Bm : Cm) + off, ok);
        }
      }
#pragma unroll
      for (int j = 0; j < Lay::kChPer; ++j) {
        const int i = tid + j * kThreads, tt = i / C;
        const bool ok = tt < len, real = ok && es_real;
        const size_t row = size_t(b) * L + s0 + (ok ? tt : 0);
        cp_async4(S + Lay::oDT + i, dt + row * E + es, ok);
        cp_async4(S + Lay::oU + i, u + row * E + es, real);
        if (grad) {
          cp_async4(S + Lay::oZ + i, z + row * ldz + es, ok);
          cp_async4(S + Lay::oDO + i, dout + row * E + es, real);
        }
      }
      if (it.first()) {
#pragma unroll
        for (int j = 0; j < (C * NMAX) / kThreads; ++j) {
          const int i = tid + j * kThreads, cc = i / NMAX, n = i % NMAX;
          const int ecc = min(int(blockIdx.x) * C + cc, E - 1);
          const bool ok = n < N;
          const size_t off = ok ? ((size_t(b) * n_chunks + it.ch) * E + ecc) * N + n : 0;
          cp_async4(S + Lay::oH + i, chunk_states + off, ok);
        }
      }
    }
    cp_async_commit();
  };

  BwdCursor cur, pf;
  cur.start(L, chunk);
  pf = cur;
#pragma unroll
  for (int p = 0; p < kBwdBufs - 1; ++p) {
    stage(pf, p);
    if (!pf.done()) pf.advance(L, chunk);
  }
  float h[NPL];  // the replayed state
  for (int it = 0; !cur.done(); ++it, cur.advance(L, chunk)) {
    float* S = smem + (it % kBwdBufs) * Lay::kBuf;
    const int t0 = cur.ch * chunk, s0 = t0 + cur.kk * kSub;
    const int len = min(kSub, min(L, t0 + chunk) - s0);
    cp_async_wait<kBwdBufs - 2>();  // this item's copies landed
    __syncthreads();                // ... for every thread; the previous item is finished
    // Per (t, e) once, not once per lane of the group: dt -> softplus(dt + bias) in place
    // and sigmoid(dt + bias) (0 past the end); z, dout -> dz / y and dy (see below).
#pragma unroll
    for (int j = 0; j < Lay::kChPer; ++j) {
      const int i = tid + j * kThreads;
      const bool ok = i / C < len;
      const float x = S[Lay::oDT + i] + bias_s;
      S[Lay::oDT + i] = ok ? softplusf_(x) : 0.0f;
      if (!cur.replay) {
        S[Lay::oSIG + i] = ok ? sigmoid_fast(x) : 0.0f;
        const float zz = S[Lay::oZ + i], go = S[Lay::oDO + i], s = sigmoid_fast(zz);
        S[Lay::oZ + i] = go * s * (1.0f + zz * (1.0f - s));  // dz = (y + D u) * this
        S[Lay::oDO + i] = go * zz * s;                        // dy
      }
    }
    stage(pf, (it + kBwdBufs - 1) % kBwdBufs);  // the previous item's buffer
    if (!pf.done()) pf.advance(L, chunk);
    __syncthreads();
    const float* sBC = S + Lay::oBC;
    const float* sdelta = S + Lay::oDT;
    const float* su = S + Lay::oU;
    if (cur.replay) {
      // (1) replay the sub-chunk from its start state; keep the next start
      if (cur.kk == 0) {
        load_states<NPL>(S + Lay::oH + c * NMAX + n0, h);
#pragma unroll
        for (int i = 0; i < NPL; ++i) starts[i * kThreads + tid] = h[i];
      }
#pragma unroll
      for (int ii = 0; ii < kSub; ++ii) {
        const float delta = sdelta[ii * C + c], dlu = delta * su[ii * C + c];
        float Bt[NPL];
        load_states<NPL>(sBC + ii * 2 * NMAX + n0, Bt);
#pragma unroll
        for (int i = 0; i < NPL; ++i) h[i] = ex2_(delta * A2[i]) * h[i] + dlu * Bt[i];
      }
#pragma unroll
      for (int i = 0; i < NPL; ++i) starts[((cur.kk + 1) * NPL + i) * kThreads + tid] = h[i];
      continue;
    }
    // (2) the gradient through one sub-chunk: replay it keeping every step's state and
    // decay exp(delta A) in registers (fully unrolled), then walk it backwards carrying dh
    const float* ssig = S + Lay::oSIG;
    const float* sdzf = S + Lay::oZ;  // dout * silu'(z)
    const float* sdy = S + Lay::oDO;  // dout * silu(z)
    // lane 0 of a group writes dz, lane 1 ddt, lane 2 du (row s0 + ii at dst[ii * dst_ld])
    const size_t row0 = size_t(b) * L + s0;
    float* dst = k == 0 ? dz_out + row0 * ldz + e : (k == 1 ? ddt_out : du_out) + row0 * E + e;
    const int dst_ld = k == 0 ? ldz : E;
    float h_start[NPL], hs[kSub][NPL], as[kSub][NPL];  // h before the sub-chunk; h_t and exp(delta_t A)
    if (cur.n_sub == 1) {
      load_states<NPL>(S + Lay::oH + c * NMAX + n0, h_start);
    } else {
#pragma unroll
      for (int i = 0; i < NPL; ++i) h_start[i] = starts[(cur.kk * NPL + i) * kThreads + tid];
    }
#pragma unroll
    for (int ii = 0; ii < kSub; ++ii) {
      const float delta = sdelta[ii * C + c], dlu = delta * su[ii * C + c];
      float Bt[NPL];
      load_states<NPL>(sBC + ii * 2 * NMAX + n0, Bt);
#pragma unroll
      for (int i = 0; i < NPL; ++i) {
        as[ii][i] = ex2_(delta * A2[i]);
        hs[ii][i] = as[ii][i] * (ii > 0 ? hs[ii - 1][i] : h_start[i]) + dlu * Bt[i];
      }
    }
#pragma unroll
    for (int ii = kSub - 1; ii >= 0; --ii) {
      const float uu = su[ii * C + c], delta = sdelta[ii * C + c], sig = ssig[ii * C + c];
      const float dlu = delta * uu;
      const float dy = sdy[ii * C + c];
      float Bt[NPL], Ct[NPL];
      load_states<NPL>(sBC + ii * 2 * NMAX + n0, Bt);
      load_states<NPL>(sBC + ii * 2 * NMAX + NMAX + n0, Ct);
      dD_acc += dy * uu;
      float ypart = 0.0f, qA = 0.0f, gB = 0.0f;
      float v[2 * NPL];  // [dB | dC] of this channel, for this lane's states
#pragma unroll
      for (int i = 0; i < NPL; ++i) {
        const float hprev = ii > 0 ? hs[ii - 1][i] : h_start[i];
        ypart += Ct[i] * hs[ii][i];
        const float g = dh[i] + dy * Ct[i];
        const float q = g * as[ii][i] * hprev;
        qA += q * A2[i];
        gB += g * Bt[i];
        dal[i] += q * delta;
        dh[i] = g * as[ii][i];
        v[i] = g * dlu;
        v[NPL + i] = dy * hs[ii][i];
      }
      // over the group: lane 0 gets y (-> dz), lane 1 ddelta (-> ddt), lane 2 sum_n g B (-> du)
      float r[kLanes] = {ypart, qA * kLn2 + gB * uu, gB, 0.0f};
      const float red = group_sum_scatter(r, lane);
      if (k == 1) dbias_acc += red * sig;  // sig = 0 past the end
      if (valid && ii < len && k < 3)       // one store per lane: dz, ddt or du
        dst[ii * dst_ld] = k == 0 ? (red + Dv * uu) * sdzf[ii * C + c] : (k == 1 ? red * sig : red * delta + dy * Dv);
      // dB, dC of this channel; summed over the block's channels below
      store_states<NPL>(sred + ii * 2 * Lay::kHalf + c * NMAX + n0, v);
      store_states<NPL>(sred + ii * 2 * Lay::kHalf + Lay::kHalf + c * NMAX + n0, v + NPL);
    }
    __syncthreads();
    // the block's sum over its 32 channels, in channel order: one partial per (block, row)
    for (int i = tid; i < kSub * 2 * NMAX; i += kThreads) {
      const int ii = i / (2 * NMAX), kk2 = i % (2 * NMAX);
      if (ii >= len) continue;
      const float* p = sred + ii * 2 * Lay::kHalf + (kk2 / NMAX) * Lay::kHalf + kk2 % NMAX;
      float sum = 0.0f;
#pragma unroll
      for (int cc = 0; cc < C; ++cc) sum += p[cc * NMAX];
      bc_partials[((size_t(blockIdx.x) * B + b) * L + s0 + ii) * (2 * NMAX) + kk2] = sum;
    }
    // the next item's first barrier keeps its writes to sred after these reads
  }
  if (valid) {
    float* pp = param_partials + (size_t(b) * E + e) * (NMAX + 2);
#pragma unroll
    for (int i = 0; i < NPL; ++i) pp[n0 + i] = dal[i] * A2[i] * kLn2;  // times A = A2 ln2
    if (k == 0) pp[NMAX] = dD_acc;
    if (k == 1) pp[NMAX + 1] = dbias_acc;
  }
}

// The backward at chunk == kSub (the CUDA backend's chunk, CudaBackend::scan_chunk): every
// chunk is one sub-chunk whose start state the forward saved, so there is no replay pass,
// no sub-chunk starts and no cursor; item it is chunk n_chunks-1-it. Same formulas and
// the same order of every sum over n and t as scan_backward_kernel.
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
constexpr int kVecTE = 1, kVecBC = 2;
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
  static constexpr int kBCPer = (kSub * 2 * NMAX + kThreads - 1) / kThreads;
  static constexpr int kChPer = SC / kThreads;
  static_assert(SC % kThreads == 0 && (C * NMAX) % kThreads == 0, "staging split");
  static constexpr size_t bytes(int bufs, int rs) { return (size_t(bufs) * kBuf + size_t(rs) * 2 * kHalf) * sizeof(float); }
};

template <int KL, int NPL, int MINB, bool KEEP_A, int BUFS, int RS, bool PACK>
__global__ void __launch_bounds__(kThreads, MINB)
scan_backward_c8_kernel(int vec, int L, int E, int N, const float* __restrict__ u, const float* __restrict__ dt,
                        const float* __restrict__ dt_bias, const float* __restrict__ A_log,
                        const float* __restrict__ Bm, const float* __restrict__ Cm, int ld_bc,
                        const float* __restrict__ Dp, const float* __restrict__ z, int ldz,
                        const float* __restrict__ chunk_states, const float* __restrict__ dout,
                        float* __restrict__ du_out, float* __restrict__ ddt_out, float* __restrict__ dz_out,
                        float* __restrict__ bc_partials,     // (E/C blocks, B, L, 2*NMAX)
                        float* __restrict__ param_partials)  // (B, E, NMAX + 2)
{
  using Lay = C8Layout<KL, NPL>;
  constexpr int NMAX = Lay::NMAX, C = Lay::C;
  static_assert(kSub % RS == 0 && BUFS >= 2 && (KL == 4 || KL == 2), "c8 layout");
  // the packed values (6 per (t, e)) fit over dt, sigmoid, u, z, dout and the start state
  static_assert(!PACK || 6 * Lay::SC <= 5 * Lay::SC + C * NMAX, "c8 packing");
  constexpr bool kPairSum = PACK && RS * NMAX >= kThreads;  // block sum in float2
  extern __shared__ __align__(16) float smem[];
  float* sred = smem + BUFS * Lay::kBuf;  // (RS, 2, C, NMAX) + padding: dB | dC per channel

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
    cp_async_commit();
  };
  // the block's sum over its C channels of dB/dC rows lo .. lo+RS-1 of the chunk at s0,
  // in channel order: one partial per (block, row)
  auto block_sum = [&](int s0, int len, int lo) {
    if constexpr (kPairSum) {
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
    const int ch = n_chunks - 1 - it, s0 = ch * kSub, len = min(kSub, L - s0);
    cp_async_wait<BUFS - 2>();  // this item's copies landed
    __syncthreads();            // ... for every thread; the previous item is finished
    float h_start[NPL];  // h before the chunk
    float4* P4 = reinterpret_cast<float4*>(S + Lay::oDT);                // (kSub, C): delta, delta u, dy, u
    float2* P2 = reinterpret_cast<float2*>(S + Lay::oDT + 4 * Lay::SC);  // (kSub, C): sigmoid, dz factor
    if constexpr (PACK) {
      load_states<NPL>(S + Lay::oH + c * NMAX + n0, h_start);
      float4 p4[Lay::kChPer];
      float2 p2[Lay::kChPer];
#pragma unroll
      for (int j = 0; j < Lay::kChPer; ++j) {
        const int i = tid + j * kThreads;
        const bool ok = i / C < len;
        const float x = S[Lay::oDT + i] + bias_s, uu = S[Lay::oU + i];
        const float delta = ok ? softplusf_(x) : 0.0f;
        const float zz = S[Lay::oZ + i], go = S[Lay::oDO + i], sz = sigmoid_fast(zz);
        p4[j] = make_float4(delta, delta * uu, go * zz * sz, uu);
        p2[j] = make_float2(ok ? sigmoid_fast(x) : 0.0f, go * sz * (1.0f + zz * (1.0f - sz)));
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
        S[Lay::oDT + i] = ok ? softplusf_(x) : 0.0f;
        S[Lay::oSIG + i] = ok ? sigmoid_fast(x) : 0.0f;
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
    // lane 1 ddt (row s0 + ii at dst[ii * dst_ld], dst2[ii * E])
    float* dst = k == 0 ? dz_out + row0 * ldz + e : (k == 1 ? ddt_out : du_out) + row0 * E + e;
    float* dst2 = du_out + row0 * E + e;
    const int dst_ld = k == 0 ? ldz : E;
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
      float ypart = 0.0f, qA = 0.0f, gB = 0.0f;
      float v[2 * NPL];  // [dB | dC] of this channel, for this lane's states
#pragma unroll
      for (int i = 0; i < NPL; ++i) {
        const float a = KEEP_A ? as[KEEP_A ? ii : 0][i] : ex2_(delta * A2[i]);
        const float hprev = ii > 0 ? hs[ii - 1][i] : h_start[i];
        ypart += Ct[i] * hs[ii][i];
        const float g = dh[i] + dy * Ct[i];
        const float q = g * a * hprev;
        qA += q * A2[i];
        gB += g * Bt[i];
        dal[i] += q * delta;
        dh[i] = g * a;
        v[i] = g * dlu;
        v[NPL + i] = dy * hs[ii][i];
      }
      if constexpr (KL == 4) {
        // over the group: lane 0 gets y (-> dz), lane 1 ddelta (-> ddt), lane 2 sum_n g B (-> du)
        float r[kLanes] = {ypart, qA * kLn2 + gB * uu, gB, 0.0f};
        const float red = group_sum_scatter(r, lane);
        if (k == 1) dbias_acc += red * sig;  // sig = 0 past the end
        if (valid && ii < len && k < 3)       // one store per lane: dz, ddt or du
          dst[ii * dst_ld] = k == 0 ? (red + Dv * uu) * dzf : (k == 1 ? red * sig : red * delta + dy * Dv);
      } else {
        // over the pair: lane 0 gets y (-> dz) and sum_n g B (-> du), lane 1 ddelta (-> ddt)
        float r[4] = {ypart, gB, qA * kLn2 + gB * uu, 0.0f};
        int first = 0;
        reduce_scatter<1, 1, 4, 4>(r, lane, first);
        if (k == 1) dbias_acc += r[0] * sig;  // sig = 0 past the end
        if (valid && ii < len) {
          dst[ii * dst_ld] = k == 0 ? (r[0] + Dv * uu) * dzf : r[0] * sig;
          if (k == 0) dst2[ii * E] = r[1] * delta + dy * Dv;
        }
      }
      // dB, dC of this channel; summed over the block's channels below
      float* sr = sred + (ii % RS) * 2 * Lay::kHalf + c * NMAX + n0;
      store_states<NPL>(sr, v);
      store_states<NPL>(sr + Lay::kHalf, v + NPL);
      if (ii % RS == 0 && ii > 0) {  // the held rows are complete: sum them, then reuse the space
        __syncthreads();
        block_sum(s0, len, ii);
        __syncthreads();
      }
    }
    __syncthreads();
    block_sum(s0, len, 0);
    // the next item's first barrier keeps its writes to sred after these reads
  }
  if (valid) {
    float* pp = param_partials + (size_t(b) * E + e) * (NMAX + 2);
#pragma unroll
    for (int i = 0; i < NPL; ++i) pp[n0 + i] = dal[i] * A2[i] * kLn2;  // times A = A2 ln2
    if (k == 0) pp[NMAX] = dD_acc;
    if (k == 1) pp[NMAX + 1] = dbias_acc;
  }
}

// dB[row, n] = sum_w partials[w][row][n] (w: the backward kernel's blocks), dC likewise ("=", row stride ld_bc)
template <int NMAX>
__global__ void scan_bc_finish(int rows, int N, int n_warps, const float* partials, float* dBm,
                               float* dCm, int ld_bc) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;  // (row, k), k < 2*NMAX
  if (i >= size_t(rows) * 2 * NMAX) return;
  const size_t row = i / (2 * NMAX);
  const int k = int(i % (2 * NMAX)), n = k % NMAX;
  if (n >= N) return;
  float s = 0.0f;
  for (int w = 0; w < n_warps; ++w) s += partials[(size_t(w) * rows + row) * (2 * NMAX) + k];
  (k < NMAX ? dBm : dCm)[row * ld_bc + n] = s;
}

// dA_log[e, n] += sum_b, dD[e] += sum_b, ddt_bias[e] += sum_b (b in order)
template <int NMAX>
__global__ void scan_param_finish(int B, int E, int N, const float* partials, float* dA_log,
                                  float* dD, float* ddt_bias) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;  // (e, k), k < NMAX + 2
  if (i >= E * (NMAX + 2)) return;
  const int e = i / (NMAX + 2), k = i % (NMAX + 2);
  if (k < NMAX && k >= N) return;
  float s = 0.0f;
  for (int b = 0; b < B; ++b) s += partials[(size_t(b) * E + e) * (NMAX + 2) + k];
  if (k < NMAX) dA_log[size_t(e) * N + k] += s;
  else if (k == NMAX) dD[e] += s;
  else ddt_bias[e] += s;
}

template <int NPL>
void launch_forward(Ctx& c, int B, int L, int E, int N, int chunk, const float* u,
                    const float* dt, const float* dt_bias, const float* A_log, const float* Bm,
                    const float* Cm, int ld_bc, const float* D, const float* z, int ldz,
                    float* out, float* chunk_states, const float* h0, float* h_last) {
  dim3 grid(blocks_for(E, kChannels), B);
  static const bool c8_on = [] {  // BHASA_SCAN_FWD_C8=0: the general kernel at chunk 8 too (timing)
    const char* v = std::getenv("BHASA_SCAN_FWD_C8");
    return !v || std::atoi(v) != 0;
  }();
  if (chunk == kSub && c8_on)
    scan_forward_kernel<NPL, true><<<grid, kThreads, 0, c.stream>>>(
        L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, out, chunk_states, h0, h_last);
  else
    scan_forward_kernel<NPL, false><<<grid, kThreads, 0, c.stream>>>(
        L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, out, chunk_states, h0, h_last);
  BHASA_LAUNCH_CHECK("scan_forward");
}

template <int KL, int NPL, int MINB, bool KEEP_A, int BUFS, int RS, bool PACK, bool VEC>
void launch_backward_c8(Ctx& c, dim3 grid, int L, int E, int N, const float* u, const float* dt,
                        const float* dt_bias, const float* A_log, const float* Bm, const float* Cm, int ld_bc,
                        const float* D, const float* z, int ldz, const float* chunk_states, const float* dout,
                        float* du, float* ddt, float* dz, float* bc_part, float* param_part) {
  constexpr size_t bytes = C8Layout<KL, NPL>::bytes(BUFS, RS);
  auto* kernel = scan_backward_c8_kernel<KL, NPL, MINB, KEEP_A, BUFS, RS, PACK>;
  static bool attr_set = false;  // per template instance
  if (!attr_set) {
    BHASA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    attr_set = true;
  }
  // 16-byte copies where every row lines up (VEC; otherwise 4-byte copies)
  auto al = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  constexpr int NMAX = KL * NPL;
  const int vec = !VEC ? 0
                       : ((E % 4 == 0 && ldz % 4 == 0 && al(u) && al(dt) && al(z) && al(dout) ? kVecTE : 0) |
                          (NPL % 4 == 0 && N == NMAX && ld_bc % 4 == 0 && al(Bm) && al(Cm) && al(chunk_states) ? kVecBC : 0));
  kernel<<<grid, kThreads, bytes, c.stream>>>(vec, L, E, N, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz,
                                              chunk_states, dout, du, ddt, dz, bc_part, param_part);
}

template <int NPL>
void launch_backward(Ctx& c, int B, int L, int E, int N, int chunk, const float* u,
                     const float* dt, const float* dt_bias, const float* A_log, const float* Bm,
                     const float* Cm, int ld_bc, const float* D, const float* z, int ldz,
                     const float* chunk_states, const float* dout, float* du, float* ddt,
                     float* dBm, float* dCm, float* dz, float* dA_log, float* dD,
                     float* ddt_bias) {
  constexpr int NMAX = kLanes * NPL;
  // At chunk == kSub the chunk-8 kernel (no replay pass); BHASA_SCAN_BWD_C8=0 runs the
  // general one there too (timing). For N in 9..16 (the models' 16) the 2-lane layout.
  static const bool c8_on = [] {
    const char* v = std::getenv("BHASA_SCAN_BWD_C8");
    return !v || std::atoi(v) != 0;
  }();
  const bool c8 = chunk == kSub && c8_on;
  const bool pairs = c8 && NPL == 4;  // 2 lanes per channel, 64 channels per block
  const int n_blocks = int(blocks_for(E, pairs ? 2 * kChannels : kChannels));
  const size_t rows = size_t(B) * L;
  auto* bc_part = static_cast<float*>(
      c.scratch->get(kScanPartials, size_t(n_blocks) * rows * 2 * NMAX * sizeof(float)));
  auto* param_part = static_cast<float*>(
      c.scratch->get(kScanParamPartials, size_t(B) * E * (NMAX + 2) * sizeof(float)));
  const size_t smem = BwdLayout<NPL>::bytes(chunk);
  check(c8 || smem <= 227 * 1024, "scan_backward: chunk " + std::to_string(chunk) +
                                      " is too long for the CUDA kernel's shared memory; use a chunk of at most 256");
  dim3 grid(n_blocks, B);
#define BHASA_C8(KL, NP, MINB, KEEP_A, BUFS, RS, PACK, VEC)                                                       \
  launch_backward_c8<KL, NP, MINB, KEEP_A, BUFS, RS, PACK, VEC>(c, grid, L, E, N, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, \
                                                     ldz, chunk_states, dout, du, ddt, dz, bc_part, param_part)
  if (c8) {
    // measured variants (bench/cuda_lab/NOTES.md, v9-v10): 2 lanes per channel with the
    // packed per-step values and 16-byte copies ran 1.65 ms, 4 lanes at 4 blocks/SM 1.93
    if constexpr (NPL == 4) BHASA_C8(2, 8, 3, false, 3, 2, true, true);
    else BHASA_C8(4, NPL, 3, (NPL < 4), 3, 8, false, false);
  } else {
    static bool attr_set = false;  // per template instance
    if (!attr_set) {
      BHASA_CUDA_CHECK(cudaFuncSetAttribute(scan_backward_kernel<NPL>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
      attr_set = true;
    }
    scan_backward_kernel<NPL><<<grid, kThreads, smem, c.stream>>>(
        L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, chunk_states, dout, du, ddt,
        dz, bc_part, param_part);
  }
#undef BHASA_C8
  BHASA_LAUNCH_CHECK("scan_backward");
  scan_bc_finish<NMAX><<<blocks_for(rows * 2 * NMAX, 256), 256, 0, c.stream>>>(
      int(rows), N, n_blocks, bc_part, dBm, dCm, ld_bc);
  BHASA_LAUNCH_CHECK("scan_bc_finish");
  scan_param_finish<NMAX><<<blocks_for(size_t(E) * (NMAX + 2), 256), 256, 0, c.stream>>>(
      B, E, N, param_part, dA_log, dD, ddt_bias);
  BHASA_LAUNCH_CHECK("scan_param_finish");
}

void check_n(int N, int chunk) {
  check(N >= 1 && N <= 32, "selective scan: d_state = " + std::to_string(N) +
                               " is not supported by the CUDA backend (1..32); use --device cpu");
  check(chunk > 0, "selective scan: chunk must be positive");
}

}  // namespace

void scan_forward(Ctx& c, int B, int L, int E, int N, int chunk, const float* u,
                  const float* dt, const float* dt_bias, const float* A_log, const float* Bm,
                  const float* Cm, int ld_bc, const float* D, const float* z, int ldz,
                  float* out, float* chunk_states, const float* h0, float* h_last) {
  check_n(N, chunk);
  if (B == 0 || E == 0) return;
#define BHASA_SCAN_FWD(NM) \
  launch_forward<NM>(c, B, L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, out, chunk_states, h0, h_last)
  if (N <= 4) BHASA_SCAN_FWD(1);
  else if (N <= 8) BHASA_SCAN_FWD(2);
  else if (N <= 16) BHASA_SCAN_FWD(4);
  else BHASA_SCAN_FWD(8);
#undef BHASA_SCAN_FWD
}

void scan_backward(Ctx& c, int B, int L, int E, int N, int chunk, const float* u,
                   const float* dt, const float* dt_bias, const float* A_log, const float* Bm,
                   const float* Cm, int ld_bc, const float* D, const float* z, int ldz,
                   const float* chunk_states, const float* dout, float* du, float* ddt,
                   float* dBm, float* dCm, float* dz, float* dA_log, float* dD,
                   float* ddt_bias) {
  check_n(N, chunk);
  if (B == 0 || E == 0 || L == 0) return;
#define BHASA_SCAN_BWD(NM)                                                                      \
  launch_backward<NM>(c, B, L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, \
                      chunk_states, dout, du, ddt, dBm, dCm, dz, dA_log, dD, ddt_bias)
  if (N <= 4) BHASA_SCAN_BWD(1);
  else if (N <= 8) BHASA_SCAN_BWD(2);
  else if (N <= 16) BHASA_SCAN_BWD(4);
  else BHASA_SCAN_BWD(8);
#undef BHASA_SCAN_BWD
}

}  // namespace bhasa::cuda
