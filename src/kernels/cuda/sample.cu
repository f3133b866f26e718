// Token sampling on the device (kernels/sampling.h's rule), so that a decode step
// (all layers, then the next ids) can be captured in one CUDA graph.
//
// One row is split over S blocks (a whole row per block left most of the chip idle:
// 1 block at B = 1). A thread issues all its loads (kVec x 16 bytes) before it scores
// any: the former loop of 4 scalar loads an iteration waited on ~5 round trips in a
// row at B = 64. Each block writes its (score, index) best; the last block to finish
// (a counter) stages the (B, S) partials in shared memory, picks each row's best,
// writes ids and history, and advances the step counter: one launch per token step.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cstdlib>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/sampling.h"

namespace bhasa::cuda {

namespace {

constexpr int kThreads = 256;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ void block_best(float& best, int& best_v) {
  __shared__ float s_val[kThreads / 32];
  __shared__ int s_idx[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1)
    better_pick(best, best_v, __shfl_xor_sync(kFull, best, o), __shfl_xor_sync(kFull, best_v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // s_val may still be read by a previous call
  if (lane == 0) { s_val[warp] = best; s_idx[warp] = best_v; }
  __syncthreads();
  best = lane < kThreads / 32 ? s_val[lane] : -FLT_MAX;
  best_v = lane < kThreads / 32 ? s_idx[lane] : INT_MAX;
  for (int o = 16; o > 0; o >>= 1)
    better_pick(best, best_v, __shfl_xor_sync(kFull, best, o), __shfl_xor_sync(kFull, best_v, o));
}

constexpr int kVec = 8;           // float4 (or float, when rows are not 16-byte aligned) loads in flight
constexpr int kMergeMax = 2048;   // (row, slice) partials the last block stages in shared memory

// grid (S, B): block (s, b) scores row b's slice s; the last block finishes.
// ids[b] = argmax_v sample_score(logits[b, v]); history[step, b] = ids[b]; *counter += 1
template <bool kVec4, bool kSkip>
__global__ void __launch_bounds__(kThreads)
sample_kernel(int B, int V, const float* __restrict__ logits, float temperature, uint64_t seed,
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
  // kSkip (temperature > 0, unless BHASA_SAMPLE_SKIP=0): a logit whose score cannot
  // reach a score already seen in the warp is not scored. The noise of hash h is at
  // most gub[h >> 56] (its top 8 bits' bucket: the rule's noise at the bucket's largest
  // k, computed here by the rule's code, plus 1e-3 for a logf that is not monotone in
  // the last bit), l / T at most s0 = l (1 / T) + |l (1 / T)| 1e-6: so the two logf and the
  // division are skipped where s0 + gub < the warp's best, and the ids are the rule's (a
  // skipped score is strictly below another's). The hash (2 64-bit multiplies) stays.
  __shared__ float gub[256];
  const uint64_t rowh = mix64(seed ^ (uint64_t(step) << 32 | uint32_t(b)));  // gumbel_noise's inner hash
  const float invT = 1.0f / temperature;
  float thr = -FLT_MAX;  // a score some lane of this warp has
  for (int base = c0; base < c1; base += kThreads * kVec) {
    float q[kVec][W];
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const int ci = base + threadIdx.x + i * kThreads;
      if constexpr (kVec4) {
        const float4 t = ci < c1 ? __ldg(reinterpret_cast<const float4*>(row) + ci) : make_float4(0.f, 0.f, 0.f, 0.f);
        q[i][0] = t.x, q[i][1] = t.y, q[i][2] = t.z, q[i][3] = t.w;
      } else {
        q[i][0] = ci < c1 ? __ldg(row + ci) : 0.0f;
      }
    }
    if constexpr (kSkip) if (base == c0) {  // the bucket bounds, while the loads fly
      static_assert(kThreads == 256, "one bucket a thread");
      gub[threadIdx.x] = gumbel_of_hash((uint64_t(threadIdx.x) << 56) | (uint64_t(0x7fff) << 41)) + 1e-3f;
      __syncthreads();
    }
    if constexpr (kSkip) {
      // the first unit's logits scored, the warp's best of them the threshold; of the rest,
      // a bit for each that may reach it, then those alone (a loop as long as the warp's
      // longest list: a branch a logit ran the scoring whenever any lane needed it)
      static_assert(kVec * W <= 32, "a bit a logit");
      unsigned cand = 0;
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const int ci = base + threadIdx.x + i * kThreads;
        if (ci < c1) {
#pragma unroll
          for (int j = 0; j < W; ++j) {
            const int v = W * ci + j;
            const uint64_t hv = mix64(rowh ^ uint32_t(v));
            if (i == 0) {
              const float sc = q[i][j] / temperature + gumbel_of_hash(hv);  // = sample_score
              if (sc > best) { best = sc; best_v = v; }
            } else {
              float s0 = q[i][j] * invT;
              s0 += fabsf(s0) * 1e-6f;
              if (!(s0 + gub[hv >> 56] < thr)) cand |= 1u << (i * W + j);
            }
          }
        }
        if (i == 0) {
          thr = fmaxf(thr, best);
          for (int o = 16; o > 0; o >>= 1) thr = fmaxf(thr, __shfl_xor_sync(kFull, thr, o));
        }
      }
      while (cand) {  // in v order: ties keep the first
        const int bit = __ffs(cand) - 1;
        cand &= cand - 1;
        const int v = W * (base + threadIdx.x + (bit / W) * kThreads) + bit % W;
        const float sc = __ldg(row + v) / temperature + gumbel_of_hash(mix64(rowh ^ uint32_t(v)));
        if (sc > best) { best = sc; best_v = v; }
      }
    } else {
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const int ci = base + threadIdx.x + i * kThreads;
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
  // the last block: every partial loaded at once into shared memory, then each row's best
  const int np = B * S;
  const bool staged = np <= kMergeMax;
  if (staged) {
#pragma unroll 4
    for (int i = threadIdx.x; i < np; i += kThreads) m_val[i] = __ldcg(part_val + i), m_idx[i] = __ldcg(part_idx + i);
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
  if (S <= 8 || B > kThreads / 32) {  // a thread a row (its S partials from shared memory)
    for (int r = threadIdx.x; r < B; r += kThreads) {
      float bv = -FLT_MAX;
      int bi = INT_MAX;
      for (int j = 0; j < S; ++j) {
        float v;
        int i;
        part(r, j, v, i);
        better_pick(bv, bi, v, i);
      }
      finish(r, bv, bi);
    }
  } else {  // at most a row a warp, of many partials (B = 1: S = 50): a warp a row
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = warp; r < B; r += kThreads / 32) {
      float bv = -FLT_MAX;
      int bi = INT_MAX;
      for (int j = lane; j < S; j += 32) {
        float v;
        int i;
        part(r, j, v, i);
        better_pick(bv, bi, v, i);
      }
      for (int o = 16; o > 0; o >>= 1)
        better_pick(bv, bi, __shfl_xor_sync(kFull, bv, o), __shfl_xor_sync(kFull, bi, o));
      if (lane == 0) finish(r, bv, bi);
    }
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
  // Slices of at most kThreads * kVec units (one round of loads), and at least ~2 blocks
  // an SM while a slice keeps one unit a thread. (Measured at V = 50280, greedy, us:
  // B = 1: 50 slices 3.5; B = 64: 7 slices 5.9, 6: 6.6, 5: 6.9, 3: 7.3.)
  const bool vec4 = V % 4 == 0 && (reinterpret_cast<uintptr_t>(logits) & 15) == 0;
  const int n = vec4 ? V / 4 : V;
  int S = std::max((n + kThreads * kVec - 1) / (kThreads * kVec),
                   std::min((2 * c.sm_count + B - 1) / B, (n + kThreads - 1) / kThreads));
  S = std::max(1, std::min(S, n));
  auto* part_val = static_cast<float*>(c.scratch->get(kSampleVal, size_t(B) * S * sizeof(float)));
  auto* part_idx = static_cast<int*>(c.scratch->get(kSampleIdx, size_t(B) * S * sizeof(int)));
  auto* done = static_cast<unsigned*>(c.scratch->get(kSampleCounter, sizeof(unsigned), /*zeroed=*/true));
  static const bool skip = [] { const char* e = std::getenv("BHASA_SAMPLE_SKIP"); return !(e && e[0] == '0'); }();
  // the skip pays where a thread has several units of a slice (B >= 12 at V = 50280)
  const bool skip_here = skip && temperature > 0.0f && (n + S - 1) / S >= 2 * kThreads;
  auto kernel = skip_here ? (vec4 ? sample_kernel<true, true> : sample_kernel<false, true>)
                                           : (vec4 ? sample_kernel<true, false> : sample_kernel<false, false>);
  launch(kernel, dim3(S, B), dim3(kThreads), 0, c.stream, c.pdl, B, V, logits, temperature, seed, counter, ids,
         history, capacity, part_val, part_idx, done);
  BHASA_LAUNCH_CHECK("sample_tokens");
}

}  // namespace bhasa::cuda
