// One decode step (L = 1) of a Mamba mixer after in_proj: ssm_step does per channel
//   u = silu(conv(state, x)); conv state shift; delta = softplus(dt_proj(dbc[:R]) + bias);
//   h = exp(delta A) h + delta B u; y = (C.h + D u) silu(z)
// in one kernel (the unfused step ran conv, dt_proj and the scan as three): ssm_step_kernel
// for any shape, ssm_step4_kernel (float4 states) for few batch rows, ssm_step_tile_kernel
// (rows staged in shared memory, two phases) for B >= kTileMinB, and where it serves
// (B >= 16; m130's shape) ssm_step_rows.cu's kernel before all of these. The input
// side, dbc = u @ x_proj^T, is gemv.cu's GEMV with the conv staged in front; conv_decode
// here serves the shapes that does not. Both launch with programmatic dependent launch
// (cuda_common.cuh): the constants are loaded before pdl_wait.
// y is fp32 or bf16 (the kernels are templated on its element type Y; bf16 when the
// backend's decode_dtype asks for it, so out_proj's cuBLASLt reads y as written).
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/scan_common.cuh"  // cp.async helpers

#include <algorithm>

namespace bhasa::cuda {

namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kMaxK = 8;       // d_conv
constexpr int kStepThreads = 128;
constexpr int kLanes = 4;      // ssm_step lanes per channel

// u = silu(conv_b[e] + sum_k conv_w[e, k] [state[b, :, e], x[b, e]][k])
__device__ __forceinline__ float conv_u(int E, int K, const float* x, int ldx, const float* state,
                                        const float* w, const float* bias, int b, int e) {
  const int H = K - 1;
  const float* st = state + size_t(b) * H * E + e;
  float p = bias ? bias[e] : 0.0f;
  for (int j = 0; j < H; ++j) p += w[size_t(e) * K + j] * st[size_t(j) * E];
  p += w[size_t(e) * K + H] * x[size_t(b) * ldx + e];
  return p * sigmoidf_(p);
}

// xs = silu(conv_step(state, x)), state unchanged (ssm_decode_in where gemv.cu's conv
// staging does not serve; x_proj then runs through cuBLASLt).
__global__ void conv_decode_kernel(int B, int E, int K, const float* x, int ldx, const float* state,
                                   const float* conv_w, const float* conv_b, float* xs) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  pdl_trigger();
  pdl_wait();
  if (i >= B * E) return;
  xs[i] = conv_u(E, K, x, ldx, state, conv_w, conv_b, i / E, i % E);
}

// The conv state (H = K-1 rows, row stride E) takes x: row j := row j+1, the last := xv.
// win holds the old rows; the kLanes lanes of a channel share the stores (lane k: j % kLanes == k).
__device__ __forceinline__ void shift_conv_state(float* st, int E, int H, int k, const float (&win)[kMaxK], float xv) {
#pragma unroll
  for (int j = 0; j < kMaxK; ++j)
    if (j < H && j % kLanes == k) st[size_t(j) * E] = j + 1 < H ? win[j + 1] : xv;
}

