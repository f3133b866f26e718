// The fused training head (Backend::head_loss) on the GPU against the CPU's separate ops
// (gemm, cross_entropy, linear_backward over the whole batch): loss, dX, dW in each GEMM
// math, on chunks that do not divide T (and one chunk), with ignored targets, odd V, and a
// V whose bf16 row does not fit in shared memory. dX is poisoned with NaN, dW starts
// random ("+="); a second call is bitwise the same; scale 0 writes nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/error.h"
#include "cuda_test_util.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();

std::unique_ptr<Backend> gpu_with_chunk(GemmMath math, int chunk) {
  CudaOptions opt;
  opt.gemm = math;
  opt.head_chunk = chunk;
  return make_cuda_backend(opt);
}

struct HeadCase {
  int T, V, D, chunk;
};

struct HeadData {
  std::vector<float> X, W, dW0;  // (T, D), (V, D), (V, D)
  std::vector<int32_t> targets;  // (T), every 7th ignored
  float scale;
};

HeadData make_data(const HeadCase& c, std::mt19937& rng) {
  HeadData d;
  d.X = randn(size_t(c.T) * c.D, rng);
  d.W = randn(size_t(c.V) * c.D, rng, 3.0f / std::sqrt(float(c.D)));  // logits ~ N(0, 9)
  d.dW0 = randn(size_t(c.V) * c.D, rng, 1e-3f);
  d.targets.resize(c.T);
  int valid = 0;
  for (int t = 0; t < c.T; ++t) {
    d.targets[t] = t % 7 == 3 ? -1 : int32_t(rng() % c.V);
    valid += d.targets[t] >= 0;
  }
  d.scale = 1.0f / valid;
  return d;
}

// The separate ops on the CPU: loss sum, dX, dW (dW starting from dW0).
double reference(const HeadCase& c, const HeadData& d, std::vector<float>& dX, std::vector<float>& dW) {
  auto cpu = make_cpu_backend();
  std::vector<float> logits(size_t(c.T) * c.V);
  cpu->gemm(false, true, c.T, c.V, c.D, d.X.data(), c.D, d.W.data(), c.D, 0.0f, logits.data(), c.V);
  const double loss = cpu->cross_entropy(c.T, c.V, logits.data(), c.V, d.targets.data(), d.scale);
  dX.assign(size_t(c.T) * c.D, 0.0f);
  dW = d.dW0;
  cpu->linear_backward(c.T, c.V, c.D, logits.data(), c.V, d.W.data(), c.D, d.X.data(), c.D, 0.0f, dX.data(),
                       c.D, dW.data());
  return loss;
}

class CudaHead : public ::testing::TestWithParam<GemmMath> {};

