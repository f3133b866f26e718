// Dropout: the mask is a pure function of (seed, index), kept elements are scaled by
// 1/(1-p), the kept fraction is ~1-p, and p = 0 is the identity.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "kernel_test_util.h"
#include "kernels/dropout.h"
#include "kernels/kernels.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

// x (n) after dropout(p, seed) on the float CPU backend.
std::vector<float> dropped(const std::vector<float>& x, float p, uint64_t seed) {
  std::vector<float> y = x;
  make_cpu_backend()->dropout(y.size(), y.data(), p, seed);
  return y;
}

TEST(Dropout, KeptValuesAreScaledAndTheFractionIsOneMinusP) {
  const size_t n = 1 << 20;
  const auto x = to_float(randn(n, 7, 1.0, 3.0));  // mean 3: no exact zeros in x
  for (float p : {0.1f, 0.2f, 0.5f, 0.9f}) {
    const auto y = dropped(x, p, 1234);
    const float scale = 1.0f / (1.0f - p);
    size_t kept = 0;
    for (size_t i = 0; i < n; ++i) {
      if (y[i] == 0.0f) continue;
      ++kept;
      ASSERT_EQ(y[i], x[i] * scale) << "p=" << p << " i=" << i;
    }
    const double frac = double(kept) / n;
    // binomial sd at n = 2^20 is <= 0.0005; 0.003 is ~6 sd.
    EXPECT_NEAR(frac, 1.0 - p, 3e-3) << "p=" << p;
    // The per-element mask matches the shared rule (what the GPU computes too).
    const uint64_t key = mix64(1234);
    for (size_t i = 0; i < 1000; ++i)
      EXPECT_EQ(y[i] != 0.0f, dropout_keep(key, i, dropout_threshold(p))) << i;
  }
}

TEST(Dropout, SameSeedSameMaskOtherSeedOtherMask) {
  const size_t n = 100000;
  const auto x = to_float(randn(n, 8, 1.0, 3.0));
  const auto a = dropped(x, 0.2f, 42), b = dropped(x, 0.2f, 42), c = dropped(x, 0.2f, 43);
  EXPECT_EQ(a, b);
  size_t differ = 0;
  for (size_t i = 0; i < n; ++i) differ += (a[i] == 0.0f) != (c[i] == 0.0f);
  // Independent masks at p = 0.2 disagree on 2 p (1-p) = 32% of elements.
  EXPECT_NEAR(double(differ) / n, 0.32, 0.01);
  // Applying the mask to a gradient of ones gives the mask itself, scaled: what backward uses.
  std::vector<float> ones(n, 1.0f);
  make_cpu_backend()->dropout(n, ones.data(), 0.2f, 42);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(ones[i] != 0.0f, a[i] != 0.0f) << i;
}

TEST(Dropout, ZeroPIsTheIdentityAndBadPIsAnError) {
  const auto x = to_float(randn(999, 9));
  EXPECT_EQ(dropped(x, 0.0f, 5), x);
  std::vector<float> y = x;
  EXPECT_THROW(make_cpu_backend()->dropout(y.size(), y.data(), 1.0f, 5), Error);
  EXPECT_THROW(make_cpu_backend()->dropout(y.size(), y.data(), -0.1f, 5), Error);
}

TEST(Dropout, DoubleKernelDropsTheSameElements) {
  const Vec x = randn(5000, 10, 1.0, 3.0);
  Vec yd = x;
  cpu::dropout<double>(yd.size(), yd.data(), 0.3f, 77);
  const auto yf = dropped(to_float(x), 0.3f, 77);
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(yd[i] == 0.0, yf[i] == 0.0f) << i;
    if (yd[i] != 0.0) {
      EXPECT_EQ(yd[i], x[i] * double(dropout_scale(0.3f)));
    }
  }
}

}  // namespace
