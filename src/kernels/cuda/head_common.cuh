// Device code shared by the two decode heads (head_mma.cu, head_wgmma.cu): each row's rstd
// from the prepared sums of squares, and the greedy pick's end (each block merges its rows'
// bests into one 64-bit key a row by atomicMax; the last block to finish writes the ids).
// HeadPick is head_mma.h's.
#pragma once
#include <climits>

#include "kernels/cuda/head_mma.h"

namespace bhasa::cuda {

// The heads' consumer threads (8 warps), which alone run the pick (the producer warp has left)
constexpr int kHeadConsumers = 256;
__device__ __forceinline__ void head_consumers_sync() {
  asm volatile("bar.sync 1, %0;" ::"n"(kHeadConsumers) : "memory");
}

// rstd of row r (< M): 1 / sqrt(the tiles' sums of squares, in tile order, / K + eps); 1
// without ss (no scaling) or past M
__device__ __forceinline__ float head_row_rstd(int r, int M, int K, const float* ss, int tiles, int ss_ld, float eps) {
  if (!ss || r >= M) return 1.0f;
  float sum = 0.f;
  for (int q = 0; q < tiles; ++q) sum += ss[size_t(q) * ss_ld + r];
  return 1.0f / sqrtf(sum / K + eps);
}

// (score, index) as one 64-bit key whose unsigned order is better_pick()'s: the score's bits
// made monotonic (-0 as +0: equal scores), then the complement of the index (the smaller
// index wins a tie)
__device__ __forceinline__ unsigned long long pick_key(float s, int v) {
  const unsigned b = s == 0.0f ? 0u : __float_as_uint(s), mono = b & 0x80000000u ? ~b : b | 0x80000000u;
  return (static_cast<unsigned long long>(mono) << 32) | (0xffffffffu - static_cast<unsigned>(v));
}

// After every consumer thread has merged its rows' bests into pick.keys (atomicMax, the same
// result in any order): the last block to finish (a counter) reads the keys, writes the ids
// and history, clears the keys and advances the step counter. All kHeadConsumers threads call it.
__device__ inline void pick_finish(int M, int N, const HeadPick& pick) {
  __shared__ bool s_last;
  __threadfence();
  head_consumers_sync();
  if (threadIdx.x == 0) s_last = atomicAdd(pick.done, 1u) == gridDim.x - 1;
  head_consumers_sync();
  if (!s_last) return;
  __threadfence();
  const int step = *pick.counter;
  for (int r = threadIdx.x; r < M; r += kHeadConsumers) {
    const unsigned long long key = __ldcg(pick.keys + r);
    const unsigned v = 0xffffffffu - static_cast<unsigned>(key);
    const int id = key != 0 && v < unsigned(N) ? int(v) : 0;  // a row of NaN: no key, token 0
    pick.ids[r] = id;
    if (pick.history && step < pick.capacity) pick.history[size_t(step) * M + r] = id;
    pick.keys[r] = 0;
  }
  head_consumers_sync();  // every row has read step
  if (threadIdx.x == 0) {
    *pick.counter = step + 1, *pick.done = 0;
    if (pick.next_tile) *pick.next_tile = 0;  // every producer has taken its last
  }
}

}  // namespace bhasa::cuda
