// Shared by the selective-scan kernels (scan.cu, scan_bwd_c8.cu): constants, the
// special-function, cp.async and warp-sum helpers.
#pragma once

#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda::scan_detail {

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

// ex2_ and sigmoid_fast: cuda_common.cuh

// F.softplus(x) (threshold 20) and torch.sigmoid(x) from one exp, e = exp(-|x|):
// softplus = max(x, 0) + log1p(e), log1p(e) = 2 atanh(s) with s = e / (2 + e) <= 1/3,
// summed as 2 s (1 + s^2/3 + .. + s^12/13) (truncation < 2e-8 relative). ~18
// instructions against ~35 and two branches for log1pf(expf(x)); for x > 20 the sum
// rounds to x exactly, as torch's threshold.
__device__ __forceinline__ float softplus_sigmoid(float x, float& sig) {
  const float e = ex2_(-fabsf(x) * kLog2e);
  const float s = __fdividef(e, 2.0f + e), s2 = s * s;
  float p = 2.0f / 13.0f;
  p = fmaf(p, s2, 2.0f / 11.0f);
  p = fmaf(p, s2, 2.0f / 9.0f);
  p = fmaf(p, s2, 2.0f / 7.0f);
  p = fmaf(p, s2, 2.0f / 5.0f);
  p = fmaf(p, s2, 2.0f / 3.0f);
  p = fmaf(p, s2, 2.0f);
  sig = __fdividef(x >= 0.0f ? 1.0f : e, 1.0f + e);
  return fmaxf(x, 0.0f) + p * s;
}
__device__ __forceinline__ float softplus_fast(float x) {
  float sig;
  return softplus_sigmoid(x, sig);
}

// Index of (step r, channel c) in a (kFwdTile, 32) shared tile, columns XOR-swizzled by
// r % 4 so that 4 consecutive steps of 8 channels (one warp's epilogue reads) hit 32 banks.
__device__ __forceinline__ int swz(int r, int c) { return r * kChannels + (c ^ ((r & 3) << 3)); }

// cp.async helpers (cp_async4, cp_async16, cp_async_commit, cp_async_wait): cuda_common.cuh


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


// scan_fwd_c8.cu: the forward at chunk == kSub for N in 9..16 (2 lanes of 8 states).
// u, dt, z: all fp32, or all bf16 where forward_c8_reads_bf16 (16-byte copies of 8
// channels); out fp32 or bf16.
bool forward_c8_reads_bf16(int B, int L, int E, int N, ConstOperand u, ConstOperand dt, const float* Bm,
                           const float* Cm, int ld_bc, ConstOperand z, int ldz);
void launch_forward_c8(Ctx& c, int B, int L, int E, int N, ConstOperand u, ConstOperand dt, const float* dt_bias,
                       const float* A_log, const float* Bm, const float* Cm, int ld_bc, const float* D,
                       ConstOperand z, int ldz, Operand out, float* chunk_states, const float* h0, float* h_last);

// scan_bwd_c8.cu: the backward at chunk == kSub, into the same partials as
// scan_backward_kernel (bc_partials: one per block of c8_channels(NPL) channels).
// The backward's one store per lane of a group: dz (element type TZ: float, or bf16 for a
// bf16 Operand) on the dz lane, an fp32 output on the others, through one per-lane byte
// pointer and row stride: no more registers than a float* and its stride, and no branch
// in the unrolled walk (bf16: two predicated stores).
template <class TZ>
struct LaneOut {
  char* p;
  int ld;  // bytes
  bool dz;
  __device__ __forceinline__ LaneOut(bool dz_lane, TZ* dz_row, int ldz, float* row, int ld_row)
      : p(dz_lane ? reinterpret_cast<char*>(dz_row) : reinterpret_cast<char*>(row)),
        ld(dz_lane ? ldz * int(sizeof(TZ)) : ld_row * int(sizeof(float))), dz(dz_lane) {}
  __device__ __forceinline__ void store(int ii, float v) const {  // row ii
    char* q = p + ii * ld;
    if constexpr (std::is_same_v<TZ, float>) {
      *reinterpret_cast<float*>(q) = v;
    } else {
      if (dz) *reinterpret_cast<TZ*>(q) = from_float<TZ>(v);
      if (!dz) *reinterpret_cast<float*>(q) = v;
    }
  }
};

constexpr int c8_channels(int npl) { return npl == 4 ? 2 * kChannels : kChannels; }
// u, dt, z, dout in and ddt out: all fp32, or all bf16 where backward_c8_reads_bf16 (the
// V11 kernel's 16-byte copies); dz fp32 or bf16; du fp32, or bf16 with the bf16 inputs.
bool backward_c8_reads_bf16(int npl, dim3 grid, int L, int E, int N, ConstOperand u, ConstOperand dt,
                            const float* Bm, const float* Cm, int ld_bc, ConstOperand z, int ldz,
                            const float* chunk_states, ConstOperand dout, Operand du, Operand ddt, Operand dz);
void launch_backward_c8(Ctx& c, int npl, dim3 grid, int L, int E, int N, ConstOperand u, ConstOperand dt,
                        const float* dt_bias, const float* A_log, const float* Bm, const float* Cm, int ld_bc,
                        const float* D, ConstOperand z, int ldz, const float* chunk_states, ConstOperand dout,
                        Operand du, Operand ddt, Operand dz, float* bc_part, float* param_part);

}  // namespace bhasa::cuda::scan_detail
