// The selective scan (Mamba's S6 recurrence), chunked exactly like the CPU one: the
// forward pass saves the state at the start of each chunk, the backward pass
// recomputes the states inside a chunk from it. The state stays fp32.
//
// Layout. One thread owns one (b, e) channel and keeps its N states in registers
// (templated on NMAX >= N; padding states have A = B = C = 0 and stay 0). Threads
// of a warp are 32 consecutive channels, so u, dt, z, out rows are read and
// written coalesced; B[t, :] and C[t, :] are the same for the whole block and are
// staged in shared memory.
//
// Backward, per chunk (walked last to first): (1) replay the chunk from its saved
// start state, keeping the state at every sub-chunk start (kSub steps) in shared
// memory; (2) for each sub-chunk, last first, replay it keeping every step's state,
// then walk it backwards carrying dh. dB and dC sum over channels: a warp
// reduce-scatter leaves lane k with the warp's sum of value k, written to per-warp
// partials that a second kernel adds in warp order (deterministic, no atomics).
// dA_log, dD and ddt_bias sum over b: per-(b, e) partials, added in b order.
#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kFwdThreads = 128;  // channels per forward block
constexpr int kFwdTile = 32;      // time steps of B, C staged per forward tile
constexpr int kFwdAhead = 16;     // forward steps whose loads are issued together
constexpr int kBwdThreads = 32;   // channels per backward block (one warp)
constexpr int kSub = 8;           // backward sub-chunk length (steps kept in shared memory)

// delta = F.softplus(dt + dt_bias); A = -torch.exp(A_log)
// for t: h = torch.exp(delta[t, :, None] * A) * h + (delta[t] * u[t])[:, None] * Bm[t]
//        out[t] = (h @ Cm[t] + D * u[t]) * F.silu(z[t])
template <int NMAX>
__global__ void __launch_bounds__(kFwdThreads)
scan_forward_kernel(int L, int E, int N, int chunk, const float* __restrict__ u,
                    const float* __restrict__ dt, const float* __restrict__ dt_bias,
                    const float* __restrict__ A_log, const float* __restrict__ Bm,
                    const float* __restrict__ Cm, int ld_bc, const float* __restrict__ Dp,
                    const float* __restrict__ z, int ldz, float* __restrict__ out,
                    float* __restrict__ chunk_states, const float* h0, float* h_last) {
  __shared__ __align__(16) float sB[kFwdTile][NMAX];
  __shared__ __align__(16) float sC[kFwdTile][NMAX];
  const int b = blockIdx.y;
  const int e = blockIdx.x * kFwdThreads + threadIdx.x;
  const bool valid = e < E;
  const int ec = valid ? e : E - 1;  // padding lanes compute on a real channel, store nothing
  const int n_chunks = (L + chunk - 1) / chunk;
  float A2[NMAX], h[NMAX];  // A * log2(e), state
  const size_t state_off = (size_t(b) * E + ec) * N;
#pragma unroll
  for (int n = 0; n < NMAX; ++n) {
    A2[n] = n < N ? -expf(A_log[size_t(ec) * N + n]) * kLog2e : 0.0f;
    h[n] = (h0 && n < N) ? h0[state_off + n] : 0.0f;
  }
  const float bias = dt_bias[ec], Dv = Dp[ec];
  for (int t0 = 0; t0 < L; t0 += kFwdTile) {
    __syncthreads();
    for (int i = threadIdx.x; i < kFwdTile * NMAX; i += kFwdThreads) {
      const int tt = i / NMAX, n = i % NMAX, t = t0 + tt;
      const size_t row = size_t(b) * L + t;
      sB[tt][n] = (t < L && n < N) ? Bm[row * ld_bc + n] : 0.0f;
      sC[tt][n] = (t < L && n < N) ? Cm[row * ld_bc + n] : 0.0f;
    }
    __syncthreads();
    const int tn = min(kFwdTile, L - t0);
    // Sub-tiles of kFwdAhead steps: all their loads are issued before the first use,
    // so one memory latency covers kFwdAhead steps (a block has few warps to hide it).
    for (int s0 = 0; s0 < tn; s0 += kFwdAhead) {
      float ru[kFwdAhead], rdt[kFwdAhead], rz[kFwdAhead];
#pragma unroll
      for (int j = 0; j < kFwdAhead; ++j) {
        const bool ok = s0 + j < tn;
        const size_t row = size_t(b) * L + t0 + s0 + (ok ? j : 0);
        ru[j] = ok ? u[row * E + ec] : 0.0f;
        rdt[j] = ok ? dt[row * E + ec] : 0.0f;
        rz[j] = ok ? z[row * ldz + ec] : 0.0f;
      }
#pragma unroll
      for (int j = 0; j < kFwdAhead; ++j) {
        if (s0 + j >= tn) break;
        const int tt = s0 + j, t = t0 + tt;
        if (chunk_states && valid && t % chunk == 0) {
          float* cs = chunk_states + ((size_t(b) * n_chunks + t / chunk) * E + e) * N;
#pragma unroll
          for (int n = 0; n < NMAX; ++n)
            if (n < N) cs[n] = h[n];
        }
        const float uu = ru[j], zz = rz[j];
        const float delta = softplusf_(rdt[j] + bias);
        const float du = delta * uu;
        float y = Dv * uu;
#pragma unroll
        for (int n = 0; n < NMAX; ++n) {
          h[n] = exp2f(delta * A2[n]) * h[n] + du * sB[tt][n];
          y += sC[tt][n] * h[n];
        }
        if (valid) out[(size_t(b) * L + t) * E + e] = y * zz * sigmoidf_(zz);
      }
    }
  }
  // h0 may alias h_last: each thread read its own slice above and writes it here.
  if (h_last && valid) {
#pragma unroll
    for (int n = 0; n < NMAX; ++n)
      if (n < N) h_last[state_off + n] = h[n];
  }
}

