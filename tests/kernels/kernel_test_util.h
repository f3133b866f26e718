// Helpers shared by the kernel tests: seeded random tensors, central finite
// differences in float64, and error measures.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"

namespace bhasa::test {

using Vec = std::vector<double>;

inline Vec randn(size_t n, uint32_t seed, double scale = 1.0, double offset = 0.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(0.0, 1.0);
  Vec v(n);
  for (auto& x : v) x = offset + scale * dist(rng);
  return v;
}

inline std::vector<float> to_float(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }

// max |a - b| / max |b|: the error relative to the reference tensor's scale.
template <class A, class B>
double rel_err(const A& a, const B& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num = std::max(num, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    den = std::max(den, std::abs(static_cast<double>(b[i])));
  }
  return den > 0 ? num / den : num;
}

// d loss / d x[i] for every i, by central differences (x is restored).
inline Vec numeric_grad(Vec& x, const std::function<double()>& loss, double eps = 1e-6) {
  Vec g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + eps;
    const double up = loss();
    x[i] = keep - eps;
    const double down = loss();
    x[i] = keep;
    g[i] = (up - down) / (2 * eps);
  }
  return g;
}

// sum(a * b) over the first n elements
inline double dot(const double* a, const double* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Elements of a strided (rows, cols) view, gathered densely.
template <class T>
std::vector<double> gather(const T* p, int rows, int cols, int ld) {
  std::vector<double> out(static_cast<size_t>(rows) * cols);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) out[static_cast<size_t>(r) * cols + c] = p[static_cast<size_t>(r) * ld + c];
  return out;
}

}  // namespace bhasa::test
