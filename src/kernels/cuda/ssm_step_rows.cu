// ssm_decode_step (ssm_step.cu) for many batch rows: ssm_step_rows_kernel, one kernel per
// step as the others there, computing per (row b, channel e)
//   u = silu(conv(state, x)); conv state shift; delta = softplus(dt_proj(dbc[:R]) + bias);
//   h = exp(delta A) h + delta B u; y = (C.h + D u) silu(z)
// with the state h (B, E, N) and the conv state (B, K-1, E) fp32, y fp32 or bf16 (Y).
#include <cooperative_groups.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/scan_common.cuh"  // ex2_, softplus_fast, sigmoid_fast, cp.async

namespace cg = cooperative_groups;

namespace bhasa::cuda {

namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kLanes = 4;  // lanes per channel, and batch rows per warp

// B >= 16 (ssm_step_rows_kernel): a warp owns 8 channels x 4 batch rows; lane k of a
// channel's 4 lanes
//   phase 1: the channel's scalars for row k (delta, u, the conv state shift, D u,
//     silu(z)): once per (row, channel), as the tile kernel, but in registers; the dt dot
//     as lane partials over the 4 rows (lane k holds dt_w's float4 chunks k, k + 4, .. in
//     registers), summed and scattered to row k's lane by 3 shuffles;
//   phase 2: the float4 chunks k, k + 4, .. (J of them) of each row's state: delta and
//     delta u of row r come from lane r by shuffle, C . h is summed and scattered back the
//     same way, so lane k writes y of row k.
// Shared memory holds only dbc's 4 rows (B and C are read by every channel), one barrier
// after their copy. Every state load is issued before pdl_wait (Early; BHASA_SSM_ROWS_EARLY=0:
// right after it), ahead of the dbc copy and phase 1 (which does not need h). The scalar
// functions are scan_common.cuh's
// (softplus_fast, sigmoid_fast: 2 ulp, as the scan's) and the decay ex2.approx, as the tile
// kernel; offsets in 32 bits (B E N < 2^31). Measured (NOTES.md), B = 64: 5.7 us against
// the tile kernel's 7.8; slower: 2 row groups a warp (6.5), loading h before pdl_wait with
// the trigger after the stores (7.7: the next kernel no longer starts early; the trigger
// need not wait, see Early), and B = 12 (2.4 against ssm_step4_kernel's 2.3).
// torch (per row b, channel e): as ssm_step.cu's ssm_step_kernel.
constexpr int kRowsWarps = 4;  // warps a block (the Sum kernels: sum_shape)
constexpr int kRowsMaxK = 4;  // d_conv (registers: the conv weights and window)

// v[r] summed over the 4 lanes of a channel; lane k gets row k's sum (rows 0..3)
__device__ __forceinline__ float sum4_scatter(const float (&v)[kLanes], int k) {
  const bool hi = k & 2, odd = k & 1;
  float a = hi ? v[2] : v[0], b = hi ? v[3] : v[1];               // rows (k & 2) + 0, 1
  a += __shfl_xor_sync(kFull, hi ? v[0] : v[2], 2);
  b += __shfl_xor_sync(kFull, hi ? v[1] : v[3], 2);
  return (odd ? b : a) + __shfl_xor_sync(kFull, odd ? a : b, 1);  // row (k & 2) + odd
}

// A load issued where it stands: x and z, read through __restrict__ const pointers, were
// otherwise sunk below the barrier after the dbc copy (a second L2 round trip in a row).
__device__ __forceinline__ float ld_now(const float* p) {
  float v;
  asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(v) : "l"(p));
  return v;
}