// Warp reduce-scatter of V values per lane: afterwards lane holds, in v[0 .. max(1,
// V/32) - 1], the sum over the warp of values first .. first + count - 1.
// Each level sends half the remaining values to the partner lane and keeps the
// other half; once one value is left the remaining levels are plain butterflies.
template <int O, int COUNT, int V>
__device__ __forceinline__ void reduce_scatter(float (&v)[V], int lane, int& first) {
  if constexpr (COUNT >= 2) {
    constexpr int half = COUNT / 2;
    const bool upper = (lane & O) != 0;
#pragma unroll
    for (int j = 0; j < half; ++j) {
      const float send = upper ? v[j] : v[j + half];
      const float keep = upper ? v[j + half] : v[j];
      v[j] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
    if (upper) first += half;
  } else {
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], O);
  }
  if constexpr (O > 1) reduce_scatter<O / 2, (COUNT >= 2 ? COUNT / 2 : 1), V>(v, lane, first);
}

// Reverse-mode through the recurrence (the CPU's scan_backward, same formulas):
//   dy = dout * silu(z);  dz = dout * y * silu'(z);  dD += dy * u;  dC[t, n] = sum_e dy * h_t
//   g_n = dh_n + dy * C_n;  ddelta = sum_n g_n (A_n a_n h_{t-1,n} + B_n u);  dB[t, n] = sum_e g_n delta u
//   du = dy D + sum_n g_n delta B_n;  dA_log_n += g_n a_n h_{t-1,n} delta A_n;  dh_{t-1} = g a
//   ddt = ddelta * sigmoid(dt + dt_bias);  ddt_bias += ddt        (a_n = exp(delta A_n))
template <int NMAX>
__global__ void __launch_bounds__(kBwdThreads)
scan_backward_kernel(int L, int E, int N, int chunk, const float* __restrict__ u,
                     const float* __restrict__ dt, const float* __restrict__ dt_bias,
                     const float* __restrict__ A_log, const float* __restrict__ Bm,
                     const float* __restrict__ Cm, int ld_bc, const float* __restrict__ Dp,
                     const float* __restrict__ z, int ldz, const float* __restrict__ chunk_states,
                     const float* __restrict__ dout, float* __restrict__ du_out,
                     float* __restrict__ ddt_out, float* __restrict__ dz_out,
                     float* __restrict__ bc_partials,     // (E/32, B, L, 2*NMAX)
                     float* __restrict__ param_partials)  // (B, E, NMAX + 2)
{
  extern __shared__ __align__(16) float smem[];
  constexpr int T = kBwdThreads;
  const int n_sub_max = (chunk + kSub - 1) / kSub;
  float* sBC = smem;                                // (kSub, 2*NMAX): B then C of one sub-chunk
  float* hist = sBC + kSub * 2 * NMAX;              // (kSub, NMAX, T): h after each step
  float* starts = hist + kSub * NMAX * T;           // (n_sub_max, NMAX, T): h at sub-chunk starts
  float* sdt = starts + size_t(n_sub_max) * NMAX * T;  // (kSub, T): raw dt
  float* su = sdt + kSub * T;                       // (kSub, T): u (0 on padding lanes)
  float* sz = su + kSub * T;                        // (kSub, T): z
  float* sdo = sz + kSub * T;                       // (kSub, T): dout (0 on padding lanes)

  const int B = gridDim.y;
  const int b = blockIdx.y;
  const int lane = threadIdx.x;
  const int e = blockIdx.x * T + lane;
  const bool valid = e < E;
  const int ec = valid ? e : E - 1;
  const int n_chunks = (L + chunk - 1) / chunk;

  float A2[NMAX], h[NMAX], dh[NMAX], dal[NMAX];
#pragma unroll
  for (int n = 0; n < NMAX; ++n) {
    A2[n] = n < N ? -expf(A_log[size_t(ec) * N + n]) * kLog2e : 0.0f;
    dh[n] = 0.0f;
    dal[n] = 0.0f;
  }
  const float bias = dt_bias[ec], Dv = Dp[ec];
  float dD_acc = 0.0f, dbias_acc = 0.0f;

  // Loads one sub-chunk [s0, s0 + len): B, C into sBC and u, dt (and z, dout when
  // `all`) into shared memory. Every global load is issued before the first store,
  // so the sub-chunk pays one memory latency, not one per step.
  constexpr int kBC = (kSub * 2 * NMAX + T - 1) / T;  // B/C values per lane
  auto load_sub = [&](int s0, int len, bool all) {
    float rbc[kBC], ru[kSub], rdt[kSub], rz[kSub], rdo[kSub];
#pragma unroll
    for (int j = 0; j < kBC; ++j) {
      const int i = lane + j * T;
      const int tt = i / (2 * NMAX), k = i % (2 * NMAX), n = k % NMAX;
      const bool ok = i < kSub * 2 * NMAX && tt < len && n < N;
      const size_t row = size_t(b) * L + s0 + (ok ? tt : 0);
      rbc[j] = ok ? (k < NMAX ? Bm : Cm)[row * ld_bc + n] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      const bool ok = j < len;
      const size_t row = size_t(b) * L + s0 + (ok ? j : 0);
      ru[j] = ok && valid ? u[row * E + ec] : 0.0f;
      rdt[j] = ok ? dt[row * E + ec] : 0.0f;
      rz[j] = ok && all ? z[row * ldz + ec] : 0.0f;
      rdo[j] = ok && all && valid ? dout[row * E + ec] : 0.0f;
    }
    __syncwarp();  // the previous sub-chunk's readers are done
#pragma unroll
    for (int j = 0; j < kBC; ++j)
      if (lane + j * T < kSub * 2 * NMAX) sBC[lane + j * T] = rbc[j];
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      su[j * T + lane] = ru[j];
      sdt[j * T + lane] = rdt[j];
      sz[j * T + lane] = rz[j];
      sdo[j * T + lane] = rdo[j];
    }
    __syncwarp();
  };

  for (int c = n_chunks - 1; c >= 0; --c) {
    const int t0 = c * chunk, t1 = min(L, t0 + chunk);
    const int n_sub = (t1 - t0 + kSub - 1) / kSub;
    // (1) replay the chunk, keeping the state at each sub-chunk start
    const float* cs = chunk_states + ((size_t(b) * n_chunks + c) * E + ec) * N;
#pragma unroll
    for (int n = 0; n < NMAX; ++n) h[n] = n < N ? cs[n] : 0.0f;
    for (int k = 0; k < n_sub; ++k) {
      const int s0 = t0 + k * kSub, len = min(kSub, t1 - s0);
#pragma unroll
      for (int n = 0; n < NMAX; ++n) starts[(k * NMAX + n) * T + lane] = h[n];
      if (k == n_sub - 1) break;  // the last sub-chunk's end state is never needed
      load_sub(s0, len, false);
      for (int i = 0; i < len; ++i) {
        const float uu = su[i * T + lane];
        const float delta = softplusf_(sdt[i * T + lane] + bias);
        const float dlu = delta * uu;
#pragma unroll
        for (int n = 0; n < NMAX; ++n) h[n] = exp2f(delta * A2[n]) * h[n] + dlu * sBC[i * 2 * NMAX + n];
      }
    }
    // (2) sub-chunks last to first
    for (int k = n_sub - 1; k >= 0; --k) {
      const int s0 = t0 + k * kSub, len = min(kSub, t1 - s0);
      load_sub(s0, len, true);
#pragma unroll
      for (int n = 0; n < NMAX; ++n) h[n] = starts[(k * NMAX + n) * T + lane];
      for (int i = 0; i < len; ++i) {
        const float uu = su[i * T + lane], dtv = sdt[i * T + lane];
        const float delta = softplusf_(dtv + bias);
        const float dlu = delta * uu;
#pragma unroll
        for (int n = 0; n < NMAX; ++n) {
          h[n] = exp2f(delta * A2[n]) * h[n] + dlu * sBC[i * 2 * NMAX + n];
          hist[(i * NMAX + n) * T + lane] = h[n];
        }
      }
      for (int i = len - 1; i >= 0; --i) {
        const int t = s0 + i;
        const size_t row = size_t(b) * L + t;
        const float uu = su[i * T + lane], dtv = sdt[i * T + lane];
        const float delta = softplusf_(dtv + bias);
        const float zz = sz[i * T + lane], go = sdo[i * T + lane];
        const float* Bt = sBC + i * 2 * NMAX;
        const float* Ct = Bt + NMAX;
        const float* hcur = hist + i * NMAX * T + lane;
        const float* hprev = i > 0 ? hist + (i - 1) * NMAX * T + lane : starts + k * NMAX * T + lane;
        float y = Dv * uu;
#pragma unroll
        for (int n = 0; n < NMAX; ++n) y += Ct[n] * hcur[n * T];
        const float s = sigmoidf_(zz);
        const float dy = go * zz * s;
        const float dzv = go * y * s * (1.0f + zz * (1.0f - s));
        dD_acc += dy * uu;
        float dus = dy * Dv, acc_qA = 0.0f, acc_gB = 0.0f;
        float v[2 * NMAX];  // [dB partial | dC partial] of this channel
#pragma unroll
        for (int n = 0; n < NMAX; ++n) {
          const float a = exp2f(delta * A2[n]);
          const float g = dh[n] + dy * Ct[n];
          const float q = g * a * hprev[n * T];
          const float gd = g * delta;
          acc_qA += q * A2[n];
          acc_gB += g * Bt[n];
          v[n] = gd * uu;
          dus += gd * Bt[n];
          dal[n] += q * delta;
          dh[n] = g * a;
          v[NMAX + n] = dy * hcur[n * T];
        }
        const float ddt = (acc_qA * kLn2 + acc_gB * uu) * sigmoidf_(dtv + bias);
        dbias_acc += ddt;
        if (valid) {
          ddt_out[row * E + e] = ddt;
          du_out[row * E + e] = dus;
          dz_out[row * ldz + e] = dzv;
        }
        int first = 0;
        reduce_scatter<16, 2 * NMAX, 2 * NMAX>(v, lane, first);
        constexpr int kPerLane = (2 * NMAX) / 32 > 0 ? (2 * NMAX) / 32 : 1;
        float* dst = bc_partials + ((size_t(blockIdx.x) * B + b) * L + t) * (2 * NMAX) + first;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) dst[j] = v[j];
      }
    }
  }
  if (valid) {
    float* pp = param_partials + (size_t(b) * E + e) * (NMAX + 2);
#pragma unroll
    for (int n = 0; n < NMAX; ++n) pp[n] = dal[n] * A2[n] * kLn2;  // times A = A2 ln2
    pp[NMAX] = dD_acc;
    pp[NMAX + 1] = dbias_acc;
  }
}