// One channel (b, e) per kLanes lanes; lane k owns states n = k, k + 4, ... (J of them).
// torch (per channel): u = silu(conv(state, x)); state = cat(state, x)[1:]
//   delta = F.softplus(dbc[:R] @ dt_w[e] + dt_bias[e]); h = exp(delta * -exp(A_log[e])) * h + delta * B * u
//   y = (C @ h + D[e] * u) * F.silu(z)
template <int J, class Y>
__global__ void __launch_bounds__(kStepThreads)
ssm_step_kernel(int B, int E, int N, int R, int K, const float* __restrict__ x,
                const float* __restrict__ z, int ldxz, float* __restrict__ conv_state,
                const float* __restrict__ conv_w, const float* __restrict__ conv_b,
                const float* __restrict__ dbc, const float* __restrict__ dt_w,
                const float* __restrict__ dt_bias, const float* __restrict__ A_log,
                const float* __restrict__ Dp, float* __restrict__ h, Y* __restrict__ y) {
  const int gid = blockIdx.x * kStepThreads + threadIdx.x;
  const int k = gid % kLanes;
  const bool valid = gid / kLanes < B * E;
  const int ch = valid ? gid / kLanes : 0;  // inactive groups compute channel 0 and store nothing
  const int b = ch / E, e = ch % E, H = K - 1, P = R + 2 * N;
  pdl_trigger();
  pdl_wait();
  const float* db = dbc + size_t(b) * P;
  float d = 0.0f;
  for (int r = k; r < R; r += kLanes) d += db[r] * dt_w[size_t(e) * R + r];
  d += __shfl_xor_sync(kFull, d, 1);
  d += __shfl_xor_sync(kFull, d, 2);
  const float delta = softplusf_(d + dt_bias[e]);

  // conv: the window [state[b, :, e], x[b, e]], then the shifted state
  float* st = conv_state + size_t(b) * H * E + e;
  float win[kMaxK];
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) win[j] = j < H ? st[size_t(j) * E] : 0.0f;
  const float xv = x[size_t(b) * ldxz + e];
  float p = conv_b ? conv_b[e] : 0.0f;
#pragma unroll
  for (int j = 0; j < kMaxK; ++j)
    if (j < H) p += conv_w[size_t(e) * K + j] * win[j];
  p += conv_w[size_t(e) * K + H] * xv;
  const float u = p * sigmoidf_(p);
  __syncwarp();  // every lane of the group has read the old state
  if (valid) shift_conv_state(st, E, H, k, win, xv);

  const float du = delta * u;
  float yp = 0.0f;
  float* hc = h + size_t(ch) * N;
#pragma unroll
  for (int i = 0; i < J; ++i) {
    const int n = k + kLanes * i;
    if (n < N) {
      const float a = -expf(A_log[size_t(e) * N + n]);
      const float hv = expf(delta * a) * hc[n] + du * db[R + n];
      if (valid) hc[n] = hv;
      yp += db[R + N + n] * hv;
    }
  }
  yp += __shfl_xor_sync(kFull, yp, 1);
  yp += __shfl_xor_sync(kFull, yp, 2);
  if (valid && k == 0) {
    const float zz = z[size_t(b) * ldxz + e];
    y[size_t(b) * E + e] = from_float<Y>((yp + Dp[e] * u) * zz * sigmoidf_(zz));
  }
}

// The same with lane k owning the float4 chunks k, k + 4, ... of the channel's state
// (N % 4 == 0; J chunks per lane): a warp's state loads are 512 contiguous bytes.
// The constants (dt_w, A_log, conv weights, D, dt_bias) are fetched before pdl_wait,
// the step's inputs all together after it.
constexpr int kMaxR4 = 3;  // dt_w float4 per lane held in registers (R <= 48; more loop after)
// WB = batch rows per block. WB = 1: a block is 32 channels of one row b. WB = 4: 8
// channels of 4 rows, one row per warp, so the 4 warps read the same dt_w, A_log and
// conv_w rows (L1 hits): at B = 64 with WB = 1 every (b, e) re-read its channel's
// constants from L2, ~75 MB per step, and the kernel ran at ~1 TB/s.
template <int J, class Y>
__global__ void __launch_bounds__(kStepThreads)
ssm_step4_kernel(int B, int E, int N, int R, int K, int WB, const float* __restrict__ x,
                 const float* __restrict__ z, int ldxz, float* __restrict__ conv_state,
                 const float* __restrict__ conv_w, const float* __restrict__ conv_b,
                 const float* __restrict__ dbc, const float* __restrict__ dt_w,
                 const float* __restrict__ dt_bias, const float* __restrict__ A_log,
                 const float* __restrict__ Dp, float* __restrict__ h, Y* __restrict__ y) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, k = lane % kLanes, cg = lane / kLanes;
  const int cpb = kStepThreads / kLanes / WB;  // channels per block
  const int e_raw = blockIdx.x * cpb + (WB == 1 ? warp * 8 : 0) + cg;
  const int b_raw = blockIdx.y * WB + (WB == 1 ? 0 : warp);
  const bool valid = e_raw < E && b_raw < B;
  const int e = valid ? e_raw : 0, b = valid ? b_raw : 0;  // inactive lanes compute (0, 0), store nothing
  const int H = K - 1, P = R + 2 * N, N4 = N / 4, R4 = R / 4;
  float4 dtw[kMaxR4];