// J state chunks a lane (N <= 16 J), RJ dt_w chunks a lane (R <= 16 RJ)
// U: x holds u already (the conv done by in_proj's epilogue, decode_mma_norm_conv), the conv
// state is not touched.
// Sum: dbc is x_proj's xtiles partials (xtiles, B, P), xstride floats apart, made by in_proj's
// epilogue (XProjFold), summed here in tile order: by each block for its 4 rows, or with
// clusters (sum_shape) each block of a cluster (the same rows, other channels) sums a share
// of the items and copies the other shares from the others' shared memory.
// W: warps a block (8 channels each).
template <int J, int RJ, class Y, bool Early, bool U, bool Sum, int W>
__global__ void __launch_bounds__(32 * W, (J == 1 ? 24 : 16) / W)  // W = 4, B = 64: 768 blocks, one wave
ssm_step_rows_kernel(int B, int E, int N, int R, int K, const float* __restrict__ x,
                     const float* __restrict__ z, int ldxz, float* __restrict__ conv_state,
                     const float* __restrict__ conv_w, const float* __restrict__ conv_b,
                     const float* __restrict__ dbc, const float* __restrict__ dt_w,
                     const float* __restrict__ dt_bias, const float* __restrict__ A_log,
                     const float* __restrict__ Dp, float* __restrict__ h, Y* __restrict__ y, int xtiles,
                     int xstride) {
  extern __shared__ __align__(16) float sdb[];  // (4, P): dbc of the block's rows
  const int k = threadIdx.x % kLanes;
  constexpr int kRowsThreads = 32 * W, kRowsE = 8 * W;  // threads, channels a block
  const int e_raw = blockIdx.x * kRowsE + threadIdx.x / kLanes;
  const bool valid = e_raw < E;
  const int e = valid ? e_raw : 0;  // inactive channels compute channel 0 and store nothing
  const int b0 = blockIdx.y * kLanes, nr = min(kLanes, B - b0);  // the block's rows b0 .. b0 + nr - 1
  const bool mine = k < nr;         // lane k's phase-1 row b1 exists
  const int b1 = b0 + (mine ? k : 0);  // (absent rows read row b0)
  const int H = K - 1, P = R + 2 * N, N4 = N / 4, R4 = R / 4;

  float4 dtw[RJ];
#pragma unroll
  for (int i = 0; i < RJ; ++i) {
    const int q = k + kLanes * i;
    dtw[i] = q < R4 ? reinterpret_cast<const float4*>(dt_w + unsigned(e) * R)[q] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float4 a4[J];  // A_log; A log2(e) (A = -exp(A_log)) once the states' loads are out
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int q = k + kLanes * j;
    a4[j] = q < N4 ? reinterpret_cast<const float4*>(A_log + unsigned(e) * N)[q] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float cw[kRowsMaxK];
#pragma unroll
  for (int j = 0; j < kRowsMaxK; ++j) cw[j] = !U && j < K ? conv_w[unsigned(e) * K + j] : 0.0f;
  const float cb = !U && conv_b ? conv_b[e] : 0.0f, Dv = Dp[e], bias = dt_bias[e];
  // Early: the states before pdl_wait. Within a step only this kernel writes this layer's h
  // and conv state, and the previous step's kernels have ended before this step's launch
  // (the cut in embedding_prenorm_kernel), so the kernels still running cannot change them.
  if (!Early) {
    pdl_trigger();
    pdl_wait();
  }

  // the step's inputs, all in flight at once: h of the 4 rows (this lane's chunks), the
  // conv window, x and z of row b1; then dbc's rows
  float4 h4[kLanes][J];
#pragma unroll
  for (int r = 0; r < kLanes; ++r)
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int q = k + kLanes * j;
      h4[r][j] = r < nr && q < N4 ? reinterpret_cast<const float4*>(h + (unsigned(b0 + r) * E + e) * N)[q]
                                  : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  float win[kRowsMaxK];
#pragma unroll
  for (int j = 0; j < kRowsMaxK; ++j) win[j] = !U && j < H ? conv_state[(unsigned(b1) * H + j) * E + e] : 0.0f;
  if (Early) {
    pdl_trigger();
    pdl_wait();
  }
  const float xv = ld_now(x + unsigned(b1) * ldxz + e), zz = ld_now(z + unsigned(b1) * ldxz + e);
  // dbc's rows into shared memory (after the state loads: ptxas otherwise moved the copy's
  // wait above them)
  const int P4 = P / 4;
  if (!Sum) {
    for (int i = threadIdx.x; i < kLanes * P4; i += kRowsThreads) {
      const int r = i / P4;
      cp_async16(sdb + 4 * i, dbc + unsigned(b0 + min(r, nr - 1)) * P + 4 * (i - r * P4), r < nr);
    }
    cp_async_commit();
  } else {
    // thread t sums item it = t % per of the share over the tiles q = t / per, q + TP, ..
    // (TP = kRowsThreads / per phases; consecutive threads read consecutive 16-byte items of a
    // tile, all of a thread's loads in flight), then the TP phases in order from shared memory
    cg::cluster_group cluster = cg::this_cluster();
    const int CS = cluster.num_blocks(), cr = cluster.block_rank(), items = kLanes * P4;
    const int per = (items + CS - 1) / CS, TP = max(1, kRowsThreads / per);
    float4* phase = reinterpret_cast<float4*>(sdb + kLanes * P);  // (TP, per)
    if (threadIdx.x < TP * per) {
      const int i = threadIdx.x % per, q = threadIdx.x / per, it = cr * per + i;
      if (it < items) {
        const int r = it / P4;
        const float* src = dbc + unsigned(b0 + min(r, nr - 1)) * P + 4 * (it - r * P4);
        float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int t0 = q; t0 < xtiles; t0 += 8 * TP) {
          float4 v[8];
#pragma unroll
          for (int j = 0; j < 8; ++j)
            v[j] = t0 + j * TP < xtiles ? __ldcg(reinterpret_cast<const float4*>(src + size_t(t0 + j * TP) * xstride))
                                        : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
          for (int j = 0; j < 8; ++j) s.x += v[j].x, s.y += v[j].y, s.z += v[j].z, s.w += v[j].w;
        }
        phase[q * per + i] = s;
      }
    }
    __syncthreads();
    if (threadIdx.x < per && cr * per + int(threadIdx.x) < items) {
      float4 s = phase[threadIdx.x];
      for (int q = 1; q < TP; ++q) {
        const float4 v = phase[q * per + threadIdx.x];
        s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
      }
      *reinterpret_cast<float4*>(sdb + 4 * (cr * per + threadIdx.x)) = s;
    }
    if (CS > 1) {
      cluster.sync();  // every share in its block
      for (int i = threadIdx.x; i < items; i += kRowsThreads)
        if (i / per != cr)
          *reinterpret_cast<float4*>(sdb + 4 * i) =
              *reinterpret_cast<const float4*>(cluster.map_shared_rank(sdb, i / per) + 4 * i);
    }  // (the barrier below, before phase 1, makes sdb whole)
  }
#pragma unroll
  for (int j = 0; j < J; ++j) {  // (before pdl_wait, this wait for A_log held the state loads back)
    a4[j] = make_float4(-ex2_(a4[j].x * kLog2e) * kLog2e, -ex2_(a4[j].y * kLog2e) * kLog2e,
                        -ex2_(a4[j].z * kLog2e) * kLog2e, -ex2_(a4[j].w * kLog2e) * kLog2e);
  }
  cp_async_wait<0>();
  __syncthreads();

  // phase 1: delta of row k from the 4 lanes' partial dots
  float d[kLanes];
#pragma unroll
  for (int r = 0; r < kLanes; ++r) {
    d[r] = 0.0f;
    const float4* db4 = reinterpret_cast<const float4*>(sdb + r * P);
#pragma unroll
    for (int i = 0; i < RJ; ++i) {
      const int q = k + kLanes * i;
      if (q < R4) {
        const float4 v = db4[q];
        d[r] += v.x * dtw[i].x + v.y * dtw[i].y + v.z * dtw[i].z + v.w * dtw[i].w;
      }
    }
  }
  const float delta = scan_detail::softplus_fast(sum4_scatter(d, k) + bias);
  float p = cb;
#pragma unroll
  for (int j = 0; j < kRowsMaxK; ++j)
    if (j < K) p += cw[j] * (j < H ? win[j] : xv);
  const float u = U ? xv : p * sigmoid_fast(p);
  if (!U && valid && mine)
#pragma unroll
    for (int j = 0; j < kRowsMaxK; ++j)
      if (j < H) conv_state[(unsigned(b1) * H + j) * E + e] = j + 1 < H ? win[j + 1] : xv;
  const float du = delta * u;

  // phase 2: the 4 rows' state chunks
  float yp[kLanes];
#pragma unroll
  for (int r = 0; r < kLanes; ++r) {
    yp[r] = 0.0f;
    if (r < nr) {  // uniform over the block
      const float dr = __shfl_sync(kFull, delta, r, kLanes), dur = __shfl_sync(kFull, du, r, kLanes);
      const float* db = sdb + r * P;
      float4* hc = reinterpret_cast<float4*>(h + (unsigned(b0 + r) * E + e) * N);
#pragma unroll
      for (int j = 0; j < J; ++j) {
        const int q = k + kLanes * j;
        if (q < N4) {
          const float4 bv = reinterpret_cast<const float4*>(db + R)[q];
          const float4 cv = reinterpret_cast<const float4*>(db + R + N)[q];
          const float4 hv = h4[r][j];
          float4 hn;
          hn.x = ex2_(dr * a4[j].x) * hv.x + dur * bv.x;
          hn.y = ex2_(dr * a4[j].y) * hv.y + dur * bv.y;
          hn.z = ex2_(dr * a4[j].z) * hv.z + dur * bv.z;
          hn.w = ex2_(dr * a4[j].w) * hv.w + dur * bv.w;
          yp[r] += cv.x * hn.x + cv.y * hn.y + cv.z * hn.z + cv.w * hn.w;
          if (valid) hc[q] = hn;
        }
      }
    }
  }
  const float ys = sum4_scatter(yp, k);
  if (valid && mine) y[unsigned(b1) * E + e] = from_float<Y>((ys + Dv * u) * (zz * sigmoid_fast(zz)));
  // Sum: no block leaves while another may still read its share (nothing to order: relaxed)
  if (Sum && cg::this_cluster().num_blocks() > 1)
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\nbarrier.cluster.wait.aligned;" ::: "memory");
}

