// Causal depthwise conv1d + SiLU: forward vs float64 (strided input), backward vs
// finite differences, the stateful inference variant vs the full-sequence one.
#include <gtest/gtest.h>

#include <cstring>

#include "kernel_test_util.h"
#include "kernels/kernels.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

Vec reference_conv(int B, int L, int E, int K, const Vec& x, int ldx, const Vec& w, const Vec* bias) {
  Vec out(static_cast<size_t>(B) * L * E);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < L; ++t)
      for (int e = 0; e < E; ++e) {
        double p = bias ? (*bias)[e] : 0.0;
        for (int k = 0; k < K; ++k) {
          const int s = t - (K - 1) + k;
          if (s >= 0) p += w[e * K + k] * x[(static_cast<size_t>(b) * L + s) * ldx + e];
        }
        out[(static_cast<size_t>(b) * L + t) * E + e] = p / (1 + std::exp(-p));
      }
  return out;
}

}  // namespace

TEST(Conv1d, ForwardMatchesFloat64) {
  const int B = 2, L = 11, E = 70, K = 4, ldx = 2 * E;  // x is the first half of in_proj's output
  const Vec x = randn(static_cast<size_t>(B) * L * ldx, 1), w = randn(E * K, 2, 0.5), bias = randn(E, 3);
  auto xf = to_float(x), wf = to_float(w), bf = to_float(bias);
  std::vector<float> out(static_cast<size_t>(B) * L * E);
  make_cpu_backend()->conv1d_silu_forward(B, L, E, K, xf.data(), ldx, wf.data(), bf.data(), out.data());
  EXPECT_LT(rel_err(out, reference_conv(B, L, E, K, x, ldx, w, &bias)), 1e-5);
  cpu::conv1d_silu_forward<float>(B, L, E, K, xf.data(), ldx, wf.data(), nullptr, out.data());
  EXPECT_LT(rel_err(out, reference_conv(B, L, E, K, x, ldx, w, nullptr)), 1e-5);
}

TEST(Conv1d, BackwardMatchesFiniteDifferences) {
  // E = 70: a full 64-channel block and a ragged one; L < K - 1 + a few.
  const int B = 2, L = 6, E = 70, K = 4, ldx = E + 5;
  Vec x = randn(static_cast<size_t>(B) * L * ldx, 4), w = randn(E * K, 5, 0.5), bias = randn(E, 6);
  const Vec G = randn(static_cast<size_t>(B) * L * E, 7);
  auto loss = [&] {
    Vec out(G.size());
    cpu::conv1d_silu_forward<double>(B, L, E, K, x.data(), ldx, w.data(), bias.data(), out.data());
    return dot(out.data(), G.data(), G.size());
  };
  const double acc = 0.5;
  Vec dx(x.size(), 99.0), dw(w.size(), acc), dbias(E, acc);
  cpu::conv1d_silu_backward<double>(B, L, E, K, x.data(), ldx, w.data(), bias.data(), G.data(), dx.data(),
                                    dw.data(), dbias.data());
  for (auto& v : dw) v -= acc;
  for (auto& v : dbias) v -= acc;
  const Vec ndx = numeric_grad(x, loss);
  EXPECT_LT(rel_err(gather(dx.data(), B * L, E, ldx), gather(ndx.data(), B * L, E, ldx)), 1e-6);
  for (int r = 0; r < B * L; ++r)
    for (int e = E; e < ldx; ++e) ASSERT_EQ(dx[r * ldx + e], 99.0);  // "=" only on the E columns
  EXPECT_LT(rel_err(dw, numeric_grad(w, loss)), 1e-6);
  EXPECT_LT(rel_err(dbias, numeric_grad(bias, loss)), 1e-6);
}

TEST(Conv1d, FloatBackwardIsDeterministic) {
  const int B = 3, L = 40, E = 200, K = 4;
  const auto x = to_float(randn(B * L * E, 8)), w = to_float(randn(E * K, 9)), bias = to_float(randn(E, 10));
  const auto G = to_float(randn(B * L * E, 11));
  auto be = make_cpu_backend();
  std::vector<float> r[2][3];
  for (auto& v : r) {
    v[0].assign(x.size(), 0.f);
    v[1].assign(w.size(), 0.f);
    v[2].assign(E, 0.f);
    be->conv1d_silu_backward(B, L, E, K, x.data(), E, w.data(), bias.data(), G.data(), v[0].data(),
                             v[1].data(), v[2].data());
  }
  for (int k = 0; k < 3; ++k) EXPECT_EQ(0, std::memcmp(r[0][k].data(), r[1][k].data(), r[0][k].size() * 4));
}

TEST(Conv1d, WithStateTokenByTokenEqualsFullSequence) {
  const int B = 2, L = 9, E = 70, K = 4, ldx = E + 3;
  const auto x = to_float(randn(static_cast<size_t>(B) * L * ldx, 12));
  const auto w = to_float(randn(E * K, 13)), bias = to_float(randn(E, 14));
  auto be = make_cpu_backend();
  std::vector<float> full(static_cast<size_t>(B) * L * E);
  be->conv1d_silu_forward(B, L, E, K, x.data(), ldx, w.data(), bias.data(), full.data());
  // Prefill 4 tokens, then one at a time, then the last 2 together.
  std::vector<float> state(static_cast<size_t>(B) * (K - 1) * E, 0.f);
  int t = 0;
  for (int len : {4, 1, 1, 1, 2}) {
    std::vector<float> xs(static_cast<size_t>(B) * len * ldx), out(static_cast<size_t>(B) * len * E);
    for (int b = 0; b < B; ++b)
      std::memcpy(&xs[static_cast<size_t>(b) * len * ldx], &x[(static_cast<size_t>(b) * L + t) * ldx],
                  sizeof(float) * len * ldx);
    be->conv1d_silu_with_state(B, len, E, K, xs.data(), ldx, w.data(), bias.data(), state.data(), out.data());
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < len; ++i)
        for (int e = 0; e < E; ++e)
          ASSERT_NEAR(out[(static_cast<size_t>(b) * len + i) * E + e], full[(static_cast<size_t>(b) * L + t + i) * E + e],
                      1e-6)
              << "b " << b << " t " << t + i << " e " << e;
    t += len;
  }
  ASSERT_EQ(t, L);
  // The state holds the last K-1 inputs, oldest first.
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < K - 1; ++j)
      for (int e = 0; e < E; ++e)
        ASSERT_EQ(state[(static_cast<size_t>(b) * (K - 1) + j) * E + e],
                  x[(static_cast<size_t>(b) * L + L - (K - 1) + j) * ldx + e]);
}
