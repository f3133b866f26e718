// Dropout with a regenerable mask (kernels/dropout.h): the same elements as the CPU backend.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/dropout.h"

namespace bhasa::cuda {

namespace {

// torch: x = F.dropout(x, p, training=True)   (with kernels/dropout.h's mask)   x (n) in place,
// fp32 or bf16 (O; a bf16 x is rounded again after the scaling). The seed is an argument, or
// (seed_at) read from memory, as a captured training step needs: key = mix64(seed) either way.
template <class O>
__global__ void dropout_kernel(size_t n, O* x, uint64_t key, const uint64_t* seed_at, uint32_t threshold,
                               float scale) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  if (seed_at) key = mix64(*seed_at);
  // __fmul_rn: one correctly rounded product, never contracted, so it matches the CPU bitwise.
  x[i] = from_float<O>(dropout_keep(key, i, threshold) ? __fmul_rn(to_float(x[i]), scale) : 0.0f);
}

void launch_dropout(Ctx& c, size_t n, Operand x, float p, uint64_t key, const uint64_t* seed_at) {
  if (!(p >= 0.0f && p < 1.0f)) throw Error("dropout: p must be in [0, 1), got " + std::to_string(p));
  if (p == 0.0f || n == 0) return;
  with_operand(x, [&](auto* o) {
    dropout_kernel<<<blocks_for(n, 256), 256, 0, c.stream>>>(n, o, key, seed_at, dropout_threshold(p),
                                                             dropout_scale(p));
  });
  BHASA_LAUNCH_CHECK("dropout");
}

}  // namespace

void dropout(Ctx& c, size_t n, Operand x, float p, uint64_t seed) { launch_dropout(c, n, x, p, mix64(seed), nullptr); }

void dropout(Ctx& c, size_t n, Operand x, float p, const int32_t* seed) {
  check(reinterpret_cast<uintptr_t>(seed) % alignof(uint64_t) == 0, "dropout: the seed must be 8-byte aligned");
  launch_dropout(c, n, x, p, 0, reinterpret_cast<const uint64_t*>(seed));
}

}  // namespace bhasa::cuda
