// The token-sampling rule shared by every backend, so the CPU loop and the GPU's
// graph draw the same tokens: Gumbel-max with a counter-based hash.
//   greedy (temperature <= 0): id = argmax_v logits[v]
//   otherwise:                 id = argmax_v logits[v] / temperature + gumbel(seed, step, b, v)
// which is a draw from softmax(logits / temperature). Ties go to the smallest v.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define BHASA_HOST_DEVICE __host__ __device__
#else
#define BHASA_HOST_DEVICE
#endif

namespace bhasa {

// splitmix64's finaliser: a well-mixed 64-bit hash of a counter.
BHASA_HOST_DEVICE inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// -log(-log(U)) for U = (k + 0.5) / 2^23, k the top 23 bits of a hash: k + 0.5 is exact
// in a float, so U is never 0 or 1. (With 24 bits, k + 0.5 rounded up to 2^24 for the
// top k: U = 1 and an infinite noise, once in 2^24 draws: a uniformly random token.)
BHASA_HOST_DEVICE inline float gumbel_of_hash(uint64_t h) {
  const float uni = (float(uint32_t(h >> 41)) + 0.5f) * (1.0f / 8388608.0f);  // 32-bit convert: 1 instruction on a GPU
  return -logf(-logf(uni));
}

// Gumbel noise from the hash of (seed, step, b, v).
BHASA_HOST_DEVICE inline float gumbel_noise(uint64_t seed, uint32_t step, uint32_t b, uint32_t v) {
  return gumbel_of_hash(mix64(mix64(seed ^ (uint64_t(step) << 32 | b)) ^ v));
}

// The score whose argmax is the sampled token.
BHASA_HOST_DEVICE inline float sample_score(float logit, float temperature, uint64_t seed,
                                            uint32_t step, uint32_t b, uint32_t v) {
  return temperature <= 0.0f ? logit : logit / temperature + gumbel_noise(seed, step, b, v);
}

// Merges a candidate (score s, token v) into a best so far: the larger score, then the
// smaller token, whatever order candidates come in (the rule's tie-break, for merges across
// threads and blocks).
BHASA_HOST_DEVICE inline void better_pick(float& best, int& best_v, float s, int v) {
  if (s > best || (s == best && v < best_v)) best = s, best_v = v;
}

}  // namespace bhasa
