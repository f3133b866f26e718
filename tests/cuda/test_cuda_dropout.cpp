// CUDA dropout against the CPU backend: bitwise the same output (same mask, same
// scaled values) for several p and seeds, odd sizes included; and a model training
// pass with dropout whose loss and gradients match the CPU's under fp32 GEMMs.
#include <gtest/gtest.h>

#include "fixture_util.h"

#include <cmath>
#include <cstring>

#include "cuda_test_util.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "model/mamba.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

TEST(CudaDropout, BitwiseEqualsCpu) {
  BHASA_REQUIRE_GPU(gpu);
  auto cpu = make_cpu_backend();
  std::mt19937 rng(11);
  for (size_t n : {size_t(1), size_t(255), size_t(1000003)})
    for (float p : {0.1f, 0.2f, 0.5f})
      for (uint64_t seed : {uint64_t(0), uint64_t(1337), ~uint64_t(0)}) {
        const auto x = randn(n, rng, 1.0f, 2.0f);
        DevBuf d(*gpu, x);
        gpu->dropout(n, d.p, p, seed);
        std::vector<float> ref = x;
        cpu->dropout(n, ref.data(), p, seed);
        const auto out = d.host();
        size_t differ = 0;
        for (size_t i = 0; i < n; ++i) differ += std::memcmp(&out[i], &ref[i], sizeof(float)) != 0;
        EXPECT_EQ(differ, 0u) << "n=" << n << " p=" << p << " seed=" << seed;
      }
  // p = 0 leaves the buffer alone; p = 1 is an error.
  const auto x = randn(100, rng);
  DevBuf d(*gpu, x);
  gpu->dropout(100, d.p, 0.0f, 3);
  EXPECT_EQ(d.host(), x);
  EXPECT_THROW(gpu->dropout(100, d.p, 1.0f, 3), Error);
}

TEST(CudaDropout, ModelTrainingPassMatchesCpu) {
  BHASA_REQUIRE_GPU(gpu, false);  // fp32 GEMMs: compare tightly
  const std::string dir = test::fixture_dir("ssm-mlp-layernorm");
  ModelFiles files = load_model_dir(dir);
  const test::ReferenceBatch batch = test::reference_batch(read_tensors(dir + "/reference.safetensors").at("input_ids"));
  const int B = batch.B, L = batch.L;
  const std::vector<int32_t>& ids = batch.ids;
  const std::vector<int32_t>& targets = batch.targets;
  auto cpu = make_cpu_backend();
  std::vector<float> grads[2];
  double loss[2], loss_plain = 0;
  Backend* backends[2] = {cpu.get(), gpu.get()};
  for (int k = 0; k < 2; ++k) {
    MambaLM m(files.cfg, *backends[k]);
    m.load_params(files.params.data());
    m.plan(B, L);
    if (k == 0) loss_plain = m.forward(ids.data(), targets.data(), true);
    m.set_dropout(0.3f, 4242);
    m.zero_grads();
    loss[k] = m.forward(ids.data(), targets.data(), true);
    m.backward();
    grads[k].resize(m.num_params());
    m.store_grads(grads[k].data());
  }
  std::printf("loss cpu %.7f gpu %.7f (no dropout %.7f)\n", loss[0], loss[1], loss_plain);
  EXPECT_NEAR(loss[1], loss[0], 1e-5 * std::fabs(loss[0]));
  EXPECT_GT(std::fabs(loss[0] - loss_plain), 1e-3);  // the masks changed the loss
  EXPECT_LE(rel_l2(grads[1], grads[0]), 1e-4);
}

}  // namespace
