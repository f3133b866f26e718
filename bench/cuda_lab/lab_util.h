// Shared by the kernel labs: event-timed medians through the backend's marks, the
// relative L2 error, and bf16 rounding on the host (round to nearest even, as the GPU).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "kernels/kernels.h"

// Median of `iters` runs of f after `warmup`, timed with the backend's marks (CUDA events
// on its stream), in ms.
inline double median_ms(bhasa::Backend& be, const std::function<void()>& f, int warmup = 3, int iters = 15) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> ts;
  for (int i = 0; i < iters; ++i) {
    be.mark(0);
    f();
    be.mark(1);
    ts.push_back(be.seconds(0, 1) * 1e3);
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

// ||a - b|| / ||b||; infinite when a holds a NaN or an infinity.
inline double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-60));
}

inline uint16_t bf16_bits(float f) {  // torch: x.to(torch.bfloat16) (finite x)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float from_bf16_bits(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
