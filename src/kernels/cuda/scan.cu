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
// packed in shared memory and 16-byte staging copies (scan_backward_c8_kernel). For N in
// 9..16 the forward runs 2 lanes per channel too (scan_forward_c8_kernel, scan_fwd_c8.cu).
#include <algorithm>
#include <cstdlib>

#include "kernels/cuda/scan_common.cuh"

namespace bhasa::cuda {

namespace {

using namespace scan_detail;

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

// delta = F.softplus(dt + dt_bias); A = -torch.exp(A_log)
// for t: h = torch.exp(delta[t, :, None] * A) * h + (delta[t] * u[t])[:, None] * Bm[t]
//        out[t] = (h @ Cm[t] + D * u[t]) * F.silu(z[t])
// Tiles of kFwdTile steps (B, C, and u, dt, z of the block's 32 channels) are copied
// into shared memory one tile ahead (cp.async), so no step waits on device memory.
// C8 (chunk == kSub): the chunk starts are the steps tt % 8 == 0 of each tile, known at
// compile time in full tiles (no per-step test against a running next-save step), and
// the state goes out in 16-byte stores where they line up (0.737 -> 0.620 ms here).
// out (B, L, E): fp32 or bf16 (TY)
// FSP: softplus from one exp and a short series (softplus_sigmoid; was log1pf(expf)).
template <int NPL, bool C8, class TY, bool FSP = true>
__global__ void __launch_bounds__(kThreads, kFwdMinBlocks)
scan_forward_kernel(int L, int E, int N, int chunk, const float* __restrict__ u,
                    const float* __restrict__ dt, const float* __restrict__ dt_bias,
                    const float* __restrict__ A_log, const float* __restrict__ Bm,
                    const float* __restrict__ Cm, int ld_bc, const float* __restrict__ Dp,
                    const float* __restrict__ z, int ldz, TY* __restrict__ out,
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

  // FSP at chunk 8: 16-byte copies with 32-bit offsets where everything lines up (u, dt,
  // z rows of 4 channels, B and C rows of 4 states; every tensor < 2^31 elements): 8
  // copies per thread and tile instead of 32, each a few integer instructions
  auto al16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  const size_t rows = size_t(gridDim.y) * L, lim = size_t(1) << 31;
  const bool vec_in = C8 && FSP && NPL % 4 == 0 && N == NMAX && ((E | ldz | ld_bc) & 3) == 0 && al16(u) &&
                      al16(dt) && al16(z) && al16(Bm) && al16(Cm) && rows * max(E, ldz) < lim && rows * ld_bc < lim;
  // Copies tile [t0, t0 + kFwdTile) into buffer buf; steps past L and states past N are zeros.
  auto stage = [&](int t0, int buf) {
    if constexpr (C8 && FSP && NPL % 4 == 0) if (vec_in) {
      constexpr int kQ = kChannels / 4, kQN = NMAX / 4;
      static_assert((kFwdTile * kQ) % kThreads == 0 && (kFwdTile * kQN) % kThreads == 0, "fwd vector staging");
#pragma unroll
      for (int j = 0; j < kFwdTile * kQ / kThreads; ++j) {  // u, dt, z: (tile step, 4 channels)
        const int i = tid + j * kThreads, r = i / kQ, c4 = (i % kQ) * 4, e4 = int(blockIdx.x) * kChannels + c4;
        const bool ok = t0 + r < L && e4 < E;
        const int row = b * L + (ok ? t0 + r : 0), col = ok ? e4 : 0, o = row * E + col;
        cp_async16(&sU[buf][swz(r, c4)], u + o, ok);
        cp_async16(&sDT[buf][swz(r, c4)], dt + o, ok);
        cp_async16(&sZ[buf][swz(r, c4)], z + row * ldz + col, ok);
      }
#pragma unroll
      for (int j = 0; j < kFwdTile * kQN / kThreads; ++j) {  // B, C: (tile step, 4 states)
        const int i = tid + j * kThreads, tt = i / kQN, nq = (i % kQN) * 4;
        const bool ok = t0 + tt < L;
        const int off = ok ? (b * L + t0 + tt) * ld_bc + nq : 0;
        cp_async16(&sB[buf][tt][nq], Bm + off, ok);
        cp_async16(&sC[buf][tt][nq], Cm + off, ok);
      }
      cp_async_commit();
      return;
    }
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

  // this lane's states of chunk 0, and the step between chunks (E N floats)
  float* const cs_lane = chunk_states + (size_t(b) * n_chunks * E + ec) * N + n0;
  const unsigned cs_step = unsigned(E) * N;
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
      const float my_x = sDT[buf][swz(my, c)] + bias;
      const float my_delta = FSP ? softplus_fast(my_x) : softplusf_(my_x);
      float ypart[kLanes];
#pragma unroll
      for (int j = 0; j < kLanes; ++j) {
        const int tt = s0 + j, t = t0 + tt;
        const float delta = __shfl_sync(kFull, my_delta, group0 + j);
        ypart[j] = 0.0f;
        if (tt < tn) {  // uniform over the block
          if constexpr (C8) {
            if (chunk_states && tt % kSub == 0 && valid) {
              float* cs = FSP ? cs_lane + size_t(t / kSub) * cs_step : chunk_states + ((size_t(b) * n_chunks + t / kSub) * E + e) * N + n0;
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
        out[(size_t(b) * L + t0 + my) * E + e] = from_float<TY>((y + Dv * uu) * zz * sigmoid_fast(zz));
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
template <int NPL, class TZ>  // dz fp32 or bf16 (TZ)
__global__ void __launch_bounds__(kThreads, kBwdMinBlocks)
scan_backward_kernel(int L, int E, int N, int chunk, const float* __restrict__ u,
                     const float* __restrict__ dt, const float* __restrict__ dt_bias,
                     const float* __restrict__ A_log, const float* __restrict__ Bm,
                     const float* __restrict__ Cm, int ld_bc, const float* __restrict__ Dp,
                     const float* __restrict__ z, int ldz, const float* __restrict__ chunk_states,
                     const float* __restrict__ dout, float* __restrict__ du_out,
                     float* __restrict__ ddt_out, TZ* __restrict__ dz_out,
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
      float sx;
      const float delta = softplus_sigmoid(x, sx);
      S[Lay::oDT + i] = ok ? delta : 0.0f;
      if (!cur.replay) {
        S[Lay::oSIG + i] = ok ? sx : 0.0f;
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
    // lane 0 of a group writes dz, lane 1 ddt, lane 2 du (row s0 + ii: dst.store(ii, .))
    const size_t row0 = size_t(b) * L + s0;
    const LaneOut<TZ> dst(k == 0, dz_out + row0 * ldz + e, ldz, (k == 1 ? ddt_out : du_out) + row0 * E + e, E);
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
      if (valid && ii < len && k < 3)  // one store per lane: dz, ddt or du
        dst.store(ii, k == 0 ? (red + Dv * uu) * sdzf[ii * C + c] : (k == 1 ? red * sig : red * delta + dy * Dv));
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

bool fwd_c8_on() {  // BHASA_SCAN_FWD_C8=0: the general kernel at chunk 8 too (timing)
  static const bool on = [] {
    const char* v = std::getenv("BHASA_SCAN_FWD_C8");
    return !v || std::atoi(v) != 0;
  }();
  return on;
}
// BHASA_SCAN_FWD_VARIANT (timing): 10 the 4-lane kernel with log1pf(expf), 11 the 4-lane
// kernel with softplus_sigmoid; default: for N in 9..16 the 2-lane kernel (scan_fwd_c8.cu)
int fwd_variant() {
  static const int variant = [] {
    const char* v = std::getenv("BHASA_SCAN_FWD_VARIANT");
    return v ? std::atoi(v) : 12;
  }();
  return variant;
}
// The forward at chunk 8 for N in 9..16 runs scan_fwd_c8.cu's 2-lane kernel
bool fwd_two_lane(int N, int chunk) { return chunk == kSub && fwd_c8_on() && N > 8 && N <= 16 && fwd_variant() >= 12; }
bool bwd_c8_on() {  // BHASA_SCAN_BWD_C8=0: the general kernel at chunk 8 too (timing)
  static const bool on = [] {
    const char* v = std::getenv("BHASA_SCAN_BWD_C8");
    return !v || std::atoi(v) != 0;
  }();
  return on;
}

// u, dt, z fp32 here, but for the 2-lane kernel, which reads them all bf16 too
template <int NPL>
void launch_forward(Ctx& c, int B, int L, int E, int N, int chunk, ConstOperand u_,
                    ConstOperand dt_, const float* dt_bias, const float* A_log, const float* Bm,
                    const float* Cm, int ld_bc, const float* D, ConstOperand z_, int ldz,
                    Operand out, float* chunk_states, const float* h0, float* h_last) {
  dim3 grid(blocks_for(E, kChannels), B);
  const bool c8_on = fwd_c8_on();
  const bool fsp = fwd_variant() != 10;
  if (NPL == 4 && fwd_two_lane(N, chunk)) {
    launch_forward_c8(c, B, L, E, N, u_, dt_, dt_bias, A_log, Bm, Cm, ld_bc, D, z_, ldz, out, chunk_states, h0, h_last);
  } else {
    const float *u = u_.f32(), *dt = dt_.f32(), *z = z_.f32();
    with_operand(out, [&](auto* o) {
      using TY = std::remove_pointer_t<decltype(o)>;
      if (chunk == kSub && c8_on && !fsp)
        scan_forward_kernel<NPL, true, TY, false><<<grid, kThreads, 0, c.stream>>>(
            L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, o, chunk_states, h0, h_last);
      else if (chunk == kSub && c8_on)
        scan_forward_kernel<NPL, true, TY><<<grid, kThreads, 0, c.stream>>>(
            L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, o, chunk_states, h0, h_last);
      else
        scan_forward_kernel<NPL, false, TY><<<grid, kThreads, 0, c.stream>>>(
            L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, o, chunk_states, h0, h_last);
    });
  }
  BHASA_LAUNCH_CHECK("scan_forward");
}

// u, dt, z, dout, ddt, du fp32 here, but for the V11 chunk-8 kernel, which reads them all
// bf16 too (du there fp32 or bf16)
template <int NPL>
void launch_backward(Ctx& c, int B, int L, int E, int N, int chunk, ConstOperand u,
                     ConstOperand dt, const float* dt_bias, const float* A_log, const float* Bm,
                     const float* Cm, int ld_bc, const float* D, ConstOperand z, int ldz,
                     const float* chunk_states, ConstOperand dout, Operand du, Operand ddt,
                     float* dBm, float* dCm, Operand dz, float* dA_log, float* dD,
                     float* ddt_bias) {
  constexpr int NMAX = kLanes * NPL;
  // At chunk == kSub the chunk-8 kernel (no replay pass); BHASA_SCAN_BWD_C8=0 runs the
  // general one there too (timing). For N in 9..16 (the models' 16) the 2-lane layout.
  const bool c8 = chunk == kSub && bwd_c8_on();
  const int n_blocks = int(blocks_for(E, c8 ? c8_channels(NPL) : kChannels));
  const size_t rows = size_t(B) * L;
  auto* bc_part = static_cast<float*>(
      c.scratch->get(kScanPartials, size_t(n_blocks) * rows * 2 * NMAX * sizeof(float)));
  auto* param_part = static_cast<float*>(
      c.scratch->get(kScanParamPartials, size_t(B) * E * (NMAX + 2) * sizeof(float)));
  const size_t smem = BwdLayout<NPL>::bytes(chunk);
  check(c8 || smem <= 227 * 1024, "scan_backward: chunk " + std::to_string(chunk) +
                                      " is too long for the CUDA kernel's shared memory; use a chunk of at most 256");
  dim3 grid(n_blocks, B);
  if (c8) {
    launch_backward_c8(c, NPL, grid, L, E, N, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, chunk_states,
                       dout, du, ddt, dz, bc_part, param_part);
  } else {
    with_operand(dz, [&](auto* d) {
      auto* kernel = scan_backward_kernel<NPL, std::remove_pointer_t<decltype(d)>>;
      static bool attr_set = false;  // per template instance
      if (!attr_set) {
        BHASA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
        attr_set = true;
      }
      kernel<<<grid, kThreads, smem, c.stream>>>(L, E, N, chunk, u.f32(), dt.f32(), dt_bias, A_log, Bm, Cm, ld_bc, D,
                                                 z.f32(), ldz, chunk_states, dout.f32(), du.f32(), ddt.f32(), d, bc_part,
                                                 param_part);
    });
  }
  BHASA_LAUNCH_CHECK("scan_backward");
  scan_bc_finish<NMAX><<<blocks_for(rows * 2 * NMAX, 256), 256, 0, c.stream>>>(
      int(rows), N, n_blocks, bc_part, dBm, dCm, ld_bc);
  BHASA_LAUNCH_CHECK("scan_bc_finish");
  scan_param_finish<NMAX><<<blocks_for(size_t(E) * (NMAX + 2), 256), 256, 0, c.stream>>>(
      B, E, N, param_part, dA_log, dD, ddt_bias);
  BHASA_LAUNCH_CHECK("scan_param_finish");
}

// torch: dst[:, :cols] = src[:, :cols].float()     src, dst (rows, ld): bf16 -> fp32
__global__ void widen_kernel(size_t rows, int cols, const __nv_bfloat16* __restrict__ src, int ld,
                             float* __restrict__ dst) {
  const size_t n = rows * cols, stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const size_t j = (i / cols) * ld + i % cols;
    dst[j] = __bfloat162float(src[j]);
  }
}
unsigned copy_blocks(size_t n) { return unsigned(std::min<size_t>(blocks_for(n, 256), 132 * 16)); }
// x (rows, cols) row stride ld as an fp32 operand for the kernels that read fp32 only: x
// itself, or (bf16) an fp32 copy with the same row stride in a grow-once scratch slot (the
// same stride: the scan writes dz with z's)
ConstOperand widen(Ctx& c, ScratchSlot slot, size_t rows, int cols, ConstOperand x, int ld) {
  if (x.dtype == Dtype::f32 || rows * cols == 0) return x;
  auto* dst = static_cast<float*>(c.scratch->get(slot, ((rows - 1) * ld + cols) * sizeof(float)));
  widen_kernel<<<copy_blocks(rows * cols), 256, 0, c.stream>>>(rows, cols, static_cast<const __nv_bfloat16*>(x.p),
                                                              ld, dst);
  BHASA_LAUNCH_CHECK("scan: widen bf16");
  return dst;
}

void check_n(int N, int chunk) {
  check(N >= 1 && N <= 32, "selective scan: d_state = " + std::to_string(N) +
                               " is not supported by the CUDA backend (1..32); use --device cpu");
  check(chunk > 0, "selective scan: chunk must be positive");
}

}  // namespace

void scan_forward(Ctx& c, int B, int L, int E, int N, int chunk, ConstOperand u,
                  ConstOperand dt, const float* dt_bias, const float* A_log, const float* Bm,
                  const float* Cm, int ld_bc, const float* D, ConstOperand z, int ldz,
                  Operand out, float* chunk_states, const float* h0, float* h_last) {
  check_n(N, chunk);
  if (B == 0 || E == 0) return;
  // bf16 inputs: read as they are by the 2-lane chunk-8 kernel (all three bf16, rows
  // aligned); anywhere else widened to fp32 copies first
  const bool any16 = u.dtype == Dtype::bf16 || dt.dtype == Dtype::bf16 || z.dtype == Dtype::bf16;
  if (any16 && !(fwd_two_lane(N, chunk) && forward_c8_reads_bf16(B, L, E, N, u, dt, Bm, Cm, ld_bc, z, ldz))) {
    const size_t rows = size_t(B) * L;
    u = widen(c, kScanWide0, rows, E, u, E);
    dt = widen(c, kScanWide1, rows, E, dt, E);
    z = widen(c, kScanWide2, rows, E, z, ldz);
  }
#define BHASA_SCAN_FWD(NM) \
  launch_forward<NM>(c, B, L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, out, chunk_states, h0, h_last)
  if (N <= 4) BHASA_SCAN_FWD(1);
  else if (N <= 8) BHASA_SCAN_FWD(2);
  else if (N <= 16) BHASA_SCAN_FWD(4);
  else BHASA_SCAN_FWD(8);
#undef BHASA_SCAN_FWD
}

void scan_backward(Ctx& c, int B, int L, int E, int N, int chunk, ConstOperand u,
                   ConstOperand dt, const float* dt_bias, const float* A_log, const float* Bm,
                   const float* Cm, int ld_bc, const float* D, ConstOperand z, int ldz,
                   const float* chunk_states, ConstOperand dout, Operand du, Operand ddt,
                   float* dBm, float* dCm, Operand dz, float* dA_log, float* dD,
                   float* ddt_bias) {
  check_n(N, chunk);
  if (B == 0 || E == 0 || L == 0) return;
  // bf16 u, dt, z, dout, ddt (and du fp32 or bf16): read and written as they are by the V11
  // chunk-8 kernel (the five bf16, rows aligned); anywhere else the inputs are widened to
  // fp32 copies first and a bf16 ddt or du is written to an fp32 copy, rounded after
  const auto bf = Dtype::bf16;
  const size_t rows = size_t(B) * L;
  const bool any16 = u.dtype == bf || dt.dtype == bf || z.dtype == bf || dout.dtype == bf || ddt.dtype == bf ||
                     du.dtype == bf;
  const Operand ddt_out = ddt, du_out = du;
  if (any16) {
    const bool c8 = chunk == kSub && bwd_c8_on() && N > 8 && N <= 16;
    const dim3 grid(blocks_for(E, c8_channels(4)), B);
    if (!(c8 && backward_c8_reads_bf16(4, grid, L, E, N, u, dt, Bm, Cm, ld_bc, z, ldz, chunk_states, dout, du,
                                       ddt, dz))) {
      u = widen(c, kScanWide0, rows, E, u, E);
      dt = widen(c, kScanWide1, rows, E, dt, E);
      z = widen(c, kScanWide2, rows, E, z, ldz);  // dz keeps its stride ldz
      dout = widen(c, kScanWide3, rows, E, dout, E);
      if (ddt.dtype == bf) ddt = static_cast<float*>(c.scratch->get(kScanWide4, rows * E * sizeof(float)));
      if (du.dtype == bf) du = static_cast<float*>(c.scratch->get(kScanWide5, rows * E * sizeof(float)));
    }
  }
#define BHASA_SCAN_BWD(NM)                                                                      \
  launch_backward<NM>(c, B, L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, \
                      chunk_states, dout, du, ddt, dBm, dCm, dz, dA_log, dD, ddt_bias)
  if (N <= 4) BHASA_SCAN_BWD(1);
  else if (N <= 8) BHASA_SCAN_BWD(2);
  else if (N <= 16) BHASA_SCAN_BWD(4);
  else BHASA_SCAN_BWD(8);
#undef BHASA_SCAN_BWD
  if (ddt.p != ddt_out.p) flat_to_bf16(c.stream, ddt.f32(), rows * E, ddt_out.p);
  if (du.p != du_out.p) flat_to_bf16(c.stream, du.f32(), rows * E, du_out.p);
}

}  // namespace bhasa::cuda
