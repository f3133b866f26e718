// RMSNorm and LayerNorm: forward vs float64, backward vs finite differences,
// "+=" accumulation, determinism.
#include <gtest/gtest.h>

#include <cstring>

#include "kernel_test_util.h"
#include "kernels/kernels.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

Vec reference_norm(int T, int D, bool rms, double eps, const Vec& x, const Vec& w, const Vec& b) {
  Vec out(T * D);
  for (int t = 0; t < T; ++t) {
    double mu = 0, var = 0;
    if (!rms) {
      for (int d = 0; d < D; ++d) mu += x[t * D + d];
      mu /= D;
    }
    for (int d = 0; d < D; ++d) var += (x[t * D + d] - mu) * (x[t * D + d] - mu);
    var /= D;
    for (int d = 0; d < D; ++d)
      out[t * D + d] = (x[t * D + d] - mu) / std::sqrt(var + eps) * w[d] + (rms ? 0.0 : b[d]);
  }
  return out;
}

}  // namespace

class Norm : public ::testing::TestWithParam<bool> {};  // param: rms

TEST_P(Norm, ForwardMatchesFloat64) {
  const bool rms = GetParam();
  const int T = 9, D = 67;
  const Vec x = randn(T * D, 1, 2.0, 0.5), w = randn(D, 2, 0.3, 1.0), b = randn(D, 3);
  auto xf = to_float(x), wf = to_float(w), bf = to_float(b);
  std::vector<float> out(T * D), mean(T), rstd(T);
  make_cpu_backend()->norm_forward(T, D, rms, 1e-5f, xf.data(), wf.data(), rms ? nullptr : bf.data(),
                                   out.data(), mean.data(), rstd.data());
  EXPECT_LT(rel_err(out, reference_norm(T, D, rms, 1e-5, x, w, b)), 1e-5);
}

TEST_P(Norm, BackwardMatchesFiniteDifferences) {
  const bool rms = GetParam();
  const int T = 5, D = 13;
  const double eps = 1e-5;
  Vec x = randn(T * D, 4, 2.0, 0.5), w = randn(D, 5, 0.3, 1.0), b = randn(D, 6);
  const Vec G = randn(T * D, 7);
  Vec mean(T), rstd(T);
  auto loss = [&] {
    Vec out(T * D), mu(T), r(T);
    cpu::norm_forward<double>(T, D, rms, eps, x.data(), w.data(), rms ? nullptr : b.data(), out.data(),
                              mu.data(), r.data());
    return dot(out.data(), G.data(), G.size());
  };
  Vec out(T * D);
  cpu::norm_forward<double>(T, D, rms, eps, x.data(), w.data(), rms ? nullptr : b.data(), out.data(),
                            mean.data(), rstd.data());
  const double acc = 0.125;  // all three outputs are "+="
  Vec dx(T * D, acc), dw(D, acc), db(D, acc);
  cpu::norm_backward<double>(T, D, rms, G.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(),
                             dw.data(), rms ? nullptr : db.data());
  for (auto* v : {&dx, &dw, &db})
    for (auto& e : *v) e -= acc;
  EXPECT_LT(rel_err(dx, numeric_grad(x, loss)), 1e-6);
  EXPECT_LT(rel_err(dw, numeric_grad(w, loss)), 1e-6);
  if (!rms) {
    EXPECT_LT(rel_err(db, numeric_grad(b, loss)), 1e-6);
  }
}

TEST_P(Norm, FloatBackwardIsDeterministicAndMatchesFloat64) {
  const bool rms = GetParam();
  const int T = 300, D = 96;
  const Vec x = randn(T * D, 8), w = randn(D, 9, 0.3, 1.0), b = randn(D, 10), G = randn(T * D, 11);
  Vec mean(T), rstd(T), out(T * D), dx(T * D, 0.0), dw(D, 0.0), db(D, 0.0);
  cpu::norm_forward<double>(T, D, rms, 1e-5, x.data(), w.data(), b.data(), out.data(), mean.data(), rstd.data());
  cpu::norm_backward<double>(T, D, rms, G.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(),
                             dw.data(), db.data());
  auto xf = to_float(x), wf = to_float(w), bf = to_float(b), Gf = to_float(G);
  std::vector<float> meanf(T), rstdf(T), outf(T * D);
  auto be = make_cpu_backend();
  be->norm_forward(T, D, rms, 1e-5f, xf.data(), wf.data(), bf.data(), outf.data(), meanf.data(), rstdf.data());
  std::vector<float> run[2][3];
  for (auto& r : run) {
    r[0].assign(T * D, 0.f);
    r[1].assign(D, 0.f);
    r[2].assign(D, 0.f);
    be->norm_backward(T, D, rms, Gf.data(), xf.data(), wf.data(), meanf.data(), rstdf.data(), r[0].data(),
                      r[1].data(), r[2].data());
  }
  for (int k = 0; k < 3; ++k) EXPECT_EQ(0, std::memcmp(run[0][k].data(), run[1][k].data(), run[0][k].size() * 4));
  EXPECT_LT(rel_err(run[0][0], dx), 1e-5);
  EXPECT_LT(rel_err(run[0][1], dw), 1e-5);
  EXPECT_LT(rel_err(run[0][2], db), 1e-5);
}

// dx_copy: the updated dx again (the next GEMM's dY).
TEST_P(Norm, CopiesDx) {
  const bool rms = GetParam();
  const int T = 5, D = 12;
  auto xf = to_float(randn(T * D, 12)), wf = to_float(randn(D, 13, 0.3, 1.0)), Gf = to_float(randn(T * D, 14));
  std::vector<float> out(T * D), mean(T), rstd(T), dx(T * D, 0.5f), dw(D), db(D), dx_copy(T * D, -1.f);
  auto be = make_cpu_backend();
  be->norm_forward(T, D, rms, 1e-5f, xf.data(), wf.data(), nullptr, out.data(), mean.data(), rstd.data());
  be->norm_backward(T, D, rms, Gf.data(), xf.data(), wf.data(), mean.data(), rstd.data(), dx.data(), dw.data(),
                    rms ? nullptr : db.data(), dx_copy.data());
  EXPECT_EQ(dx_copy, dx);
  EXPECT_NE(dx[0], 0.5f);
}

INSTANTIATE_TEST_SUITE_P(RmsAndLayer, Norm, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "rms" : "layer"; });
