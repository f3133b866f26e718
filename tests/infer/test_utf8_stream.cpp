// Streaming with a byte-level BPE tokenizer, whose tokens can end inside a multi-byte
// UTF-8 character: every streamed piece is valid UTF-8, and together they are the
// tokenizer's decode of the generated ids.
#include <gtest/gtest.h>

#include <filesystem>

#include "infer/generator.h"
#include "infer_test_util.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

using namespace bhasa;

TEST(Utf8Stream, BpePiecesAreWholeCharacters) {
  auto tok = load_tokenizer(test::fixture_dir("bpe-shakespeare-512") + "/tokenizer.json");
  ModelConfig cfg;
  cfg.d_model = 32;
  cfg.n_layer = 1;
  cfg.d_state = 4;
  cfg.dt_rank = 2;
  cfg.vocab_size = (tok->vocab_size() + 7) / 8 * 8;
  auto backend = make_cpu_backend();
  MambaLM model(cfg, *backend);
  model.init_params(3);

  SamplerOptions s;
  s.temperature = 1.0f;
  s.top_k = 0;
  s.top_p = 1.0f;
  s.seed = 1;
  Generator gen(model, tok.get(), s);
  gen.feed(std::string_view("O Romeo, caf\xC3\xA9 \xE2\x82\xAC"));
  GenerateOptions g;
  g.max_new_tokens = 400;
  std::vector<std::string> pieces;
  Generation out = gen.generate(g, [&](std::string_view p) { pieces.emplace_back(p); });

  std::string joined;
  int multibyte = 0;
  for (const std::string& p : pieces) {
    EXPECT_EQ(utf8::find_invalid(p), std::string::npos) << "streamed an invalid piece";
    joined += p;
  }
  for (unsigned char c : joined) multibyte += c >= 0xC0;
  EXPECT_EQ(joined, out.text);
  std::vector<int32_t> ids = out.ids;
  if (!ids.empty() && out.reason == StopReason::EndOfText) ids.pop_back();
  EXPECT_EQ(out.text, tok->decode(ids));
  EXPECT_GT(multibyte, 0) << "the run should have produced some multi-byte characters";
  std::printf("%zu tokens, %zu pieces, %d multi-byte characters (incl. U+FFFD)\n", out.ids.size(), pieces.size(),
              multibyte);
}
