// The public API (include/bhasa/bhasa.h) gives what the engine gives.
#include <gtest/gtest.h>

#include <bhasa/bhasa.h>

#include "infer/generator.h"
#include "infer/model_loader.h"
#include "infer_test_util.h"

namespace {

TEST(PublicApi, SessionMatchesGeneratorAndRestoresState) {
  const std::string dir = bhasa::test::make_tiny_model_dir("api");
  bhasa::Model model = bhasa::Model::load(dir);
  ASSERT_TRUE(model.has_tokenizer());
  EXPECT_EQ(model.detokenize(model.tokenize("Hello, world!")), "Hello, world!");

  bhasa::Session session(model, {.temperature = 0.7f, .seed = 5});
  session.feed("Hello");
  session.save_state(dir + "/api.state");
  std::string streamed;
  std::string text = session.generate(40, {}, [&](std::string_view s) { streamed += s; });
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(session.tokens_seen(), 5 + 40);

  bhasa::LoadedModel m = bhasa::load_model(dir);
  bhasa::SamplerOptions o;
  o.temperature = 0.7f;
  o.seed = 5;
  bhasa::Generator gen(*m.model, m.tokenizer.get(), o);
  gen.feed(std::string_view("Hello"));
  bhasa::GenerateOptions g;
  g.max_new_tokens = 40;
  EXPECT_EQ(gen.generate(g).text, text);

  session.load_state(dir + "/api.state");
  EXPECT_EQ(session.tokens_seen(), 5);
  EXPECT_EQ(session.generate(40), text);
  EXPECT_THROW(bhasa::Model::load(dir + "/missing"), std::runtime_error);
}

}  // namespace
