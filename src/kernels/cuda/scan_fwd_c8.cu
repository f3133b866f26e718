// The selective-scan forward at chunk == kSub (8, the CUDA backend's chunk) for N in
// 9..16: 2 lanes per channel, 8 states each (scan.cu's scan_forward_kernel runs 4 lanes
// of 4). Half as many lanes share each step's per-(t, e) work (softplus, the u load, the
// sum over n, the output), as in the 2-lane chunk-8 backward (scan_bwd_c8.cu).
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/scan_common.cuh"

namespace bhasa::cuda::scan_detail {

namespace {

constexpr int kKL = 2, kNPL = 8, kNMAX = kKL * kNPL;  // lanes per channel, states per lane
constexpr int kC = kThreads / kKL;                    // channels per block
constexpr int kT = 16;                                // time steps per staged tile
constexpr int kTC = kT * kC;

// (tile step r, channel c) in a (kT, kC) tile; odd rows XOR-swizzled by 16 so that the
// epilogue's reads of 2 consecutive steps of 16 channels (one warp) hit 32 banks
__device__ __forceinline__ int swz2(int r, int c) { return r * kC + (c ^ ((r & 1) << 4)); }

// delta = F.softplus(dt + dt_bias); A = -torch.exp(A_log)
// for t: h = torch.exp(delta[t, :, None] * A) * h + (delta[t] * u[t])[:, None] * Bm[t]
//        out[t] = (h @ Cm[t] + D * u[t]) * F.silu(z[t])
// Same tiles and copies as scan_forward_kernel (kT steps ahead, cp.async); the state at
// every chunk start (t % 8 == 0) goes to chunk_states. vec (host-checked): 16-byte copies
// with 32-bit offsets (E, ldz, ld_bc multiples of 4, aligned rows, N == 16, every tensor
// < 2^31 elements).
// 118 registers: 4 blocks per SM hold the (16, 1536) grid (384 blocks) in one wave.
// out (B, L, E): fp32 or bf16 (TY). u, dt, z: fp32 or bf16 (TA), staged as they are (a
// bf16 16-byte copy is 8 channels) and widened where the walk reads them; bf16 runs
// only with vec (the host checks: forward_c8_reads_bf16).
template <class TY, class TA>
__global__ void __launch_bounds__(kThreads, 4)
scan_forward_c8_kernel(bool vec, int L, int E, int N, const TA* __restrict__ u, const TA* __restrict__ dt,
                       const float* __restrict__ dt_bias, const float* __restrict__ A_log,
                       const float* __restrict__ Bm, const float* __restrict__ Cm, int ld_bc,
                       const float* __restrict__ Dp, const TA* __restrict__ z, int ldz, TY* __restrict__ out,
                       float* __restrict__ chunk_states, const float* h0, float* h_last) {
  constexpr bool kF32 = std::is_same_v<TA, float>;
  __shared__ __align__(16) float sB[2][kT][kNMAX];
  __shared__ __align__(16) float sC[2][kT][kNMAX];
  __shared__ __align__(16) TA sU[2][kTC], sDT[2][kTC], sZ[2][kTC];  // swizzled by swz2
  const int b = blockIdx.y, tid = threadIdx.x;
  const int lane = tid % 32, k = lane % kKL, group0 = lane - k;
  const int c = tid / kKL;
  const int e = blockIdx.x * kC + c;
  const bool valid = e < E;
  const int ec = valid ? e : E - 1;  // padding channels compute on a real channel, store nothing
  const int n0 = k * kNPL;
  const int n_chunks = (L + kSub - 1) / kSub;
  float A2[kNPL], h[kNPL];  // A * log2(e), state
  const size_t state_off = (size_t(b) * E + ec) * N;
#pragma unroll
  for (int i = 0; i < kNPL; ++i) {
    const int n = n0 + i;
    A2[i] = n < N ? -expf(A_log[size_t(ec) * N + n]) * kLog2e : 0.0f;
    h[i] = (h0 && n < N) ? h0[state_off + n] : 0.0f;
  }
  const float bias = dt_bias[ec], Dv = Dp[ec];
  const bool vec_save = N == kNMAX && (reinterpret_cast<uintptr_t>(chunk_states) & 15) == 0;
  // this lane's states of chunk 0, and the step between chunks (E N floats)
  float* const cs_lane = chunk_states + (size_t(b) * n_chunks * E + ec) * N + n0;
  const size_t cs_step = size_t(E) * N;
  TY* const out_lane = out + size_t(b) * L * E + e;  // out[b, 0, e]

  // Copies tile [t0, t0 + kT) into buffer buf; steps past L and states past N are zeros.
  auto stage = [&](int t0, int buf) {
    if (vec) {
      constexpr int kEl = 16 / sizeof(TA);  // channels per 16-byte copy: 4 fp32 or 8 bf16
      constexpr int kQ = kC / kEl, kQN = kNMAX / 4;
      static_assert(kTC % (kEl * kThreads) == 0 && 2 * kT * kQN == kThreads, "fwd c8 staging");
#pragma unroll
      for (int j = 0; j < kTC / (kEl * kThreads); ++j) {  // u, dt, z: (tile step, kEl channels)
        const int i = tid + j * kThreads, r = i / kQ, c4 = (i % kQ) * kEl, e4 = int(blockIdx.x) * kC + c4;
        const bool ok = t0 + r < L && e4 < E;
        const int row = b * L + (ok ? t0 + r : 0), col = ok ? e4 : 0, o = row * E + col;
        cp_async16(&sU[buf][swz2(r, c4)], u + o, ok);
        cp_async16(&sDT[buf][swz2(r, c4)], dt + o, ok);
        cp_async16(&sZ[buf][swz2(r, c4)], z + row * ldz + col, ok);
      }
      // B (threads 0..63), C (64..127): (tile step, 4 states)
      const int i = tid % (kT * kQN), tt = i / kQN, nq = (i % kQN) * 4;
      const bool ok = t0 + tt < L;
      const int off = ok ? (b * L + t0 + tt) * ld_bc + nq : 0;
      cp_async16(tid < kT * kQN ? &sB[buf][tt][nq] : &sC[buf][tt][nq], (tid < kT * kQN ? Bm : Cm) + off, ok);
    } else if constexpr (kF32) {
      const int cc = tid % kC, ecc = min(int(blockIdx.x) * kC + cc, E - 1);
#pragma unroll
      for (int j = 0; j < kTC / kThreads; ++j) {
        const int r = tid / kC + j * (kThreads / kC), t = t0 + r;
        const bool ok = t < L;
        const size_t row = size_t(b) * L + (ok ? t : 0);
        cp_async4(&sU[buf][swz2(r, cc)], u + row * E + ecc, ok);
        cp_async4(&sDT[buf][swz2(r, cc)], dt + row * E + ecc, ok);
        cp_async4(&sZ[buf][swz2(r, cc)], z + row * ldz + ecc, ok);
      }
#pragma unroll
      for (int j = 0; j < (kT * kNMAX) / kThreads; ++j) {
        const int i = tid + j * kThreads, tt = i / kNMAX, n = i % kNMAX, t = t0 + tt;
        const bool ok = t < L && n < N;
        const size_t off = ok ? (size_t(b) * L + t) * ld_bc + n : 0;
        cp_async4(&sB[buf][tt][n], Bm + off, ok);
        cp_async4(&sC[buf][tt][n], Cm + off, ok);
      }
    }
    cp_async_commit();
  };

  const int n_tiles = (L + kT - 1) / kT;
  if (n_tiles > 0) stage(0, 0);
  for (int it = 0; it < n_tiles; ++it) {
    const int buf = it & 1, t0 = it * kT, tn = min(kT, L - t0);
    if (it + 1 < n_tiles) stage(t0 + kT, buf ^ 1);
    else cp_async_commit();
    cp_async_wait<1>();  // this tile landed (the next may still be in flight)
    __syncthreads();
    const TA* su = sU[buf];
    // Two steps; lane k finishes step s0 + k. Each lane computes one step's softplus and
    // the pair shares them by shuffles.
    auto steps2 = [&](int s0, int tn) {  // tn: the tile's length
      const int my = s0 + k;
      const float my_delta = softplus_fast(to_float(sDT[buf][swz2(my, c)]) + bias);
      float ypart[kKL];
#pragma unroll
      for (int j = 0; j < kKL; ++j) {
        const int tt = s0 + j, t = t0 + tt;
        const float delta = __shfl_sync(kFull, my_delta, group0 + j);
        ypart[j] = 0.0f;
        if (tt < tn) {  // uniform over the block
          if (chunk_states && tt % kSub == 0 && valid) {  // kT % kSub == 0: a chunk start
            float* cs = cs_lane + size_t(t / kSub) * cs_step;
            if (vec_save) {
              store_states<kNPL>(cs, h);  // 16-byte stores
            } else {
#pragma unroll
              for (int i = 0; i < kNPL; ++i)
                if (n0 + i < N) cs[i] = h[i];
            }
          }
          const float dlu = delta * to_float(su[swz2(tt, c)]);
          float Bt[kNPL], Ct[kNPL];
          load_states<kNPL>(&sB[buf][tt][n0], Bt);
          load_states<kNPL>(&sC[buf][tt][n0], Ct);
          float y0 = 0.0f, y1 = 0.0f;  // two chains (latency)
#pragma unroll
          for (int i = 0; i < kNPL; ++i) {
            h[i] = ex2_(delta * A2[i]) * h[i] + dlu * Bt[i];
            if (i % 2 == 0) y0 += Ct[i] * h[i];
            else y1 += Ct[i] * h[i];
          }
          ypart[j] = y0 + y1;
        }
      }
      int first = 0;
      reduce_scatter<1, 1, kKL, kKL>(ypart, lane, first);  // lane k: the sum of step s0 + k
      const float y = ypart[0];
      if (valid && my < tn) {
        const float uu = to_float(su[swz2(my, c)]), zz = to_float(sZ[buf][swz2(my, c)]);
        out_lane[size_t(t0 + my) * E] = from_float<TY>((y + Dv * uu) * zz * sigmoid_fast(zz));
      }
    };
    if (tn == kT) {  // full tile: unrolled, so shared-memory offsets are constants
#pragma unroll
      for (int s0 = 0; s0 < kT; s0 += kKL) steps2(s0, kT);
    } else {
      for (int s0 = 0; s0 < tn; s0 += kKL) steps2(s0, tn);
    }
    __syncthreads();  // the next iteration's copies overwrite this buffer
  }
  // h0 may alias h_last: each thread read its own slice above and writes it here.
  if (h_last && valid) {
#pragma unroll
    for (int i = 0; i < kNPL; ++i)
      if (n0 + i < N) h_last[state_off + n0 + i] = h[i];
  }
}

}  // namespace

// The 16-byte copies: rows of el channels (4 fp32, 8 bf16) line up.
static bool fwd_vec(int B, int L, int E, int N, int el, const void* u, const void* dt, const float* Bm,
                    const float* Cm, int ld_bc, const void* z, int ldz) {
  auto al = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  const size_t rows = size_t(B) * L, lim = size_t(1) << 31;
  return E % el == 0 && ldz % el == 0 && ld_bc % 4 == 0 && N == kNMAX && al(u) && al(dt) && al(z) && al(Bm) &&
         al(Cm) && rows * std::max(E, ldz) < lim && rows * ld_bc < lim;
}

bool forward_c8_reads_bf16(int B, int L, int E, int N, ConstOperand u, ConstOperand dt, const float* Bm,
                           const float* Cm, int ld_bc, ConstOperand z, int ldz) {
  return u.dtype == Dtype::bf16 && dt.dtype == Dtype::bf16 && z.dtype == Dtype::bf16 &&
         fwd_vec(B, L, E, N, 8, u.p, dt.p, Bm, Cm, ld_bc, z.p, ldz);
}

void launch_forward_c8(Ctx& c, int B, int L, int E, int N, ConstOperand u, ConstOperand dt, const float* dt_bias,
                       const float* A_log, const float* Bm, const float* Cm, int ld_bc, const float* D,
                       ConstOperand z, int ldz, Operand out, float* chunk_states, const float* h0, float* h_last) {
  const bool bf16 = u.dtype == Dtype::bf16;
  check(bf16 ? forward_c8_reads_bf16(B, L, E, N, u, dt, Bm, Cm, ld_bc, z, ldz)
             : dt.dtype == Dtype::f32 && z.dtype == Dtype::f32,
        "scan_forward: the chunk-8 kernel reads u, dt, z all fp32 or all bf16 (aligned)");
  dim3 grid(blocks_for(E, kC), B);
  with_operand(out, [&](auto* o) {
    using TY = std::remove_pointer_t<decltype(o)>;
    if (bf16) {
      using T = __nv_bfloat16;
      scan_forward_c8_kernel<TY, T><<<grid, kThreads, 0, c.stream>>>(
          true, L, E, N, static_cast<const T*>(u.p), static_cast<const T*>(dt.p), dt_bias, A_log, Bm, Cm, ld_bc, D,
          static_cast<const T*>(z.p), ldz, o, chunk_states, h0, h_last);
    } else {
      const bool vec = fwd_vec(B, L, E, N, 4, u.p, dt.p, Bm, Cm, ld_bc, z.p, ldz);
      scan_forward_c8_kernel<TY, float><<<grid, kThreads, 0, c.stream>>>(
          vec, L, E, N, u.f32(), dt.f32(), dt_bias, A_log, Bm, Cm, ld_bc, D, z.f32(), ldz, o, chunk_states, h0,
          h_last);
    }
  });
}

}  // namespace bhasa::cuda::scan_detail
