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
  block_best(best, best_v);
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

}  // namespace

void sample_tokens(Ctx& c, int B, int V, const float* logits, float temperature, uint64_t seed,
                   int32_t* counter, int32_t* ids, int32_t* history, int capacity) {
  if (B == 0) return;
  check(V > 0, "sample_tokens: the vocabulary is empty");
  // ~2 blocks per SM in all, at least 4096 logits per block. (Measured at V = 50280:
  // B = 1, 13 blocks: 3.7-4.7 us; B = 64, 5 blocks a row: 7.2 us, but one 512-thread
  // block a row: 12.6 us, and the former one-block-a-row kernel with 1024 threads: 5.1.)
  const int S = std::max(1, std::min((2 * c.sm_count + B - 1) / B, (V + 4095) / 4096));
  auto* part_val = static_cast<float*>(c.scratch->get(kSampleVal, size_t(B) * S * sizeof(float)));
  auto* part_idx = static_cast<int*>(c.scratch->get(kSampleIdx, size_t(B) * S * sizeof(int)));
  auto* done = static_cast<unsigned*>(c.scratch->get(kSampleCounter, sizeof(unsigned), /*zeroed=*/true));
  launch(sample_kernel, dim3(S, B), dim3(kThreads), 0, c.stream, c.pdl, B, V, logits, temperature, seed,
         counter, ids, history, capacity, part_val, part_idx, done);
  BHASA_LAUNCH_CHECK("sample_tokens");
}

}  // namespace bhasa::cuda
