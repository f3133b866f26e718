// The whole model against the float64 references in tests/data/<case>/reference.safetensors:
// logits and loss to 1e-5 relative, every gradient to 1e-4 relative.
#include <gtest/gtest.h>

#include <cmath>

#include "io/model_dir.h"
#include "io/safetensors.h"
#include "fixture_util.h"
#include "model/mamba.h"

using namespace bhasa;
using bhasa::test::rel_err;

namespace {
class Fixture : public ::testing::TestWithParam<const char*> {};

TEST_P(Fixture, LogitsLossAndGradientsMatchReference) {
  const std::string dir = test::fixture_dir(GetParam());
  ModelFiles files = load_model_dir(dir);
  auto ref = read_tensors(dir + "/reference.safetensors");
  const test::ReferenceBatch batch = test::reference_batch(ref.at("input_ids"));
  const int B = batch.B, L = batch.L, V = files.cfg.vocab_size;
  const std::vector<int32_t>& ids = batch.ids;
  const std::vector<int32_t>& targets = batch.targets;
  auto backend = make_cpu_backend();
  MambaLM model(files.cfg, *backend);
  model.load_params(files.params.data());
  model.plan(B, L);

  const double loss = model.forward(ids.data(), targets.data(), false);
  std::vector<float> logits(size_t(B) * L * V);
  backend->download(logits.data(), model.logits(), logits.size());
  const double logit_err = rel_err(logits.data(), ref.at("logits").f32.data(), logits.size());
  const double ref_loss = ref.at("loss").f32[0];
  std::printf("[%s] logits rel err %.3g, loss %.7f vs %.7f (rel %.3g)\n", GetParam(), logit_err, loss,
              ref_loss, std::fabs(loss - ref_loss) / ref_loss);
  EXPECT_LE(logit_err, 1e-5);
  EXPECT_LE(std::fabs(loss - ref_loss) / std::fabs(ref_loss), 1e-5);

  model.zero_grads();
  const double loss2 = model.forward(ids.data(), targets.data(), true);
  EXPECT_DOUBLE_EQ(loss, loss2);
  model.backward();
  std::vector<float> grads(model.num_params());
  model.store_grads(grads.data());
  double worst = 0;
  std::string worst_name;
  for (const ParamTensor& t : model.layout().tensors) {
    auto it = ref.find("grad." + t.name);
    ASSERT_NE(it, ref.end()) << "reference has no grad." << t.name;
    ASSERT_EQ(it->second.f32.size(), t.numel) << t.name;
    const double e = rel_err(grads.data() + t.offset, it->second.f32.data(), t.numel);
    EXPECT_LE(e, 1e-4) << "grad." << t.name;
    if (e > worst) worst = e, worst_name = t.name;
  }
  std::printf("[%s] worst gradient rel err %.3g (%s)\n", GetParam(), worst, worst_name.c_str());
}

// No valid target: the loss is 0 and so is every gradient (the head's forward leaves a zero
// d loss / d normed_f for backward, not stale logits).
TEST(Model, AllTargetsIgnoredGivesZeroGradients) {
  const std::string dir = test::fixture_dir("hf-tiny");
  ModelFiles files = load_model_dir(dir);
  const auto ref = read_tensors(dir + "/reference.safetensors");
  const test::ReferenceBatch batch = test::reference_batch(ref.at("input_ids"));
  auto backend = make_cpu_backend();
  MambaLM model(files.cfg, *backend);
  model.load_params(files.params.data());
  model.plan(batch.B, batch.L);
  model.zero_grads();
  model.forward(batch.ids.data(), batch.targets.data(), true);  // leaves non-zero buffers behind
  model.backward();
  const std::vector<int32_t> none(batch.ids.size(), -1);
  model.zero_grads();
  EXPECT_EQ(model.forward(batch.ids.data(), none.data(), true), 0.0);
  model.backward();
  std::vector<float> grads(model.num_params());
  model.store_grads(grads.data());
  for (float g : grads) ASSERT_EQ(g, 0.0f);
}

INSTANTIATE_TEST_SUITE_P(AllCases, Fixture, ::testing::Values("hf-tiny", "hf-small", "ssm-mlp-layernorm"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& ch : s) if (ch == '-') ch = '_';
                           return s;
                         });
}  // namespace
