// Dropout with a regenerable mask: the mask is a hash of (seed, index), not stored.
#include "kernels/dropout.h"

#include <cstddef>

#include "core/error.h"
#include "kernels/cpu/cpu_kernels.h"

namespace bhasa::cpu {

// torch: x = F.dropout(x, p, training=True)   (with kernels/dropout.h's mask)   x (n) in place
template <class T>
void dropout(size_t n, T* x, float p, uint64_t seed) {
  check(p >= 0.0f && p < 1.0f, "dropout: p must be in [0, 1), got " + std::to_string(p));
  if (p == 0.0f) return;
  const uint64_t key = mix64(seed);
  const uint32_t threshold = dropout_threshold(p);
  const T scale = static_cast<T>(dropout_scale(p));
  const std::ptrdiff_t count = static_cast<std::ptrdiff_t>(n);
#pragma omp parallel for simd schedule(static)
  for (std::ptrdiff_t i = 0; i < count; ++i)
    x[i] = dropout_keep(key, static_cast<uint64_t>(i), threshold) ? x[i] * scale : T(0);
}

template void dropout<float>(size_t, float*, float, uint64_t);
template void dropout<double>(size_t, double*, float, uint64_t);

}  // namespace bhasa::cpu
