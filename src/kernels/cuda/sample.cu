// Token sampling on the device (kernels/sampling.h's rule), so that a decode step
// (all layers, then the next ids) can be captured in one CUDA graph.
//
// One row is split over S blocks (a whole row per block left most of the chip idle:
// 1 block at B = 1). Each block writes its (score, index) best; the last block to
// finish (a counter) picks each row's best over its S partials, writes ids and
// history, and advances the step counter: one launch per token step.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cstdlib>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/sampling.h"

namespace bhasa::cuda {

namespace {

constexpr int kThreads = 512;
constexpr unsigned kFull = 0xffffffffu;

// (max score, then min index): the rule's tie-break, whatever order candidates come in
__device__ __forceinline__ void better(float& best, int& best_v, float s, int v) {
  if (s > best || (s == best && v < best_v)) { best = s; best_v = v; }
}

template <int kThreads>
__device__ __forceinline__ void block_best(float& best, int& best_v) {
  __shared__ float s_val[kThreads / 32];
  __shared__ int s_idx[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1)
    better(best, best_v, __shfl_xor_sync(kFull, best, o), __shfl_xor_sync(kFull, best_v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // s_val may still be read by a previous call
  if (lane == 0) { s_val[warp] = best; s_idx[warp] = best_v; }
  __syncthreads();
  best = lane < kThreads / 32 ? s_val[lane] : -FLT_MAX;
  best_v = lane < kThreads / 32 ? s_idx[lane] : INT_MAX;
  for (int o = 16; o > 0; o >>= 1)
    better(best, best_v, __shfl_xor_sync(kFull, best, o), __shfl_xor_sync(kFull, best_v, o));
}

// grid (S, B): block (s, b) scans row b's slice s; then the last block finishes.
// ids[b] = argmax_v sample_score(logits[b, v]); history[step, b] = ids[b]; *counter += 1
__global__ void __launch_bounds__(kThreads)
sample_kernel(int B, int V, const float* __restrict__ logits, float temperature, uint64_t seed,
              int32_t* counter, int32_t* __restrict__ ids, int32_t* __restrict__ history, int capacity,
              float* part_val, int* part_idx, unsigned* done) {
  __shared__ bool s_last;
  const int S = gridDim.x, s = blockIdx.x, b = blockIdx.y;
  pdl_trigger();
  pdl_wait();
  const int step = *counter;
  const int chunk = (V + S - 1) / S, v0 = s * chunk, v1 = min(V, v0 + chunk);
  const float* row = logits + size_t(b) * V;
  float best = -FLT_MAX;
  int best_v = INT_MAX;  // sentinel larger than any index
#pragma unroll 4
  for (int v = v0 + threadIdx.x; v < v1; v += kThreads) {
    const float sc = sample_score(__ldg(row + v), temperature, seed, uint32_t(step), uint32_t(b), uint32_t(v));
    if (sc > best) { best = sc; best_v = v; }  // v rises within a thread: ties keep the first
  }
  block_best<kThreads>(best, best_v);
  if (threadIdx.x == 0) {
    part_val[size_t(b) * S + s] = best;
    part_idx[size_t(b) * S + s] = best_v;
    __threadfence();
    s_last = atomicAdd(done, 1u) == unsigned(S * B) - 1;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  // the last block: one thread per row, its S partials loaded together
  for (int r = threadIdx.x; r < B; r += kThreads) {
    float bv = -FLT_MAX;
    int bi = INT_MAX;
#pragma unroll 8
    for (int j = 0; j < S; ++j)
      better(bv, bi, __ldcg(part_val + size_t(r) * S + j), __ldcg(part_idx + size_t(r) * S + j));
    const int id = bi < V ? bi : 0;  // all -inf/NaN rows: token 0
    ids[r] = id;
    if (history && step < capacity) history[size_t(step) * B + r] = id;
  }
  __syncthreads();  // every row has read step
  if (threadIdx.x == 0) {
    *counter = step + 1;
    *done = 0;  // ready for the next launch
  }
}

// The same rule with every load of a thread in flight at once: the old kernel's loop
// (4 scalar loads an iteration, ~20 logits a thread at B = 64) waited on ~5 round trips
// to L2/DRAM in a row. Here a thread issues kVec 16-byte loads (32 logits) before it
// scores any, and the last block merges the (B, S) partials staged in shared memory.
constexpr int kThreads2 = 256;
constexpr int kVec = 8;           // float4 (or float, when rows are not 16-byte aligned) loads in flight
constexpr int kMergeMax = 2048;   // (row, slice) partials the last block stages in shared memory

// grid (S, B): block (s, b) scores row b's slice s; the last block finishes.
// ids[b] = argmax_v sample_score(logits[b, v]); history[step, b] = ids[b]; *counter += 1
template <bool kVec4>
__global__ void __launch_bounds__(kThreads2)
sample2_kernel(int B, int V, const float* __restrict__ logits, float temperature, uint64_t seed,
               int32_t* counter, int32_t* __restrict__ ids, int32_t* __restrict__ history, int capacity,
               float* part_val, int* part_idx, unsigned* done) {
  __shared__ bool s_last;
  __shared__ float m_val[kMergeMax];
  __shared__ int m_idx[kMergeMax];
  const int S = gridDim.x, s = blockIdx.x, b = blockIdx.y;
  pdl_trigger();
  pdl_wait();
  const int step = *counter;
  // the row in units of W floats (W = 4: float4 chunks, V % 4 == 0)
  constexpr int W = kVec4 ? 4 : 1;
  const int n = V / W, per = (n + S - 1) / S, c0 = s * per, c1 = min(n, c0 + per);
  const float* row = logits + size_t(b) * V;
  float best = -FLT_MAX;
  int best_v = INT_MAX;  // sentinel larger than any index
  for (int base = c0; base < c1; base += kThreads2 * kVec) {
    float q[kVec][W];
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const int ci = base + threadIdx.x + i * kThreads2;
      if constexpr (kVec4) {
        const float4 t = ci < c1 ? __ldg(reinterpret_cast<const float4*>(row) + ci) : make_float4(0.f, 0.f, 0.f, 0.f);
        q[i][0] = t.x, q[i][1] = t.y, q[i][2] = t.z, q[i][3] = t.w;
      } else {
        q[i][0] = ci < c1 ? __ldg(row + ci) : 0.0f;
      }
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const int ci = base + threadIdx.x + i * kThreads2;
      if (ci < c1) {
#pragma unroll
        for (int j = 0; j < W; ++j) {
          const int v = W * ci + j;
          const float sc = sample_score(q[i][j], temperature, seed, uint32_t(step), uint32_t(b), uint32_t(v));
          if (sc > best) { best = sc; best_v = v; }  // v rises within a thread: ties keep the first
        }
      }
    }
  }
  block_best<kThreads2>(best, best_v);
  if (threadIdx.x == 0) {
    part_val[size_t(b) * S + s] = best;
    part_idx[size_t(b) * S + s] = best_v;
    __threadfence();
    s_last = atomicAdd(done, 1u) == unsigned(S * B) - 1;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  // the last block: every partial loaded at once into shared memory, then each row's best
  const int np = B * S;
  const bool staged = np <= kMergeMax;
  if (staged) {
#pragma unroll 4
    for (int i = threadIdx.x; i < np; i += kThreads2) m_val[i] = __ldcg(part_val + i), m_idx[i] = __ldcg(part_idx + i);
    __syncthreads();
  }
  auto part = [&](int r, int j, float& v, int& i) {
    const size_t o = size_t(r) * S + j;
    v = staged ? m_val[o] : __ldcg(part_val + o);
    i = staged ? m_idx[o] : __ldcg(part_idx + o);
  };
  auto finish = [&](int r, float bv, int bi) {
    const int id = bi < V ? bi : 0;  // all -inf/NaN rows: token 0
    ids[r] = id;
    if (history && step < capacity) history[size_t(step) * B + r] = id;
  };
  if (S <= 8) {  // a thread a row
    for (int r = threadIdx.x; r < B; r += kThreads2) {
      float bv = -FLT_MAX;
      int bi = INT_MAX;
      for (int j = 0; j < S; ++j) {
        float v;
        int i;
        part(r, j, v, i);
        better(bv, bi, v, i);
      }
      finish(r, bv, bi);
    }
  } else {  // a warp a row
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = warp; r < B; r += kThreads2 / 32) {
      float bv = -FLT_MAX;
      int bi = INT_MAX;
      for (int j = lane; j < S; j += 32) {
        float v;
        int i;
        part(r, j, v, i);
        better(bv, bi, v, i);
      }
      for (int o = 16; o > 0; o >>= 1)
        better(bv, bi, __shfl_xor_sync(kFull, bv, o), __shfl_xor_sync(kFull, bi, o));
      if (lane == 0) finish(r, bv, bi);
    }
  }
  __syncthreads();  // every row has read step
  if (threadIdx.x == 0) {
    *counter = step + 1;
    *done = 0;  // ready for the next launch
  }
}

// LAB (round 1 only): knobs read from the environment on every call
inline int lab_knob(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : dflt;
}

}  // namespace

void sample_tokens(Ctx& c, int B, int V, const float* logits, float temperature, uint64_t seed,
                   int32_t* counter, int32_t* ids, int32_t* history, int capacity) {
  if (B == 0) return;
  check(V > 0, "sample_tokens: the vocabulary is empty");
  auto* done = static_cast<unsigned*>(c.scratch->get(kSampleCounter, sizeof(unsigned), /*zeroed=*/true));
  if (lab_knob("LAB_SAMPLE_OLD", 0) == 0) {
    // slices of at most kThreads2 * kVec units (one round of loads), and at least ~2
    // blocks an SM while a slice keeps one unit a thread
    const bool vec4 = V % 4 == 0 && (reinterpret_cast<uintptr_t>(logits) & 15) == 0;
    const int n = vec4 ? V / 4 : V;
    int S = lab_knob("LAB_SAMPLE_S", 0);
    if (S <= 0)
      S = std::max((n + kThreads2 * kVec - 1) / (kThreads2 * kVec),
                   std::min((2 * c.sm_count + B - 1) / B, (n + kThreads2 - 1) / kThreads2));
    S = std::max(1, std::min(S, n));
    auto* part_val = static_cast<float*>(c.scratch->get(kSampleVal, size_t(B) * S * sizeof(float)));
    auto* part_idx = static_cast<int*>(c.scratch->get(kSampleIdx, size_t(B) * S * sizeof(int)));
    launch(vec4 ? sample2_kernel<true> : sample2_kernel<false>, dim3(S, B), dim3(kThreads2), 0, c.stream, c.pdl,
           B, V, logits, temperature, seed, counter, ids, history, capacity, part_val, part_idx, done);
    BHASA_LAUNCH_CHECK("sample_tokens");
    return;
  }
  // ~2 blocks per SM in all, at least 4096 logits per block. (Measured at V = 50280:
  // B = 1, 13 blocks: 3.7-4.7 us; B = 64, 5 blocks a row: 7.2 us, but one 512-thread
  // block a row: 12.6 us, and the former one-block-a-row kernel with 1024 threads: 5.1.)
  const int S = std::max(1, std::min((2 * c.sm_count + B - 1) / B, (V + 4095) / 4096));
  auto* part_val = static_cast<float*>(c.scratch->get(kSampleVal, size_t(B) * S * sizeof(float)));
  auto* part_idx = static_cast<int*>(c.scratch->get(kSampleIdx, size_t(B) * S * sizeof(int)));
  launch(sample_kernel, dim3(S, B), dim3(kThreads), 0, c.stream, c.pdl, B, V, logits, temperature, seed,
         counter, ids, history, capacity, part_val, part_idx, done);
  BHASA_LAUNCH_CHECK("sample_tokens");
}

}  // namespace bhasa::cuda
