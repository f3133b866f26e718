// The fused decode-step kernels (norm_gemm, ssm_decode_in, ssm_decode_step) against
// the unfused composition they replace (norm_forward + gemm; conv1d_silu_with_state +
// x_proj; dt_proj + scan_forward at L = 1), both in float64, then float vs float64.
#include <gtest/gtest.h>

#include <array>

#include "kernel_test_util.h"
#include "kernels/sampling.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

struct StepCase {
  int B, E, N, R, K, P;
  Vec xz;                  // (B, 2E): [x | z]
  Vec conv_state, conv_w, conv_b, x_proj, dbc, dt_w, dt_bias, A_log, D, h;
};

StepCase make_step(int B, int E, int N, int R, int K, uint32_t seed) {
  StepCase c{B, E, N, R, K, R + 2 * N, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  c.xz = randn(size_t(B) * 2 * E, seed + 1);
  c.conv_state = randn(size_t(B) * (K - 1) * E, seed + 2);
  c.conv_w = randn(size_t(E) * K, seed + 3, 0.5);
  c.conv_b = randn(E, seed + 4, 0.2);
  c.x_proj = randn(size_t(c.P) * E, seed + 5, 1.0 / std::sqrt(E));
  c.dbc = randn(size_t(B) * c.P, seed + 6);
  c.dt_w = randn(size_t(E) * R, seed + 7, 0.5 / std::sqrt(R));
  c.dt_bias = randn(E, seed + 8, 0.3, -1.0);
  c.A_log = randn(size_t(E) * N, seed + 9, 0.3);
  c.D = randn(E, seed + 10);
  c.h = randn(size_t(B) * E * N, seed + 11, 0.5);
  return c;
}

// The unfused decode step in float64: conv with state, dt_proj, scan_forward at L = 1.
void unfused_step(StepCase& c, Vec& y) {
  const int B = c.B, E = c.E, N = c.N, R = c.R, K = c.K, P = c.P;
  Vec u(size_t(B) * E), dt(size_t(B) * E);
  y.assign(size_t(B) * E, 0.0);
  cpu::conv1d_silu_with_state<double>(B, 1, E, K, c.xz.data(), 2 * E, c.conv_w.data(), c.conv_b.data(),
                                      c.conv_state.data(), u.data());
  cpu::gemm<double>(false, true, B, E, R, c.dbc.data(), P, c.dt_w.data(), R, 0.0, dt.data(), E);
  cpu::scan_forward<double>(B, 1, E, N, 64, u.data(), dt.data(), c.dt_bias.data(), c.A_log.data(),
                            c.dbc.data() + R, c.dbc.data() + R + N, P, c.D.data(), c.xz.data() + E, 2 * E,
                            y.data(), nullptr, c.h.data(), c.h.data());
}

template <class T>
void fused_step(const StepCase& c, std::vector<T>& conv_state, std::vector<T>& h, std::vector<T>& y) {
  auto cv = [](const Vec& v) { return std::vector<T>(v.begin(), v.end()); };
  const auto xz = cv(c.xz), conv_w = cv(c.conv_w), conv_b = cv(c.conv_b), dbc = cv(c.dbc),
             dt_w = cv(c.dt_w), dt_bias = cv(c.dt_bias), A_log = cv(c.A_log), D = cv(c.D);
  conv_state = cv(c.conv_state);
  h = cv(c.h);
  y.assign(size_t(c.B) * c.E, T(NAN));
  cpu::ssm_decode_step<T>(c.B, c.E, c.N, c.R, c.K, xz.data(), xz.data() + c.E, 2 * c.E, conv_state.data(),
                          conv_w.data(), conv_b.data(), dbc.data(), dt_w.data(), dt_bias.data(),
                          A_log.data(), D.data(), h.data(), y.data());
}

}  // namespace