#pragma unroll
  for (int i = 0; i < kMaxR4; ++i) {
    const int c = k + kLanes * i;
    dtw[i] = c < R4 ? reinterpret_cast<const float4*>(dt_w + size_t(e) * R)[c] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float4 a4[J];
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = k + kLanes * j;
    a4[j] = c < N4 ? reinterpret_cast<const float4*>(A_log + size_t(e) * N)[c] : make_float4(0.f, 0.f, 0.f, 0.f);
    a4[j] = make_float4(-expf(a4[j].x), -expf(a4[j].y), -expf(a4[j].z), -expf(a4[j].w));  // A = -exp(A_log)
  }
  float cw[kMaxK];
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) cw[j] = j < K ? conv_w[size_t(e) * K + j] : 0.0f;
  const float cb = conv_b ? conv_b[e] : 0.0f, Dv = Dp[e], bias = dt_bias[e];
  pdl_trigger();
  pdl_wait();

  // every input at once, so that the loads are in flight together
  const float* db = dbc + size_t(b) * P;
  float* st = conv_state + size_t(b) * H * E + e;
  float* hc = h + (size_t(b) * E + e) * N;
  float4 dbr[kMaxR4];
  float win[kMaxK];
#pragma unroll
  for (int i = 0; i < kMaxR4; ++i) {
    const int c = k + kLanes * i;
    dbr[i] = c < R4 ? reinterpret_cast<const float4*>(db)[c] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) win[j] = j < H ? st[size_t(j) * E] : 0.0f;
  const float xv = x[size_t(b) * ldxz + e], zz = z[size_t(b) * ldxz + e];
  float4 h4[J], B4[J], C4[J];
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = k + kLanes * j;
    const bool in = c < N4;
    const float* bn = db + R + 4 * c;
    const float* cn = db + R + N + 4 * c;
    h4[j] = in ? reinterpret_cast<const float4*>(hc)[c] : make_float4(0.f, 0.f, 0.f, 0.f);
    B4[j] = in ? make_float4(bn[0], bn[1], bn[2], bn[3]) : make_float4(0.f, 0.f, 0.f, 0.f);
    C4[j] = in ? make_float4(cn[0], cn[1], cn[2], cn[3]) : make_float4(0.f, 0.f, 0.f, 0.f);
  }

  float d = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxR4; ++i) d += dbr[i].x * dtw[i].x + dbr[i].y * dtw[i].y + dbr[i].z * dtw[i].z + dbr[i].w * dtw[i].w;
  for (int r = 4 * (k + kLanes * kMaxR4); r < R; r += 4 * kLanes)  // R > 48: the rest, 4 at a time
    for (int i = 0; i < 4; ++i) d += db[r + i] * dt_w[size_t(e) * R + r + i];
  d += __shfl_xor_sync(kFull, d, 1);
  d += __shfl_xor_sync(kFull, d, 2);
  const float delta = softplusf_(d + bias);

  float p = cb;
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) p += cw[j] * (j < H ? win[j] : j == H ? xv : 0.0f);
  const float u = p * sigmoidf_(p);
  __syncwarp();  // every lane of the group has read the old state
  if (valid) shift_conv_state(st, E, H, k, win, xv);

  const float du = delta * u;
  float yp = 0.0f;
  auto upd = [&](float hv, float a, float bv, float cv) {
    const float hn = expf(delta * a) * hv + du * bv;
    yp += cv * hn;
    return hn;
  };
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = k + kLanes * j;
    float4 hn;
    hn.x = upd(h4[j].x, a4[j].x, B4[j].x, C4[j].x);
    hn.y = upd(h4[j].y, a4[j].y, B4[j].y, C4[j].y);
    hn.z = upd(h4[j].z, a4[j].z, B4[j].z, C4[j].z);
    hn.w = upd(h4[j].w, a4[j].w, B4[j].w, C4[j].w);
    if (valid && c < N4) reinterpret_cast<float4*>(hc)[c] = hn;
  }
  yp += __shfl_xor_sync(kFull, yp, 1);
  yp += __shfl_xor_sync(kFull, yp, 2);
  if (valid && k == 0) y[size_t(b) * E + e] = from_float<Y>((yp + Dv * u) * zz * sigmoidf_(zz));
}

