// AdamW against a hand computation, sum of squares, axpy.
#include <gtest/gtest.h>

#include "core/error.h"
#include "kernel_test_util.h"
#include "kernels/kernels.h"

using namespace bhasa;
using namespace bhasa::test;

TEST(AdamW, TwoStepsMatchHandComputation) {
  // One element, worked by hand: p = 1, g = 0.5 then -0.25, grad_scale 0.5,
  // lr 0.1, b1 0.9, b2 0.99, eps 1e-8, wd 0.01.
  float p = 1.f, m = 0.f, v = 0.f;
  const float lr = 0.1f, b1 = 0.9f, b2 = 0.99f, eps = 1e-8f, wd = 0.01f;
  auto be = make_cpu_backend();
  float g = 0.5f;
  be->adamw(1, &p, &g, &m, &v, lr, b1, b2, eps, wd, 1, 0.5f);
  // step 1: g' = 0.25; m = 0.025; v = 0.000625; m_hat = 0.25; v_hat = 0.0625 (sqrt 0.25)
  // p = 1 - 0.1 * (0.25 / (0.25 + 1e-8) + 0.01 * 1) = 1 - 0.1 * 1.01 (approx) = 0.899
  const double p1 = 1.0 - 0.1 * (0.25 / (0.25 + 1e-8) + 0.01 * 1.0);
  EXPECT_NEAR(m, 0.025, 1e-8);
  EXPECT_NEAR(v, 0.000625, 1e-9);
  EXPECT_NEAR(p, p1, 1e-6);
  g = -0.25f;
  be->adamw(1, &p, &g, &m, &v, lr, b1, b2, eps, wd, 2, 0.5f);
  // step 2: g' = -0.125; m = 0.0225 - 0.0125 = 0.01; v = 0.00061875 + 0.00015625 = 0.000775
  const double m2 = 0.01, v2 = 0.000775;
  const double m_hat = m2 / (1 - 0.81), v_hat = v2 / (1 - 0.9801);
  const double p2 = p1 - 0.1 * (m_hat / (std::sqrt(v_hat) + 1e-8) + 0.01 * p1);
  EXPECT_NEAR(m, m2, 1e-8);
  EXPECT_NEAR(v, v2, 1e-9);
  EXPECT_NEAR(p, p2, 1e-6);
}

TEST(AdamW, VectorMatchesDoubleAndRejectsStepZero) {
  const size_t n = 1003;
  Vec p = randn(n, 1), g = randn(n, 2), m = randn(n, 3, 0.1), v = randn(n, 4, 0.1);
  for (auto& x : v) x = std::abs(x);
  auto pf = to_float(p), gf = to_float(g), mf = to_float(m), vf = to_float(v);
  cpu::adamw<double>(n, p.data(), g.data(), m.data(), v.data(), 1e-3, 0.9, 0.95, 1e-8, 0.1, 7, 0.8);
  make_cpu_backend()->adamw(n, pf.data(), gf.data(), mf.data(), vf.data(), 1e-3f, 0.9f, 0.95f, 1e-8f,
                            0.1f, 7, 0.8f);
  EXPECT_LT(rel_err(pf, p), 1e-6);
  EXPECT_LT(rel_err(mf, m), 1e-6);
  EXPECT_LT(rel_err(vf, v), 1e-6);
  EXPECT_THROW(cpu::adamw<float>(n, pf.data(), gf.data(), mf.data(), vf.data(), 1e-3f, 0.9f, 0.95f,
                                 1e-8f, 0.1f, 0, 1.f),
               Error);
}

TEST(SumSquares, MatchesDoubleAndIsDeterministic) {
  const size_t n = 100003;
  const Vec g = randn(n, 5);
  double ref = 0;
  for (double x : g) ref += double(float(x)) * double(float(x));
  const auto gf = to_float(g);
  auto be = make_cpu_backend();
  const double got = be->sum_squares(n, gf.data());
  EXPECT_NEAR(got, ref, 1e-6 * ref);
  EXPECT_EQ(got, be->sum_squares(n, gf.data()));
  EXPECT_EQ(be->sum_squares(0, gf.data()), 0.0);
}

TEST(Axpy, AddsScaled) {
  const size_t n = 1001;
  const auto x = to_float(randn(n, 6)), y0 = to_float(randn(n, 7));
  auto y = y0;
  make_cpu_backend()->axpy(n, -1.5f, x.data(), y.data());
  for (size_t i = 0; i < n; ++i) ASSERT_FLOAT_EQ(y[i], y0[i] + -1.5f * x[i]);
}
