// Generator behaviour on a tiny random char-level model: state save/restore, stop
// strings, and clear errors.
#include <gtest/gtest.h>

#include "core/error.h"
#include "infer/generator.h"
#include "infer/model_loader.h"
#include "infer_test_util.h"

using namespace bhasa;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

SamplerOptions sampling(float temperature, uint64_t seed = 3) {
  SamplerOptions o;
  o.temperature = temperature;
  o.seed = seed;
  o.repeat_penalty = 1.1f;  // so the saved history matters too
  return o;
}

TEST(Generator, SavedStateContinuesExactly) {
  const std::string dir = test::make_tiny_model_dir("gen_state");
  LoadedModel m = load_model(dir);
  ASSERT_NE(m.tokenizer, nullptr);
  GenerateOptions g;
  g.max_new_tokens = 40;

  Generator a(*m.model, m.tokenizer.get(), sampling(0.9f));
  a.feed(std::string_view("Hello there.\n"));
  a.generate(g);
  a.save_state(dir + "/state.safetensors");
  a.feed(std::string_view("And you?\n"));
  Generation cont_a = a.generate(g);

  Generator b(*m.model, m.tokenizer.get(), sampling(0.9f, /*seed=*/99));  // other seed: the file restores it
  b.feed(std::string_view("something else entirely"));
  b.load_state(dir + "/state.safetensors");
  b.feed(std::string_view("And you?\n"));
  Generation cont_b = b.generate(g);
  EXPECT_EQ(cont_a.ids, cont_b.ids);
  EXPECT_EQ(cont_a.text, cont_b.text);
  EXPECT_EQ(a.n_past(), b.n_past());

  // Without the saved state the continuation differs (the state carries the past).
  Generator c(*m.model, m.tokenizer.get(), sampling(0.9f));
  c.feed(std::string_view("And you?\n"));
  EXPECT_NE(c.generate(g).ids, cont_a.ids);
}

TEST(Generator, LoadStateRejectsAnotherModelAndLeavesStateIntact) {
  const std::string dir = test::make_tiny_model_dir("gen_state_mismatch");
  LoadedModel m = load_model(dir);
  Generator a(*m.model, m.tokenizer.get(), sampling(0));
  a.feed(std::string_view("Hi"));
  a.save_state(dir + "/state.safetensors");

  LoadedModel other = load_model(test::fixture_dir("hf-tiny"));
  Generator b(*other.model, nullptr, sampling(0));
  b.feed(std::vector<int32_t>{1, 2, 3});
  std::vector<float> before(b.logits(), b.logits() + other.model->config().vocab_size);
  std::string msg = error_of([&] { b.load_state(dir + "/state.safetensors"); });
  EXPECT_NE(msg.find("different model"), std::string::npos) << msg;
  EXPECT_EQ(b.n_past(), 3);
  EXPECT_EQ(std::vector<float>(b.logits(), b.logits() + before.size()), before);

  msg = error_of([&] { b.load_state(dir + "/config.json"); });
  EXPECT_NE(msg, "no error");
  msg = error_of([&] { b.load_state(dir + "/no-such-file"); });
  EXPECT_NE(msg.find("no-such-file"), std::string::npos) << msg;
}

TEST(Generator, StopsAtStopStringWithoutPrintingIt) {
  const std::string dir = test::make_tiny_model_dir("gen_stop");
  LoadedModel m = load_model(dir);
  Generator a(*m.model, m.tokenizer.get(), sampling(1.0f, 5));
  a.feed(std::string_view("To be"));
  GenerateOptions g;
  g.max_new_tokens = 300;
  Generation full = a.generate(g);
  ASSERT_GE(full.text.size(), 30u);
  // Stop at a 2-char string that occurs in the free run: the same run cut before it.
  const std::string stop = full.text.substr(20, 2);
  const size_t cut = full.text.find(stop);
  Generator b(*m.model, m.tokenizer.get(), sampling(1.0f, 5));
  b.feed(std::string_view("To be"));
  g.stop = {stop};
  std::string streamed;
  Generation stopped = b.generate(g, [&](std::string_view s) { streamed += s; });
  EXPECT_EQ(stopped.reason, StopReason::StopString);
  EXPECT_EQ(stopped.text, full.text.substr(0, cut));
  EXPECT_EQ(streamed, stopped.text);
  EXPECT_EQ(stopped.ids.size(), cut + 2);  // every sampled token is in the state, stop string too
}

TEST(Generator, ClearErrors) {
  const std::string dir = test::make_tiny_model_dir("gen_errors");
  LoadedModel m = load_model(dir);
  Generator a(*m.model, m.tokenizer.get(), sampling(0));
  EXPECT_NE(error_of([&] { a.next(); }).find("feed a prompt"), std::string::npos);
  EXPECT_NE(error_of([&] { a.feed(std::string_view("")); }).find("prompt is empty"), std::string::npos);
  EXPECT_NE(error_of([&] { a.feed(std::string_view("caf\xC3\xA9")); }).find("not in the model's vocabulary"),
            std::string::npos);
  EXPECT_NE(error_of([&] { a.feed(std::vector<int32_t>{1, 100000}); }).find("outside"), std::string::npos);
  GenerateOptions g;
  g.max_new_tokens = -1;
  a.feed(std::string_view("a"));
  EXPECT_NE(error_of([&] { a.generate(g); }).find("--max-new-tokens must be >= 0"), std::string::npos);

  LoadedModel ids_only = load_model(test::fixture_dir("hf-tiny"));
  Generator b(*ids_only.model, nullptr, sampling(0));
  EXPECT_NE(error_of([&] { b.feed(std::string_view("hi")); }).find("no tokenizer.json"), std::string::npos);
  EXPECT_NE(error_of([] { load_model("/nonexistent/model"); }).find("does not exist"), std::string::npos);
}

}  // namespace