// Many batch rows (B >= kTileMinB): a block owns channels e0 .. e0 + 63 of up to kMaxRB
// rows. Right after pdl_wait it copies all of its rows' inputs into shared memory with
// cp.async (no registers held while they fly; dt_w's (64, R) tile is copied before
// pdl_wait: a constant), one wait, then
//   phase 1, thread (r, c), once per (b, e): delta = softplus(dbc[b, :R] . dt_w[e] + bias),
//     u = silu(conv), the conv state shift, D u and silu(z), kept in shared memory;
//   phase 2, thread (c, k), lane k of the channel's kLanes: h = exp(delta A) h + delta u B
//     for its float4 chunks k, k + 4, .. (J of them) of every row, the rows' chains
//     interleaved; C . h summed over the lanes; y = (C . h + D u) silu(z).
// ssm_step4_kernel's lanes each redo their channel's scalar work (softplus, conv, two
// sigmoids: most of its instructions), and at B = 64 it is instruction-bound: this
// kernel executes ~half the instructions (NOTES.md, ncu). exp(delta A) is
// ex2.approx(delta * A log2e): 2 ulp, no further from exp than the CPU's fast_expf.
// torch (per row b, channel e): as ssm_step_kernel.
constexpr int kTileE = 64, kTileThreads = kTileE * kLanes;
constexpr int kMaxRB = 4;       // rows a block: phase 1 has a thread per (row, channel)
constexpr int kTileMinB = 32;   // measured at B = 8: 2.8 us against 2.2 for ssm_step4_kernel; B = 32: 4.4 vs 5.5
// shared memory floats, per row: h (64, N) | x (64) | z (64) | conv (K-1, 64) | dbc (P)
__host__ __device__ inline int tile_row_floats(int N, int K, int P) { return kTileE * (N + 2 + K - 1) + P; }
__host__ __device__ inline int dt_stride(int R) { return R + 4; }  // R % 32 == 16 (48): conflict-free LDS.128
// a block: dt_w tile (64, R + 4) | rows (RB, tile_row_floats) | scalars (RB, 64) float4
__host__ __device__ inline int tile_floats(int N, int K, int R, int RB) {
  return kTileE * dt_stride(R) + RB * (tile_row_floats(N, K, R + 2 * N) + 4 * kTileE);
}

