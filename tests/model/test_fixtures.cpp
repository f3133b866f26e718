// The whole model against the float64 references in tests/data/<case>/reference.safetensors:
// logits and loss to 1e-5 relative, every gradient to 1e-4 relative.
#include <gtest/gtest.h>

#include <cmath>

#include "io/model_dir.h"
#include "io/safetensors.h"
#include "model/mamba.h"

using namespace bhasa;

namespace {
// max |a - b| / max |b|: the "relative" error.
double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, std::fabs(double(a[i]) - b[i]));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return num / std::max(den, 1e-30);
}

class Fixture : public ::testing::TestWithParam<const char*> {};

TEST_P(Fixture, LogitsLossAndGradientsMatchReference) {
  const std::string dir = std::string(BHASA_TEST_DATA) + "/" + GetParam();
  ModelFiles files = load_model_dir(dir);
  auto ref = read_tensors(dir + "/reference.safetensors");
  const TensorData& in = ref.at("input_ids");
  const int B = int(in.shape[0]), L = int(in.shape[1]), V = files.cfg.vocab_size;
  std::vector<int32_t> ids(size_t(B) * L), targets(size_t(B) * L);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < L; t++) {
      ids[b * L + t] = int32_t(in.i64[b * L + t]);
      targets[b * L + t] = t + 1 < L ? int32_t(in.i64[b * L + t + 1]) : -1;
    }
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

INSTANTIATE_TEST_SUITE_P(AllCases, Fixture, ::testing::Values("hf-tiny", "hf-small", "ssm-mlp-layernorm"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& ch : s) if (ch == '-') ch = '_';
                           return s;
                         });
}  // namespace