// BHASA_SSM_ROWS_MIN_B (read once; default 16): the smallest B for ssm_step_rows_kernel,
// for A/B timing (e.g. 1000: never, the tile kernel and ssm_step4_kernel as before).
int rows_min_b() {
  static const int v = [] { const char* s = std::getenv("BHASA_SSM_ROWS_MIN_B"); return s ? std::atoi(s) : 16; }();
  return v;
}

// The states loaded before pdl_wait (Early), unless BHASA_SSM_ROWS_EARLY=0 (read once). H200,
// m130 decode, ms a step: B = 16 0.440 -> 0.417, B = 32 0.500 -> 0.473, B = 64 0.622 -> 0.608.
bool rows_early() {
  static const bool v = [] { const char* s = std::getenv("BHASA_SSM_ROWS_EARLY"); return !s || std::atoi(s) != 0; }();
  return v;
}

// The Sum kernels' blocks: warps (4, 8 or 16; channels 8 a warp) and clusters (1, 2, 4 or 8
// blocks summing the partials together, each a share). Unclustered, each block reads all the
// tiles of its 4 rows (~30 KB at m130): wider blocks mean fewer such reads, as long as the
// blocks fit in one wave (16 warps: one block an SM). H200, m130 decode, ms a step (x_proj
// unfolded: B = 16 0.378, 32 0.423, 48 0.486, 64 0.531), warps x cluster:
//   B = 16: 4 x 8 0.362, 4 x 1 0.380, 8 x 1 0.377, 16 x 1 0.355, 16 x 2 0.362;
//   B = 32: 4 x 8 0.419, 8 x 1 0.410, 16 x 1 0.398, 16 x 2 0.410;
//   B = 48: 4 x 4 0.475, 8 x 1 0.462, 8 x 2 0.458, 16 x 1 0.510 (two waves);
//   B = 64: 4 x 2 0.515, 4 x 8 0.617 (with 768 blocks, large clusters no longer fit beside the
//   kernels still running), 8 x 1 0.493, 8 x 2 0.501, 16 x 1 0.563 (two waves).
// BHASA_SSM_ROWS_WARPS / BHASA_XSUM_CLUSTER (read once) override.
struct SumShape {
  int warps, cluster;
};
SumShape sum_shape(int B) {
  static const int warps = [] { const char* s = std::getenv("BHASA_SSM_ROWS_WARPS"); return s ? std::atoi(s) : 0; }();
  static const int cluster = [] { const char* s = std::getenv("BHASA_XSUM_CLUSTER"); return s ? std::atoi(s) : 0; }();
  // (clusters of 2 at B = 48 were faster until the products' split-K partials were pushed:
  // then 0.441 -> 0.421 ms a step without them, session 10)
  SumShape t = B <= 32 ? SumShape{16, 1} : SumShape{8, 1};
  if (warps > 0) t.warps = warps >= 16 ? 16 : warps >= 8 ? 8 : 4;
  if (cluster > 0) t.cluster = cluster >= 8 ? 8 : cluster >= 4 ? 4 : cluster >= 2 ? 2 : 1;
  return t;
}

}  // namespace

