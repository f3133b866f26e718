// The vectorizable float exp / log1p / softplus against libm in double.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/cpu/fast_math.h"

using namespace bhasa::cpu;

TEST(FastMath, ExpRelativeErrorBelow3e7) {
  double worst = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.001373f) {
    const double want = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(fast_expf(x) - want) / want);
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(fast_expf(0.0f), 1.0f);
  EXPECT_EQ(fast_expf(-88.5f), 0.0f);  // would be subnormal: flushed to exactly 0
  EXPECT_EQ(fast_expf(-1e30f), 0.0f);
  EXPECT_TRUE(std::isfinite(fast_expf(1e30f)));
  EXPECT_TRUE(std::isnan(fast_expf(NAN)));
}

TEST(FastMath, Log1pAndSoftplusRelativeErrorBelow3e7) {
  double worst_log1p = 0, worst_softplus = 0;
  for (float y = 1e-12f; y < 1e8f; y *= 1.01f) {
    const double want = std::log1p(static_cast<double>(y));
    worst_log1p = std::max(worst_log1p, std::abs(fast_log1pf(y) - want) / want);
  }
  for (float x = -30.0f; x <= 30.0f; x += 0.00173f) {
    const double want = x > 20 ? x : std::log1p(std::exp(static_cast<double>(x)));
    worst_softplus = std::max(worst_softplus, std::abs(softplus_(x) - want) / want);
  }
  EXPECT_LT(worst_log1p, 3e-7);
  EXPECT_LT(worst_softplus, 3e-7);
  EXPECT_EQ(softplus_(50.0f), 50.0f);
}
