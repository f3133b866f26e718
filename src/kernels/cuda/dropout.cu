// Dropout with a regenerable mask (kernels/dropout.h): the same elements as the CPU backend.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/dropout.h"

namespace bhasa::cuda {

namespace {

// torch: x = F.dropout(x, p, training=True)   (with kernels/dropout.h's mask)   x (n) in place,
// fp32 or bf16 (O; a bf16 x is rounded again after the scaling)
template <class O>
__global__ void dropout_kernel(size_t n, O* x, uint64_t key, uint32_t threshold, float scale) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  // __fmul_rn: one correctly rounded product, never contracted, so it matches the CPU bitwise.
  x[i] = from_float<O>(dropout_keep(key, i, threshold) ? __fmul_rn(to_float(x[i]), scale) : 0.0f);
}

}  // namespace

void dropout(Ctx& c, size_t n, Operand x, float p, uint64_t seed) {
  if (!(p >= 0.0f && p < 1.0f)) throw Error("dropout: p must be in [0, 1), got " + std::to_string(p));
  if (p == 0.0f || n == 0) return;
  with_operand(x, [&](auto* o) {
    dropout_kernel<<<blocks_for(n, 256), 256, 0, c.stream>>>(n, o, mix64(seed), dropout_threshold(p),
                                                             dropout_scale(p));
  });
  BHASA_LAUNCH_CHECK("dropout");
}

}  // namespace bhasa::cuda
