// `bhasa train --tokenizer bpe:N`: a byte-level BPE trained on the corpus first,
// kept in the run directory and in final/, and never retrained when resuming.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "text/tokenizer.h"
#include "train_test_util.h"

using namespace bhasa;
using namespace bhasa::test;
namespace fs = std::filesystem;

namespace {

class TrainBpe : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = make_scratch_dir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    data = dir + "/corpus.txt";
    write_file(data, synthetic_corpus(40000));
    config = write_tiny_config(dir);
    out = dir + "/run";
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir);
  }
  int train(const std::string& tokenizer, int steps, std::string* log) {
    return run_bhasa({"train", "--data", data, "--config", config, "--tokenizer", tokenizer, "--max-steps",
                      std::to_string(steps), "--threads", "1", "--out", out},
                     log);
  }
  std::string dir, data, config, out;
};

TEST_F(TrainBpe, TrainsSavesAndReusesTheTokenizer) {
  std::string log;
  ASSERT_EQ(train("bpe:300", 4, &log), 0) << log;
  EXPECT_NE(log.find("training a byte-level BPE with 300 tokens"), std::string::npos) << log;

  // final/ holds the BPE tokenizer the model was trained with; it loads and round-trips.
  ASSERT_TRUE(fs::exists(out + "/final/tokenizer.json"));
  auto tok = load_tokenizer(out + "/final/tokenizer.json");
  EXPECT_EQ(tok->kind(), "bpe");
  EXPECT_EQ(tok->vocab_size(), 300);
  const std::string text = "The king and queen sang songs at night.\n";
  const std::vector<int32_t> ids = tok->encode(text);
  EXPECT_LT(ids.size(), text.size());  // merges learned on this corpus shorten it
  EXPECT_EQ(tok->decode(ids), text);
  // Same content (key order may differ: a checkpoint re-saves what it loaded).
  auto tok_json = [&](const std::string& path) { return nlohmann::json::parse(slurp(path)); };
  const nlohmann::json trained = tok_json(out + "/tokenizer.json");
  EXPECT_EQ(tok_json(out + "/final/tokenizer.json"), trained);
  auto cfg = nlohmann::json::parse(slurp(out + "/final/config.json"));
  EXPECT_EQ(cfg["vocab_size"].get<int>(), 304);  // 300 padded to a multiple of 8

  // Resuming keeps the checkpoint's tokenizer: no second training.
  ASSERT_EQ(train("bpe:300", 6, &log), 0) << log;
  EXPECT_NE(log.find("resumed from"), std::string::npos) << log;
  EXPECT_EQ(log.find("training a byte-level BPE"), std::string::npos) << log;
  EXPECT_EQ(tok_json(out + "/final/tokenizer.json"), trained);

  // Without a checkpoint (stopped before the first one), the run dir's copy is reused.
  fs::remove_all(out + "/checkpoints");
  fs::remove_all(out + "/final");
  ASSERT_EQ(train("bpe:300", 2, &log), 0) << log;
  EXPECT_NE(log.find("reusing"), std::string::npos) << log;
  EXPECT_EQ(log.find("training a byte-level BPE"), std::string::npos) << log;
  EXPECT_EQ(tok_json(out + "/final/tokenizer.json"), trained);
}

TEST_F(TrainBpe, BadSpecIsAClearError) {
  std::string log;
  EXPECT_NE(train("bpe:many", 2, &log), 0);
  EXPECT_NE(log.find("expected bpe:N"), std::string::npos) << log;
  EXPECT_NE(train("bpe:100", 2, &log), 0);  // fewer than the 256 bytes + a special
  EXPECT_NE(log.find("error:"), std::string::npos) << log;
}

}  // namespace