TEST_P(CudaHead, MatchesCpuSeparateOps) {
  if (!cuda_gpu_available()) GTEST_SKIP() << "no CUDA GPU on this machine";
  const GemmMath math = GetParam();
  const double tol = math == GemmMath::fp32 ? 1e-5 : math == GemmMath::tf32 ? 3e-3 : 1e-2;
  std::mt19937 rng(21);
  // chunk 128 of 300 rows (3 chunks, the last 44); V = 50280 (the m130 vocabulary, a bf16
  // row in shared memory); V = 65 (not a multiple of 8: padded bf16 rows); V = 130003
  // (a bf16 row over the shared-memory limit: the kernel that reads the row twice).
  for (const HeadCase& c : {HeadCase{300, 1000, 64, 128}, HeadCase{70, 50280, 96, 32},
                            HeadCase{200, 65, 40, 64}, HeadCase{20, 130003, 32, 8}}) {
    const HeadData d = make_data(c, rng);
    std::vector<float> rdX, rdW;
    const double rloss = reference(c, d, rdX, rdW);
    for (int k = 0; k < 2; ++k) {  // the case's chunk, then one chunk for the whole batch
      auto gpu = gpu_with_chunk(math, k == 0 ? c.chunk : c.T);
      DevBuf X(*gpu, d.X), W(*gpu, d.W), dX(*gpu, std::vector<float>(d.X.size(), kNaN)), dW(*gpu, d.dW0);
      DevIds tg(*gpu, d.targets);
      const double loss = gpu->head_loss(c.T, c.V, c.D, X.p, W.p, tg.p, d.scale, dX.p, dW.p);
      const auto gdX = dX.host(), gdW = dW.host();
      // dW's reference change, so the error is measured on what head_loss added
      std::vector<float> add_ref(rdW.size()), add_got(rdW.size());
      for (size_t i = 0; i < rdW.size(); ++i) add_ref[i] = rdW[i] - d.dW0[i], add_got[i] = gdW[i] - d.dW0[i];
      const double e_loss = std::fabs(loss - rloss) / rloss, e_dx = rel_l2(gdX, rdX), e_dw = rel_l2(add_got, add_ref);
      std::printf("[%s T=%d V=%d D=%d chunk=%d] loss %.6f vs %.6f (rel %.2e), dX %.2e, dW %.2e\n",
                  gemm_math_name(math), c.T, c.V, c.D, k == 0 ? c.chunk : c.T, loss, rloss, e_loss, e_dx, e_dw);
      EXPECT_LE(e_loss, tol);
      EXPECT_LE(e_dx, tol);
      EXPECT_LE(e_dw, tol);

      // The same call again: bitwise the same (fixed-order sums, no atomics).
      DevBuf dX2(*gpu, std::vector<float>(d.X.size(), kNaN)), dW2(*gpu, d.dW0);
      const double loss2 = gpu->head_loss(c.T, c.V, c.D, X.p, W.p, tg.p, d.scale, dX2.p, dW2.p);
      EXPECT_EQ(loss, loss2);
      EXPECT_EQ(dX2.host(), gdX);
      EXPECT_EQ(dW2.host(), gdW);

      // scale 0: the loss only (fp32 logits: the loss-only kernel, sums in another order);
      // dX and dW untouched
      DevBuf dW3(*gpu, d.dW0);
      const double loss3 = gpu->head_loss(c.T, c.V, c.D, X.p, W.p, tg.p, 0.0f, nullptr, dW3.p);
      EXPECT_NEAR(loss3, loss, 1e-6 * loss);
      EXPECT_EQ(dW3.host(), d.dW0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Maths, CudaHead, ::testing::Values(GemmMath::fp32, GemmMath::tf32, GemmMath::bf16),
                         [](const auto& info) { return std::string(gemm_math_name(info.param)); });

// A NaN in X never gives a finite loss; a target >= V is an Error.
TEST(CudaHeadChecks, NanAndBadTarget) {
  if (!cuda_gpu_available()) GTEST_SKIP() << "no CUDA GPU on this machine";
  for (GemmMath math : {GemmMath::fp32, GemmMath::bf16}) {
    auto gpu = gpu_with_chunk(math, 16);
    std::mt19937 rng(5);
    const HeadCase c{40, 200, 16, 16};
    HeadData d = make_data(c, rng);
    d.X[size_t(33) * c.D + 5] = kNaN;  // a row of the last chunk
    DevBuf X(*gpu, d.X), W(*gpu, d.W), dX(*gpu, d.X.size()), dW(*gpu, d.dW0);
    DevIds tg(*gpu, d.targets);
    const double loss = gpu->head_loss(c.T, c.V, c.D, X.p, W.p, tg.p, d.scale, dX.p, dW.p);
    EXPECT_FALSE(std::isfinite(loss)) << gemm_math_name(math);
    d.targets[17] = c.V;
    DevIds bad(*gpu, d.targets);
    EXPECT_THROW(gpu->head_loss(c.T, c.V, c.D, X.p, W.p, bad.p, d.scale, dX.p, dW.p), Error);
  }
}

}  // namespace