bool ssm_step_rows_u_serves(int B, int E, int N, int R, int K, int ldxz, const float* dbc, const float* dt_w,
                            const float* A_log, const float* h) {
  return B >= 1 && N % 4 == 0 && N <= 32 && R % 4 == 0 && R <= 64 && K <= kRowsMaxK &&
         aligned16(A_log) && aligned16(h) && aligned16(dt_w) && aligned16(dbc) &&
         size_t(B) * std::max(size_t(E) * std::max(N, K), size_t(ldxz)) < (size_t(1) << 31);  // 32-bit offsets
}

bool ssm_step_rows_serves(int B, int E, int N, int R, int K, int ldxz, const float* dbc, const float* dt_w,
                          const float* A_log, const float* h) {
  return B >= rows_min_b() && ssm_step_rows_u_serves(B, E, N, R, K, ldxz, dbc, dt_w, A_log, h);
}

namespace {

template <bool U>
bool rows_step(Ctx& c, int B, int E, int N, int R, int K, const float* x, const float* z, int ldxz,
               float* conv_state, const float* conv_w, const float* conv_b, const float* dbc, const float* dt_w,
               const float* dt_bias, const float* A_log, const float* D, float* h, Operand y, int xtiles = 1) {
  if (!(U ? ssm_step_rows_u_serves : ssm_step_rows_serves)(B, E, N, R, K, ldxz, dbc, dt_w, A_log, h)) return false;
  const SumShape sum = xtiles > 1 ? sum_shape(B) : SumShape{kRowsWarps, 1};
  const int W = sum.warps, threads = 32 * W;  // warps a block
  const dim3 grid((E + 8 * W - 1) / (8 * W), (B + kLanes - 1) / kLanes);
  // (Sum: then the phases' sums, at most a float4 a thread)
  const size_t smem = size_t(kLanes) * (R + 2 * N) * sizeof(float) + (xtiles > 1 ? threads * 16 : 0);
  int cluster = sum.cluster;  // (or the largest power of 2 below it that divides grid.x)
  while (grid.x % cluster) cluster /= 2;
  const int xstride = B * (R + 2 * N);
  with_operand(y, [&](auto* yt) {
    using Y = std::remove_pointer_t<decltype(yt)>;
    auto go = [&](auto kernel) {
      launch_clustered(kernel, grid, dim3(threads), smem, c.stream, c.pdl, cluster, B, E, N, R, K, x, z, ldxz,
                       conv_state, conv_w, conv_b, dbc, dt_w, dt_bias, A_log, D, h, yt, xtiles, xstride);
    };
    auto pick_w = [&](auto early, auto summed, auto w) {  // (std::integral_constant)
      if (N <= 16 && R <= 48) go(ssm_step_rows_kernel<1, 3, Y, early(), U, U && summed(), w()>);
      else go(ssm_step_rows_kernel<2, 4, Y, early(), U, U && summed(), w()>);
    };
    auto pick = [&](auto early, auto summed) {
      if (summed() && W == 16) pick_w(early, summed, std::integral_constant<int, 16>{});
      else if (summed() && W == 8) pick_w(early, summed, std::integral_constant<int, 8>{});
      else pick_w(early, summed, std::integral_constant<int, kRowsWarps>{});
    };
    auto pick_sum = [&](auto early) {
      if (xtiles > 1) pick(early, std::true_type{});
      else pick(early, std::false_type{});
    };
    if (rows_early()) pick_sum(std::true_type{});
    else pick_sum(std::false_type{});
  });
  return true;
}

}  // namespace

bool ssm_step_rows(Ctx& c, int B, int E, int N, int R, int K, const float* x, const float* z, int ldxz,
                   float* conv_state, const float* conv_w, const float* conv_b, const float* dbc,
                   const float* dt_w, const float* dt_bias, const float* A_log, const float* D, float* h,
                   Operand y) {
  return rows_step<false>(c, B, E, N, R, K, x, z, ldxz, conv_state, conv_w, conv_b, dbc, dt_w, dt_bias, A_log, D,
                          h, y);
}

bool ssm_step_rows_u(Ctx& c, int B, int E, int N, int R, const float* u, const float* z, int ldxz,
                     const float* dbc, const float* dt_w, const float* dt_bias, const float* A_log, const float* D,
                     float* h, Operand y, int xtiles) {
  return rows_step<true>(c, B, E, N, R, 1, u, z, ldxz, nullptr, nullptr, nullptr, dbc, dt_w, dt_bias, A_log, D,
                         h, y, xtiles);
}

}  // namespace bhasa::cuda
