// Cross-entropy: loss vs float64 (with an ignored row), in-place dlogits vs finite
// differences, large logits stay finite; Backend::head_loss's default vs the separate ops.
#include <gtest/gtest.h>

#include "core/error.h"
#include "kernel_test_util.h"
#include "kernels/kernels.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

double reference_xent(int T, int V, const Vec& logits, int ldl, const std::vector<int32_t>& targets) {
  double total = 0;
  for (int t = 0; t < T; ++t) {
    if (targets[t] < 0) continue;
    double mx = -1e300;
    for (int i = 0; i < V; ++i) mx = std::max(mx, logits[t * ldl + i]);
    double s = 0;
    for (int i = 0; i < V; ++i) s += std::exp(logits[t * ldl + i] - mx);
    total += std::log(s) + mx - logits[t * ldl + targets[t]];
  }
  return total;
}

}  // namespace

TEST(CrossEntropy, LossMatchesFloat64WithIgnoredRow) {
  const int T = 6, V = 1500, ldl = V + 8;  // V > 1024 exercises the blocked sum
  const Vec logits = randn(T * ldl, 1, 3.0);
  const std::vector<int32_t> targets = {5, -1, 1499, 0, 700, -100};
  const double ref = reference_xent(T, V, logits, ldl, targets);
  auto lf = to_float(logits);
  const double got = make_cpu_backend()->cross_entropy(T, V, lf.data(), ldl, targets.data(), 0.f);
  EXPECT_NEAR(got, ref, 1e-5 * std::abs(ref));
  EXPECT_EQ(lf, to_float(logits));  // scale 0: logits untouched
}

TEST(CrossEntropy, GradientMatchesFiniteDifferences) {
  const int T = 4, V = 11, ldl = V + 3;
  Vec logits = randn(T * ldl, 2, 2.0);
  const std::vector<int32_t> targets = {3, -1, 10, 0};
  const double scale = 0.37;
  auto loss = [&] {
    Vec copy = logits;
    return cpu::cross_entropy<double>(T, V, copy.data(), ldl, targets.data(), 0.0);
  };
  const Vec numeric = numeric_grad(logits, loss);
  Vec d = logits;
  const double l = cpu::cross_entropy<double>(T, V, d.data(), ldl, targets.data(), scale);
  EXPECT_NEAR(l, reference_xent(T, V, logits, ldl, targets), 1e-12);
  Vec want(numeric);
  for (auto& x : want) x *= scale;
  EXPECT_LT(rel_err(gather(d.data(), T, V, ldl), gather(want.data(), T, V, ldl)), 1e-6);
  for (int i = 0; i < V; ++i) EXPECT_EQ(d[1 * ldl + i], 0.0);  // ignored row: zero gradient
  for (int t = 0; t < T; ++t)
    for (int i = V; i < ldl; ++i) EXPECT_EQ(d[t * ldl + i], logits[t * ldl + i]);  // padding untouched
  // float through the backend vs the float64 gradient
  auto lf = to_float(logits);
  make_cpu_backend()->cross_entropy(T, V, lf.data(), ldl, targets.data(), float(scale));
  EXPECT_LT(rel_err(gather(lf.data(), T, V, ldl), gather(d.data(), T, V, ldl)), 1e-5);
}

TEST(CrossEntropy, HugeLogitsStayFinite) {
  std::vector<float> logits = {1000.f, -1000.f, 999.f};
  const std::vector<int32_t> target = {2};
  const double l = cpu::cross_entropy<float>(1, 3, logits.data(), 3, target.data(), 1.f);
  EXPECT_NEAR(l, std::log(1 + std::exp(-1.0)) + 1.0, 1e-5);
  for (float g : logits) EXPECT_TRUE(std::isfinite(g));
}

TEST(CrossEntropy, RejectsTargetOutsideVocabulary) {
  std::vector<float> logits(4, 0.f);
  const std::vector<int32_t> target = {4};
  EXPECT_THROW(cpu::cross_entropy<float>(1, 4, logits.data(), 4, target.data(), 0.f), Error);
}

