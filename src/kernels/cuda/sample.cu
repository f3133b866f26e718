// Token sampling on the device (kernels/sampling.h's rule), so that a decode step
// (all layers, then the next ids) can be captured in one CUDA graph.
#include <cfloat>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/sampling.h"

namespace bhasa::cuda {

namespace {

constexpr int kThreads = 1024;

// One block per row: ids[b] = argmax_v sample_score(logits[b, v]); history[step, b] = ids[b].
__global__ void __launch_bounds__(kThreads)
sample_kernel(int B, int V, const float* __restrict__ logits, float temperature, uint64_t seed,
              const int32_t* __restrict__ counter, int32_t* __restrict__ ids,
              int32_t* __restrict__ history, int capacity) {
  __shared__ float s_val[kThreads / 32];
  __shared__ int s_idx[kThreads / 32];
  const int b = blockIdx.x;
  const int step = *counter;
  const float* row = logits + size_t(b) * V;
  float best = -FLT_MAX;
  int best_v = V;  // sentinel larger than any index
  for (int v = threadIdx.x; v < V; v += kThreads) {
    const float s = sample_score(row[v], temperature, seed, uint32_t(step), uint32_t(b), uint32_t(v));
    if (s > best) { best = s; best_v = v; }  // v rises within a thread: ties keep the first
  }
  // (max value, then min index) across the block
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_v, o);
    if (ov > best || (ov == best && oi < best_v)) { best = ov; best_v = oi; }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) { s_val[warp] = best; s_idx[warp] = best_v; }
  __syncthreads();
  if (warp == 0) {
    best = lane < kThreads / 32 ? s_val[lane] : -FLT_MAX;
    best_v = lane < kThreads / 32 ? s_idx[lane] : V;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, best_v, o);
      if (ov > best || (ov == best && oi < best_v)) { best = ov; best_v = oi; }
    }
    if (lane == 0) {
      const int id = best_v < V ? best_v : 0;  // all -inf/NaN rows: token 0
      ids[b] = id;
      if (history && step < capacity) history[size_t(step) * B + b] = id;
    }
  }
}

// *counter += 1, after every block of sample_kernel has read it.
__global__ void advance_counter(int32_t* counter) { *counter += 1; }

}  // namespace

void sample_tokens(Ctx& c, int B, int V, const float* logits, float temperature, uint64_t seed,
                   int32_t* counter, int32_t* ids, int32_t* history, int capacity) {
  if (B == 0) return;
  check(V > 0, "sample_tokens: the vocabulary is empty");
  sample_kernel<<<B, kThreads, 0, c.stream>>>(B, V, logits, temperature, seed, counter, ids, history,
                                              capacity);
  BHASA_LAUNCH_CHECK("sample_tokens");
  advance_counter<<<1, 1, 0, c.stream>>>(counter);
  BHASA_LAUNCH_CHECK("advance_counter");
}

}  // namespace bhasa::cuda