TEST(DecodeStep, SsmStepMatchesUnfusedComposition) {
  for (auto [B, E, N, R, K] : {std::array{1, 96, 16, 12, 4}, std::array{3, 40, 5, 7, 3}, std::array{2, 64, 32, 64, 2}}) {
    StepCase ref = make_step(B, E, N, R, K, 17 + B);
    const StepCase in = ref;
    Vec y_ref;
    unfused_step(ref, y_ref);
    Vec cs, h, y;
    fused_step<double>(in, cs, h, y);
    EXPECT_LT(rel_err(y, y_ref), 1e-12) << B << " " << E;
    EXPECT_LT(rel_err(h, ref.h), 1e-12);
    EXPECT_EQ(cs, ref.conv_state);
    std::vector<float> csf, hf, yf;
    fused_step<float>(in, csf, hf, yf);
    EXPECT_LT(rel_err(yf, y_ref), 1e-5);
    EXPECT_LT(rel_err(hf, ref.h), 1e-5);
    EXPECT_LT(rel_err(csf, ref.conv_state), 1e-7);
  }
}

TEST(DecodeStep, SsmInMatchesConvThenXProj) {
  const int B = 3, E = 72, K = 4;
  StepCase c = make_step(B, E, 16, 8, K, 5);
  const Vec state0 = c.conv_state;
  Vec u(size_t(B) * E), want(size_t(B) * c.P), got(size_t(B) * c.P, NAN), st = c.conv_state;
  cpu::conv1d_silu_with_state<double>(B, 1, E, K, c.xz.data(), 2 * E, c.conv_w.data(), c.conv_b.data(),
                                      st.data(), u.data());
  cpu::gemm<double>(false, true, B, c.P, E, u.data(), E, c.x_proj.data(), E, 0.0, want.data(), c.P);
  cpu::ssm_decode_in<double>(B, E, K, c.P, c.xz.data(), 2 * E, c.conv_state.data(), c.conv_w.data(),
                             c.conv_b.data(), c.x_proj.data(), got.data());
  EXPECT_LT(rel_err(got, want), 1e-12);
  EXPECT_EQ(c.conv_state, state0);  // untouched
}

TEST(DecodeStep, NormGemmMatchesNormThenGemm) {
  const int M = 3, N = 50, K = 64;
  const Vec x = randn(size_t(M) * K, 1, 1.0, 0.3), w = randn(K, 2, 0.2, 1.0), b = randn(K, 3),
            W = randn(size_t(N) * K, 4);
  for (bool rms : {true, false}) {
    Vec h(size_t(M) * K), mean(M), rstd(M), want(size_t(M) * N), got(size_t(M) * N, NAN);
    cpu::norm_forward<double>(M, K, rms, 1e-5, x.data(), w.data(), rms ? nullptr : b.data(), h.data(),
                              mean.data(), rstd.data());
    cpu::gemm<double>(false, true, M, N, K, h.data(), K, W.data(), K, 0.0, want.data(), N);
    cpu::norm_gemm<double>(M, N, K, rms, 1e-5, x.data(), w.data(), rms ? nullptr : b.data(), W.data(),
                           got.data());
    EXPECT_LT(rel_err(got, want), 1e-12);
  }
}

// The Gumbel noise of the sampling rule is finite for every hash (U never 0 or 1) and
// rises with the hash's top bits (U = (k + 0.5) / 2^23 increasing in k).
TEST(DecodeStep, GumbelNoiseIsFiniteAndMonotone) {
  float prev = -INFINITY;
  for (uint64_t k = 0; k < (uint64_t(1) << 23); k += (k < 1024 || k > (uint64_t(1) << 23) - 1024) ? 1 : 997) {
    const float g = gumbel_of_hash(k << 41 | 0x1ffffu);  // low bits do not matter
    ASSERT_TRUE(std::isfinite(g)) << "k=" << k;
    ASSERT_GE(g, prev) << "k=" << k;
    prev = g;
  }
  EXPECT_TRUE(std::isfinite(gumbel_of_hash(~uint64_t(0))));
  EXPECT_TRUE(std::isfinite(gumbel_of_hash(0)));
}
