// Token ids outside the vocabulary: every entry point of the model says which id is wrong
// and what the vocabulary is (the message is built only then: check's lambda form), and
// runs nothing; valid ids pass the same checks.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "model/mamba.h"

using namespace bhasa;

namespace {

ModelConfig tiny() {
  ModelConfig cfg;
  cfg.d_model = 16, cfg.n_layer = 1, cfg.vocab_size = 11, cfg.d_state = 4, cfg.dt_rank = 2;
  return cfg;
}

// The Error's message, or "" when f does not throw one.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelIds, ForwardNamesTheBadIdOrTarget) {
  auto be = make_cpu_backend();
  MambaLM m(tiny(), *be);
  m.init_params(1);
  m.plan(1, 4);
  std::vector<int32_t> ids = {1, 2, 3, 4}, targets = {2, 3, 4, -1};
  EXPECT_EQ(error_of([&] { m.forward(ids.data(), targets.data(), true); }), "");
  ids[2] = 11;
  const std::string bad_id = error_of([&] { m.forward(ids.data(), targets.data(), true); });
  EXPECT_NE(bad_id.find("token id 11"), std::string::npos) << bad_id;
  EXPECT_NE(bad_id.find("vocabulary of 11"), std::string::npos) << bad_id;
  ids[2] = -3;
  EXPECT_NE(error_of([&] { m.forward(ids.data(), targets.data(), false); }).find("token id -3"), std::string::npos);
  ids[2] = 3;
  targets[1] = 12;
  const std::string bad_target = error_of([&] { m.forward(ids.data(), targets.data(), true); });
  EXPECT_NE(bad_target.find("target id 12"), std::string::npos) << bad_target;
}

TEST(ModelIds, PrefillAndStepNameTheBadId) {
  auto be = make_cpu_backend();
  MambaLM m(tiny(), *be);
  m.init_params(1);
  DecodeState s = m.new_state(2);
  std::vector<float> logits(2 * 11);
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 99}, step = {7, 11};
  const std::string p = error_of([&] { m.prefill(s, prompt.data(), 3, logits.data()); });
  EXPECT_NE(p.find("token id 99"), std::string::npos) << p;
  const std::string st = error_of([&] { m.step(s, step.data(), logits.data()); });
  EXPECT_NE(st.find("token id 11"), std::string::npos) << st;
  const std::vector<int32_t> good = {1, 2, 3, 4, 5, 6};
  EXPECT_EQ(error_of([&] { m.prefill(s, good.data(), 3, logits.data()); }), "");
  m.free_state(s);
}

}  // namespace