// dB[row, n] = sum_w partials[w][row][n], dC likewise ("=", row stride ld_bc)
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

template <int NMAX>
void launch_forward(Ctx& c, int B, int L, int E, int N, int chunk, const float* u,
                    const float* dt, const float* dt_bias, const float* A_log, const float* Bm,
                    const float* Cm, int ld_bc, const float* D, const float* z, int ldz,
                    float* out, float* chunk_states, const float* h0, float* h_last) {
  dim3 grid(blocks_for(E, kFwdThreads), B);
  scan_forward_kernel<NMAX><<<grid, kFwdThreads, 0, c.stream>>>(
      L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, out, chunk_states, h0, h_last);
  BHASA_LAUNCH_CHECK("scan_forward");
}

template <int NMAX>
void launch_backward(Ctx& c, int B, int L, int E, int N, int chunk, const float* u,
                     const float* dt, const float* dt_bias, const float* A_log, const float* Bm,
                     const float* Cm, int ld_bc, const float* D, const float* z, int ldz,
                     const float* chunk_states, const float* dout, float* du, float* ddt,
                     float* dBm, float* dCm, float* dz, float* dA_log, float* dD,
                     float* ddt_bias) {
  const int n_warps = int(blocks_for(E, kBwdThreads));
  const size_t rows = size_t(B) * L;
  auto* bc_part = static_cast<float*>(
      c.scratch->get(kScanPartials, size_t(n_warps) * rows * 2 * NMAX * sizeof(float)));
  auto* param_part = static_cast<float*>(
      c.scratch->get(kScanParamPartials, size_t(B) * E * (NMAX + 2) * sizeof(float)));
  const int n_sub_max = (chunk + kSub - 1) / kSub;
  const size_t smem = (size_t(kSub) * 2 * NMAX + size_t(kSub) * NMAX * kBwdThreads +
                       size_t(n_sub_max) * NMAX * kBwdThreads + 4 * size_t(kSub) * kBwdThreads) *
                      sizeof(float);
  check(smem <= 200 * 1024, "scan_backward: chunk " + std::to_string(chunk) +
                                " is too long for the CUDA kernel's shared memory; use a chunk of at most 256");
  static bool attr_set = false;  // per template instance
  if (!attr_set) {
    BHASA_CUDA_CHECK(cudaFuncSetAttribute(scan_backward_kernel<NMAX>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
    attr_set = true;
  }
  dim3 grid(n_warps, B);
  scan_backward_kernel<NMAX><<<grid, kBwdThreads, smem, c.stream>>>(
      L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, chunk_states, dout, du, ddt,
      dz, bc_part, param_part);
  BHASA_LAUNCH_CHECK("scan_backward");
  scan_bc_finish<NMAX><<<blocks_for(rows * 2 * NMAX, 256), 256, 0, c.stream>>>(
      int(rows), N, n_warps, bc_part, dBm, dCm, ld_bc);
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
  if (N <= 4) BHASA_SCAN_FWD(4);
  else if (N <= 8) BHASA_SCAN_FWD(8);
  else if (N <= 16) BHASA_SCAN_FWD(16);
  else BHASA_SCAN_FWD(32);
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
  if (N <= 4) BHASA_SCAN_BWD(4);
  else if (N <= 8) BHASA_SCAN_BWD(8);
  else if (N <= 16) BHASA_SCAN_BWD(16);
  else BHASA_SCAN_BWD(32);
#undef BHASA_SCAN_BWD
}

}  // namespace bhasa::cuda
