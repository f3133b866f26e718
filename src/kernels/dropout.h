// The dropout mask shared by every backend, so the CPU and the GPU drop the same
// elements and the backward pass regenerates the forward's mask instead of storing it:
// element i of a buffer is kept when a counter-based hash of (seed, i) clears p.
//   keep(seed, i) = (mix64(mix64(seed) ^ i) >> 40) >= threshold,  threshold = round_down(p * 2^24)
// so P(keep) = 1 - threshold / 2^24 ~= 1 - p, and kept values are scaled by 1 / (1 - p).
#pragma once
#include <cstdint>

#include "kernels/sampling.h"  // mix64, BHASA_HOST_DEVICE

namespace bhasa {

// The 24-bit threshold a hash must reach to keep an element (0 keeps everything).
inline uint32_t dropout_threshold(float p) {
  return p <= 0.0f ? 0u : static_cast<uint32_t>(static_cast<double>(p) * 16777216.0);
}

// The factor kept elements are multiplied by (torch: 1 / (1 - p)).
inline float dropout_scale(float p) { return 1.0f / (1.0f - p); }

// key = mix64(seed), computed once per call; i is the element's index in the buffer.
BHASA_HOST_DEVICE inline bool dropout_keep(uint64_t key, uint64_t i, uint32_t threshold) {
  return static_cast<uint32_t>(mix64(key ^ i) >> 40) >= threshold;
}

// A distinct, well-mixed seed per (base, a, b): e.g. (run seed, step, micro-batch) in the
// trainer and (step seed, layer, sublayer) in the model.
inline uint64_t dropout_seed(uint64_t base, uint64_t a, uint64_t b) {
  return mix64(mix64(mix64(base) ^ a) ^ (b + 0x5bd1e995ull));
}

}  // namespace bhasa
