// The recurrent decoding path against references:
// - greedy decoding of every fixture case reproduces greedy_ids, step logits to 1e-4;
// - prefill + steps equal the full forward pass over the same sequence, batch 1 and 2;
// - a prompt prefilled in two pieces equals it prefilled at once.
#include <gtest/gtest.h>

#include "infer/generator.h"
#include "infer/model_loader.h"
#include "infer_test_util.h"
#include "io/safetensors.h"

using namespace bhasa;
using bhasa::test::rel_err;

namespace {

const char* kCases[] = {"hf-tiny", "hf-small", "ssm-mlp-layernorm"};
std::string case_name(const ::testing::TestParamInfo<const char*>& info) {
  std::string s = info.param;
  for (char& c : s)
    if (c == '-') c = '_';
  return s;
}

class Greedy : public ::testing::TestWithParam<const char*> {};

TEST_P(Greedy, ReproducesReferenceIdsAndLogits) {
  const std::string dir = test::fixture_dir(GetParam());
  LoadedModel m = load_model(dir, "cpu");
  ASSERT_EQ(m.tokenizer, nullptr);  // fixtures have no tokenizer.json: ids only
  auto ref = read_tensors(dir + "/reference.safetensors");
  const TensorData& prompt = ref.at("prompt_ids");
  const TensorData& greedy = ref.at("greedy_ids");
  const TensorData& glogits = ref.at("greedy_logits");
  const int V = m.model->config().vocab_size;
  const size_t G = greedy.i64.size();
  ASSERT_EQ(glogits.shape[0], int64_t(G));
  ASSERT_EQ(glogits.shape[1], V);

  SamplerOptions greedy_opts;
  greedy_opts.temperature = 0;
  Generator gen(*m.model, nullptr, greedy_opts);
  std::vector<int32_t> ids(prompt.i64.begin(), prompt.i64.end());
  gen.feed(ids);
  double worst = 0;
  for (size_t i = 0; i < G; ++i) {
    const double e = rel_err(gen.logits(), glogits.f32.data() + i * V, V);
    worst = std::max(worst, e);
    EXPECT_LE(e, 1e-4) << "step " << i;
    EXPECT_EQ(gen.next(), greedy.i64[i]) << "step " << i;
  }
  std::printf("[%s] %zu greedy steps, worst logits rel err %.3g\n", GetParam(), G, worst);
}

INSTANTIATE_TEST_SUITE_P(AllCases, Greedy, ::testing::ValuesIn(kCases), case_name);

// Full forward logits (B, L, V) for ids (B, L).
std::vector<float> full_forward(MambaLM& model, const std::vector<int32_t>& ids, int B, int L) {
  std::vector<int32_t> no_targets(ids.size(), -1);
  model.plan(B, L);
  model.forward(ids.data(), no_targets.data(), false);
  std::vector<float> logits(size_t(B) * L * model.config().vocab_size);
  model.backend().download(logits.data(), model.logits(), logits.size());
  return logits;
}

class PrefillStep : public ::testing::TestWithParam<const char*> {};

// Batch 2, two different sequences: prefill P tokens then step the rest, comparing
// each position's logits with the full forward pass over the whole sequence.
TEST_P(PrefillStep, EqualsFullForward) {
  LoadedModel m = load_model(test::fixture_dir(GetParam()), "cpu");
  MambaLM& model = *m.model;
  const int V = model.config().vocab_size, B = 2, L = 40, P = 23;
  std::vector<int32_t> ids(size_t(B) * L);  // (B, L)
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < L; ++t) ids[b * L + t] = (t * 7 + b * 13 + t * t * (b + 1)) % V;
  std::vector<float> ref = full_forward(model, ids, B, L);  // (B, L, V)

  DecodeState s = model.new_state(B);
  std::vector<int32_t> prompt(size_t(B) * P);  // (B, P)
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < P; ++t) prompt[b * P + t] = ids[b * L + t];
  std::vector<float> logits(size_t(B) * V);  // (B, V)
  model.prefill(s, prompt.data(), P, logits.data());
  double worst = 0;
  for (int t = P - 1; t < L; ++t) {
    for (int b = 0; b < B; ++b) {
      const double e = rel_err(logits.data() + b * V, ref.data() + (size_t(b) * L + t) * V, V);
      worst = std::max(worst, e);
      EXPECT_LE(e, 1e-4) << "batch " << b << " position " << t;
    }
    if (t + 1 == L) break;
    int32_t next[2] = {ids[0 * L + t + 1], ids[1 * L + t + 1]};
    model.step(s, next, logits.data());
  }
  model.free_state(s);
  std::printf("[%s] prefill %d + %d steps vs forward, batch 2: worst rel err %.3g\n", GetParam(), P,
              L - P, worst);
}

// A prompt fed in two prefills (the second continuing the first's state) equals one prefill.
TEST_P(PrefillStep, SplitPrefillContinuesState) {
  LoadedModel m = load_model(test::fixture_dir(GetParam()), "cpu");
  MambaLM& model = *m.model;
  const int V = model.config().vocab_size, L = 37, P = 11;
  std::vector<int32_t> ids(L);
  for (int t = 0; t < L; ++t) ids[t] = (t * 31 + 5) % V;
  std::vector<float> whole(V), split(V);
  DecodeState s = model.new_state(1);
  model.prefill(s, ids.data(), L, whole.data());
  model.reset_state(s);
  model.prefill(s, ids.data(), P, split.data());
  model.prefill(s, ids.data() + P, L - P, split.data());
  EXPECT_LE(rel_err(split.data(), whole.data(), V), 1e-5);
  model.free_state(s);
}

INSTANTIATE_TEST_SUITE_P(AllCases, PrefillStep, ::testing::ValuesIn(kCases), case_name);

}  // namespace
