#include <gtest/gtest.h>

#include "core/error.h"
#include "text/bpe_train.h"
#include "text/tokenizer.h"

using namespace bhasa;

static BpeTokenizer train(std::string_view text, int vocab_size, std::vector<std::string> specials = {}) {
  BpeTrainOptions o;
  o.vocab_size = vocab_size;
  o.special_tokens = std::move(specials);
  return train_bpe(text, o);
}

// Worked by hand. Words (GPT-2 regex; "Ġ" is the space): aaab, Ġaab, Ġab.
// Pair counts: (a,a)=3 (a,b)=3 (Ġ,a)=2 -> tie, smaller ids win: a a.
// Then aa·a·b, Ġ·aa·b, Ġ·a·b: (a,b)=2 is the only pair counted twice -> a b.
// Then aa·ab, Ġ·aa·b, Ġ·ab: all pairs count 1, so by ids (Ġ=220 < aa=256 < ab=257 ...):
// Ġ aa, then Ġ ab, then aa ab, then Ġaa b.
TEST(BpeTrain, MergesMatchAHandCount) {
  auto tok = train("aaab aab ab", 256 + 6);
  std::vector<BpeTokenizer::Merge> expected = {
      {"a", "a"}, {"a", "b"}, {"\xC4\xA0", "aa"}, {"\xC4\xA0", "ab"}, {"aa", "ab"}, {"\xC4\xA0" "aa", "b"}};
  EXPECT_EQ(tok.merges(), expected);
  EXPECT_EQ(tok.vocab_size(), 262);
  EXPECT_EQ(tok.token(64), "a");  // bytes sorted by their character: '!' is 0
  EXPECT_EQ(tok.token(256), "aa");
  EXPECT_EQ(tok.token(261), "\xC4\xA0" "aab");
  // Every word is now one token.
  EXPECT_EQ(tok.encode("aaab aab ab"), (std::vector<int32_t>{260, 261, 259}));
}

TEST(BpeTrain, StopsAtVocabSize) {
  auto tok = train("aaab aab ab", 258);
  EXPECT_EQ(tok.merges().size(), 2u);
  EXPECT_EQ(tok.vocab_size(), 258);
}

TEST(BpeTrain, StopsWhenNothingIsLeftToMerge) {
  auto tok = train("ab", 1000);
  EXPECT_EQ(tok.merges().size(), 1u);
}

TEST(BpeTrain, SpecialTokensComeFirstAndAreNotMerged) {
  auto tok = train("hello<|endoftext|>hello<|endoftext|>", 300, {"<|endoftext|>"});
  EXPECT_EQ(tok.token_id("<|endoftext|>"), 0);
  EXPECT_EQ(tok.token(1), "!");
  for (const auto& [a, b] : tok.merges()) {
    EXPECT_EQ((a + b).find('<'), std::string::npos) << a << " " << b;
    EXPECT_EQ((a + b).find('|'), std::string::npos) << a << " " << b;
  }
  auto ids = tok.encode("hello<|endoftext|>");
  EXPECT_EQ(ids.size(), 2u);  // "hello" is one token after 4 merges
  EXPECT_EQ(ids.back(), 0);
}

TEST(BpeTrain, RoundTripsTextAndSavesLoadably) {
  std::string text;
  for (int i = 0; i < 50; i++)
    text += "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak. " +
            std::to_string(i * 37) + " caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD\n\n";
  auto tok = train(text, 400, {"<|endoftext|>"});
  EXPECT_EQ(tok.vocab_size(), 400);
  auto ids = tok.encode(text);
  EXPECT_LT(ids.size(), text.size() / 3);  // merges compress
  EXPECT_EQ(tok.decode(ids), text);
  // Text it never saw still round-trips (byte fallback is built into byte-level BPE).
  std::string unseen = "Zebra \xF0\x9F\x99\x82 quux\t\r\n";
  EXPECT_EQ(tok.decode(tok.encode(unseen)), unseen);

  std::string path = ::testing::TempDir() + "/bhasa_trained_bpe.json";
  tok.save(path);
  auto loaded = load_tokenizer(path);
  EXPECT_EQ(loaded->kind(), "bpe");
  EXPECT_EQ(loaded->encode(text), ids);
  EXPECT_EQ(loaded->encode(unseen), tok.encode(unseen));
}

TEST(BpeTrain, BadInputIsAnError) {
  EXPECT_THROW(train("", 300), Error);
  EXPECT_THROW(train("ab\xFF", 300), Error);
  try {
    train("abc", 100, {"<|endoftext|>"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocab size 100 is too small"), std::string::npos) << e.what();
  }
}
