// Shared by the tests that hold the model against tests/data/<case>/reference.safetensors
// (CPU model, CUDA model, inference): the error measure and the reference batch.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace bhasa::test {

// max |a - b| / max |b|: the issues' "relative" error. NaN or inf never passes.
inline double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, std::fabs(double(a[i]) - b[i]));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return num / std::max(den, 1e-30);
}

inline std::string fixture_dir(const std::string& name) { return std::string(BHASA_TEST_DATA) + "/" + name; }

// The reference's input_ids (B, L) as int32, and the next-token targets the
// reference loss uses: ids[:, 1:], with the last position ignored (-1).
struct ReferenceBatch {
  int B = 0, L = 0;
  std::vector<int32_t> ids, targets;  // (B, L)
};

inline ReferenceBatch reference_batch(const TensorData& input_ids) {
  ReferenceBatch r;
  r.B = int(input_ids.shape[0]);
  r.L = int(input_ids.shape[1]);
  r.ids.resize(size_t(r.B) * r.L);
  r.targets.resize(r.ids.size());
  for (int b = 0; b < r.B; b++)
    for (int t = 0; t < r.L; t++) {
      r.ids[b * r.L + t] = int32_t(input_ids.i64[b * r.L + t]);
      r.targets[b * r.L + t] = t + 1 < r.L ? int32_t(input_ids.i64[b * r.L + t + 1]) : -1;
    }
  return r;
}

}  // namespace bhasa::test
