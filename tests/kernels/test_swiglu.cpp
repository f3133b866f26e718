// SwiGLU gate: forward vs float64, backward vs finite differences.
#include <gtest/gtest.h>

#include "kernel_test_util.h"
#include "kernels/kernels.h"

using namespace bhasa;
using namespace bhasa::test;

TEST(Swiglu, ForwardMatchesFloat64) {
  const int T = 5, I = 37;
  const Vec f = randn(T * 2 * I, 1, 2.0);
  Vec ref(T * I);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < I; ++i) {
      const double y = f[t * 2 * I + i], g = f[t * 2 * I + I + i];
      ref[t * I + i] = y * g / (1 + std::exp(-g));
    }
  auto ff = to_float(f);
  std::vector<float> out(T * I);
  make_cpu_backend()->swiglu_forward(T, I, ff.data(), out.data());
  EXPECT_LT(rel_err(out, ref), 1e-6);
}

TEST(Swiglu, BackwardMatchesFiniteDifferences) {
  const int T = 4, I = 19;
  Vec f = randn(T * 2 * I, 2, 2.0);
  const Vec G = randn(T * I, 3);
  auto loss = [&] {
    Vec out(T * I);
    cpu::swiglu_forward<double>(T, I, f.data(), out.data());
    return dot(out.data(), G.data(), G.size());
  };
  Vec df(T * 2 * I, 99.0);
  cpu::swiglu_backward<double>(T, I, f.data(), G.data(), df.data());
  EXPECT_LT(rel_err(df, numeric_grad(f, loss)), 1e-6);
  // float backend vs float64
  auto ff = to_float(f), Gf = to_float(G);
  std::vector<float> dff(df.size());
  make_cpu_backend()->swiglu_backward(T, I, ff.data(), Gf.data(), dff.data());
  EXPECT_LT(rel_err(dff, df), 1e-5);
}