namespace {

// The separate ops over the whole batch, as the model ran them before head_loss:
// logits = X @ W^T; loss (and dlogits in place); dX = dlogits @ W; dW += dlogits^T @ X.
double separate_ops(Backend& be, int T, int V, int D, const std::vector<float>& X, const std::vector<float>& W,
                    const std::vector<int32_t>& targets, float scale, std::vector<float>& dX,
                    std::vector<float>& dW) {
  std::vector<float> logits(size_t(T) * V);
  be.gemm(false, true, T, V, D, X.data(), D, W.data(), D, 0.f, logits.data(), V);
  const double loss = be.cross_entropy(T, V, logits.data(), V, targets.data(), scale);
  be.linear_backward(T, V, D, logits.data(), V, W.data(), D, X.data(), D, 0.f, dX.data(), D, dW.data());
  return loss;
}

struct HeadInputs {
  std::vector<float> X, W, dW;
  std::vector<int32_t> targets;
};

HeadInputs head_inputs(int T, int V, int D, uint32_t seed) {
  HeadInputs h;
  h.X = to_float(randn(size_t(T) * D, seed));
  h.W = to_float(randn(size_t(V) * D, seed + 1, 2.0 / std::sqrt(double(D))));
  h.dW = to_float(randn(size_t(V) * D, seed + 2, 1e-3));
  for (int t = 0; t < T; ++t) h.targets.push_back(t % 5 == 2 ? -1 : int32_t((t * 7919) % V));
  return h;
}

}  // namespace

// One chunk (the batch's logits fit in 64 MB): the default head_loss is the separate ops, bit for bit.
TEST(HeadLoss, DefaultIsTheSeparateOpsExactly) {
  const int T = 50, V = 300, D = 24;
  auto be = make_cpu_backend();
  HeadInputs h = head_inputs(T, V, D, 3);
  std::vector<float> dX(size_t(T) * D, 1.f), dW = h.dW, rdX(size_t(T) * D), rdW = h.dW;
  const double loss = be->head_loss(T, V, D, h.X.data(), h.W.data(), h.targets.data(), 0.01f, dX.data(), dW.data());
  const double rloss = separate_ops(*be, T, V, D, h.X, h.W, h.targets, 0.01f, rdX, rdW);
  EXPECT_EQ(loss, rloss);
  EXPECT_EQ(dX, rdX);
  EXPECT_EQ(dW, rdW);
  // scale 0: the loss alone, nothing written
  std::vector<float> dW0 = h.dW;
  EXPECT_EQ(be->head_loss(T, V, D, h.X.data(), h.W.data(), h.targets.data(), 0.f, nullptr, dW0.data()), loss);
  EXPECT_EQ(dW0, h.dW);
}

// Several chunks (V = 40000: 419 rows of logits per chunk, T = 1000 is not a multiple):
// the same up to the order of dW's and the loss's sums over chunks.
TEST(HeadLoss, DefaultOverChunksMatchesTheSeparateOps) {
  const int T = 1000, V = 40000, D = 16;
  auto be = make_cpu_backend();
  HeadInputs h = head_inputs(T, V, D, 4);
  std::vector<float> dX(size_t(T) * D, 1.f), dW = h.dW, rdX(size_t(T) * D), rdW = h.dW;
  const double loss = be->head_loss(T, V, D, h.X.data(), h.W.data(), h.targets.data(), 1e-3f, dX.data(), dW.data());
  const double rloss = separate_ops(*be, T, V, D, h.X, h.W, h.targets, 1e-3f, rdX, rdW);
  EXPECT_NEAR(loss, rloss, 1e-9 * rloss);
  EXPECT_LT(rel_err(dX, rdX), 1e-5);
  for (size_t i = 0; i < dW.size(); ++i) dW[i] -= h.dW[i], rdW[i] -= h.dW[i];
  EXPECT_LT(rel_err(dW, rdW), 1e-5);
}
