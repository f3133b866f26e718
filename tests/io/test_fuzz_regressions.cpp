// Inputs that scripts/fuzz.sh found to escape the parsers as something other than
// bhasa::Error (each once crashed its fuzz target), kept as plain tests.
#include <gtest/gtest.h>

#include "io/model_dir.h"
#include "io_test_util.h"
#include "model/config.h"
#include "text/tokenizer.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

// nlohmann::json reports a number that overflows a double as out_of_range, not
// parse_error; it used to escape load_tokenizer_from_string and load_config.
TEST(FuzzRegressions, NumberOverflowIsAnError) {
  expect_error([] { load_tokenizer_from_string("-7.7e777", "t.json"); }, {"t.json", "not valid JSON"});
  TempDir t;
  write_bytes(t.str("config.json"), "{\"d_model\": 1e999}");
  expect_error([&] { load_config(t.str("config.json")); }, {"config.json", "invalid JSON"});
}

// An HF config whose vocab_size is not a multiple of 8, written in the mamba_ssm
// keys, must read back with the same number of embedding rows.
TEST(FuzzRegressions, MambaSsmConfigKeepsAnUnpaddedVocab) {
  ModelConfig c = load_config(data_dir("hf-tiny/config.json"));
  c.vocab_size = 73;
  c.naming = Naming::MambaSSM;
  ModelConfig back = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(back.vocab_size, 73);
  EXPECT_EQ(back.layout_hash(), c.layout_hash());
}

}  // namespace