template <int J, class Y>
__global__ void __launch_bounds__(kTileThreads, 3)  // 3 blocks an SM: 80 registers
ssm_step_tile_kernel(int B, int E, int N, int R, int K, int RB, const float* __restrict__ x,
                     const float* __restrict__ z, int ldxz, float* __restrict__ conv_state,
                     const float* __restrict__ conv_w, const float* __restrict__ conv_b,
                     const float* __restrict__ dbc, const float* __restrict__ dt_w,
                     const float* __restrict__ dt_bias, const float* __restrict__ A_log,
                     const float* __restrict__ Dp, float* __restrict__ h, Y* __restrict__ y) {
  extern __shared__ __align__(16) float smem[];
  const int H = K - 1, P = R + 2 * N, N4 = N / 4, R4 = R / 4, RS = dt_stride(R);
  const int rowf = tile_row_floats(N, K, P);
  const int e0 = blockIdx.x * kTileE, b0 = blockIdx.y * RB, nr = min(RB, B - b0);
  float* sdt = smem;                                    // (64, RS)
  float* srow = smem + kTileE * RS;                     // (RB, rowf)
  float4* ssc = reinterpret_cast<float4*>(srow + size_t(RB) * rowf);  // (RB, 64): delta, du, D u, silu(z)

  // constants: dt_w's tile into shared memory, this thread's channel constants into registers
  for (int i = threadIdx.x; i < kTileE * R4; i += kTileThreads) {
    const int c = i / R4, q = i % R4;
    cp_async16(sdt + c * RS + 4 * q, dt_w + size_t(e0 + c) * R + 4 * q, true);
  }
  cp_async_commit();
  const int r1 = threadIdx.x / kTileE, c1 = threadIdx.x % kTileE, e1 = e0 + c1;  // phase 1
  float cw[kMaxK];
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) cw[j] = j < K ? conv_w[size_t(e1) * K + j] : 0.0f;
  const float cb = conv_b ? conv_b[e1] : 0.0f, Dv = Dp[e1], bias = dt_bias[e1];
  const int c = threadIdx.x / kLanes, k = threadIdx.x % kLanes, e = e0 + c;        // phase 2
  float4 a4[J];  // A log2(e), A = -exp(A_log)
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int q = k + kLanes * j;
    a4[j] = q < N4 ? reinterpret_cast<const float4*>(A_log + size_t(e) * N)[q] : make_float4(0.f, 0.f, 0.f, 0.f);
    a4[j] = make_float4(-expf(a4[j].x) * kLog2e, -expf(a4[j].y) * kLog2e,
                        -expf(a4[j].z) * kLog2e, -expf(a4[j].w) * kLog2e);
  }
  pdl_trigger();
  pdl_wait();

  // every row's inputs in flight at once: 16-byte copies; x, z and the K-1 conv rows
  // are 16 chunks of 4 channels each, then dbc
  for (int r = 0; r < nr; ++r) {
    const int b = b0 + r;
    float* s = srow + size_t(r) * rowf;
    const float* hsrc = h + (size_t(b) * E + e0) * N;
    for (int i = threadIdx.x; i < kTileE * N4; i += kTileThreads)
      cp_async16(s + 4 * i, hsrc + 4 * i, true);
    for (int i = threadIdx.x; i < (K + 1) * kTileE / 4 + P / 4; i += kTileThreads) {
      const int seg = i / (kTileE / 4), q = i % (kTileE / 4);
      const float* src = seg == 0 ? x + size_t(b) * ldxz + e0 + 4 * q
                         : seg == 1 ? z + size_t(b) * ldxz + e0 + 4 * q
                         : seg <= K ? conv_state + (size_t(b) * H + seg - 2) * E + e0 + 4 * q
                                    : dbc + size_t(b) * P + 4 * (i - (K + 1) * kTileE / 4);
      cp_async16(s + kTileE * N + 4 * i, src, true);
    }
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  // phase 1: the channel's scalars, once per (row r1, channel c1)
  if (r1 < nr) {
    const int b = b0 + r1;
    const float* sx = srow + size_t(r1) * rowf + kTileE * N;  // x (64) | z (64) | conv (H, 64) | dbc (P)
    const float4* db4 = reinterpret_cast<const float4*>(sx + (K + 1) * kTileE);
    const float4* w4 = reinterpret_cast<const float4*>(sdt + c1 * RS);
    float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;  // four chains
    for (int q = 0; q < R4; ++q) {
      const float4 v = db4[q], w = w4[q];
      d0 += v.x * w.x, d1 += v.y * w.y, d2 += v.z * w.z, d3 += v.w * w.w;
    }
    const float delta = softplusf_((d0 + d1) + (d2 + d3) + bias);
    const float xv = sx[c1], zz = sx[kTileE + c1];
    float p = cb;
#pragma unroll
    for (int j = 0; j < kMaxK; ++j)
      if (j < K) p += cw[j] * (j < H ? sx[(2 + j) * kTileE + c1] : xv);
    const float u = p * sigmoidf_(p);
    float* st = conv_state + size_t(b) * H * E + e1;  // the shifted window
    for (int j = 0; j < H; ++j) st[size_t(j) * E] = j + 1 < H ? sx[(3 + j) * kTileE + c1] : xv;
    ssc[r1 * kTileE + c1] = make_float4(delta, delta * u, Dv * u, zz * sigmoidf_(zz));
  }
  __syncthreads();

  // phase 2: the states, all rows' chains interleaved
  float yp[kMaxRB];
#pragma unroll
  for (int r = 0; r < kMaxRB; ++r) {
    yp[r] = 0.0f;
    if (r < nr) {
      const int b = b0 + r;
      const float* s = srow + size_t(r) * rowf;
      const float* db = s + kTileE * (N + K + 1);
      const float4 sc = ssc[r * kTileE + c];
      float* hc = h + (size_t(b) * E + e) * N;
#pragma unroll
      for (int j = 0; j < J; ++j) {
        const int q = k + kLanes * j;
        if (q < N4) {
          const float4 hv = reinterpret_cast<const float4*>(s + c * N)[q];
          const float4 bv = reinterpret_cast<const float4*>(db + R)[q];
          const float4 cv = reinterpret_cast<const float4*>(db + R + N)[q];
          float4 hn;
          hn.x = ex2_(sc.x * a4[j].x) * hv.x + sc.y * bv.x;
          hn.y = ex2_(sc.x * a4[j].y) * hv.y + sc.y * bv.y;
          hn.z = ex2_(sc.x * a4[j].z) * hv.z + sc.y * bv.z;
          hn.w = ex2_(sc.x * a4[j].w) * hv.w + sc.y * bv.w;
          yp[r] += cv.x * hn.x + cv.y * hn.y + cv.z * hn.z + cv.w * hn.w;
          reinterpret_cast<float4*>(hc)[q] = hn;
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kMaxRB; ++r) {
    yp[r] += __shfl_xor_sync(kFull, yp[r], 1);
    yp[r] += __shfl_xor_sync(kFull, yp[r], 2);
  }
#pragma unroll
  for (int r = 0; r < kMaxRB; ++r)
    if (r < nr && k == 0) {
      const float4 sc = ssc[r * kTileE + c];
      y[size_t(b0 + r) * E + e] = from_float<Y>((yp[r] + sc.z) * sc.w);
    }
}

void check_shapes(int E, int K) {
  check(K >= 1 && K <= kMaxK, "decode step: d_conv = " + std::to_string(K) +
                                  " is not supported by the CUDA backend (1.." + std::to_string(kMaxK) + ")");
  check(E % 4 == 0, "decode step: d_inner must be a multiple of 4 on the CUDA backend");
}

// The launch for y (B, E) in fp32 or bf16 (Y): the kernels' y store rounds once, so a
// bf16 y is out_proj's cuBLASLt operand as it is (no rounding pass in between).
template <class Y>
void step_typed(Ctx& c, int B, int E, int N, int R, int K, const float* x, const float* z, int ldxz,
                float* conv_state, const float* conv_w, const float* conv_b, const float* dbc,
                const float* dt_w, const float* dt_bias, const float* A_log, const float* D, float* h, Y* y) {
  const unsigned blocks = blocks_for(size_t(B) * E * kLanes, kStepThreads);
  auto aligned16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  auto go = [&](auto kernel) {
    launch(kernel, dim3(blocks), dim3(kStepThreads), 0, c.stream, c.pdl, B, E, N, R, K, x, z, ldxz,
           conv_state, conv_w, conv_b, dbc, dt_w, dt_bias, A_log, D, h, y);
  };
  const bool vec = N % 4 == 0 && R % 4 == 0 && aligned16(A_log) && aligned16(h) && aligned16(dt_w) &&
                   aligned16(dbc);
  if (vec && B >= kTileMinB && E % kTileE == 0 && ldxz % 4 == 0 && aligned16(x) && aligned16(z) &&
      aligned16(conv_state) && tile_floats(N, K, R, 1) * sizeof(float) <= 48 * 1024) {
    // rows a block: all blocks resident at once (3 an SM) where B allows, at most
    // kMaxRB and 48 KB of shared memory (B = 64: 4 rows, 384 blocks; 2 rows: 9.7 us, 4: 7.9)
    int RB = (B * (E / kTileE) + 3 * c.sm_count - 1) / (3 * c.sm_count);
    RB = std::min({RB, B, kMaxRB});
    while (RB > 1 && tile_floats(N, K, R, RB) * sizeof(float) > 48 * 1024) --RB;
    const dim3 grid(E / kTileE, (B + RB - 1) / RB);
    const size_t smem = size_t(tile_floats(N, K, R, RB)) * sizeof(float);
    auto go_tile = [&](auto kernel) {
      launch(kernel, grid, dim3(kTileThreads), smem, c.stream, c.pdl, B, E, N, R, K, RB, x, z, ldxz,
             conv_state, conv_w, conv_b, dbc, dt_w, dt_bias, A_log, D, h, y);
    };
    if (N <= 16) go_tile(ssm_step_tile_kernel<1, Y>);
    else if (N <= 32) go_tile(ssm_step_tile_kernel<2, Y>);
    else go_tile(ssm_step_tile_kernel<4, Y>);
  } else if (vec) {
    const int WB = B >= 4 ? 4 : 1, cpb = kStepThreads / kLanes / WB;
    const dim3 grid((E + cpb - 1) / cpb, (B + WB - 1) / WB);
    auto go4 = [&](auto kernel) {
      launch(kernel, grid, dim3(kStepThreads), 0, c.stream, c.pdl, B, E, N, R, K, WB, x, z, ldxz,
             conv_state, conv_w, conv_b, dbc, dt_w, dt_bias, A_log, D, h, y);
    };
    if (N <= 16) go4(ssm_step4_kernel<1, Y>);
    else if (N <= 32) go4(ssm_step4_kernel<2, Y>);
    else go4(ssm_step4_kernel<4, Y>);
  } else if (N <= 4) go(ssm_step_kernel<1, Y>);
  else if (N <= 8) go(ssm_step_kernel<2, Y>);
  else if (N <= 16) go(ssm_step_kernel<4, Y>);
  else if (N <= 32) go(ssm_step_kernel<8, Y>);
  else go(ssm_step_kernel<16, Y>);
}

}  // namespace

void conv_decode(Ctx& c, int B, int E, int K, const float* x, int ldx, const float* conv_state,
                 const float* conv_w, const float* conv_b, float* xs) {
  check_shapes(E, K);
  if (B == 0) return;
  launch(conv_decode_kernel, dim3(blocks_for(size_t(B) * E, 256)), dim3(256), 0, c.stream, c.pdl, B, E, K,
         x, ldx, conv_state, conv_w, conv_b, xs);
  BHASA_LAUNCH_CHECK("conv_decode");
}

void ssm_decode_step(Ctx& c, int B, int E, int N, int R, int K, const float* x, const float* z,
                     int ldxz, float* conv_state, const float* conv_w, const float* conv_b,
                     const float* dbc, const float* dt_w, const float* dt_bias,
                     const float* A_log, const float* D, float* h, Operand y) {
  check_shapes(E, K);
  check(N >= 1 && N <= 64, "decode step: d_state must be 1..64 on the CUDA backend");
  if (B == 0) return;
  if (ssm_step_rows(c, B, E, N, R, K, x, z, ldxz, conv_state, conv_w, conv_b, dbc, dt_w, dt_bias, A_log, D, h, y)) {
    BHASA_LAUNCH_CHECK("ssm_decode_step");
    return;
  }
  with_operand(y, [&](auto* yt) {
    step_typed(c, B, E, N, R, K, x, z, ldxz, conv_state, conv_w, conv_b, dbc, dt_w, dt_bias, A_log, D, h, yt);
  });
  BHASA_LAUNCH_CHECK("ssm_decode_step");
}

}  // namespace bhasa::cuda
