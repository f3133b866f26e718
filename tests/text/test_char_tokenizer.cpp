#include <gtest/gtest.h>

#include "core/error.h"
#include "text/char_tokenizer.h"
#include "text/tokenizer.h"

using namespace bhasa;

TEST(CharTokenizer, VocabularyIsSortedCodePoints) {
  auto tok = CharTokenizer::from_corpus("banana\n");
  ASSERT_EQ(tok.vocab_size(), 4);  // '\n' 'a' 'b' 'n'
  EXPECT_EQ(tok.decode_token(0), "\n");
  EXPECT_EQ(tok.decode_token(1), "a");
  EXPECT_EQ(tok.decode_token(2), "b");
  EXPECT_EQ(tok.decode_token(3), "n");
  EXPECT_EQ(tok.encode("nab\n"), (std::vector<int32_t>{3, 1, 2, 0}));
}

TEST(CharTokenizer, MultibyteRoundTrip) {
  // 2-, 3- and 4-byte characters: é (U+00E9), — (U+2014), 你 (U+4F60), 🙂 (U+1F642)
  std::string corpus = "caf\xC3\xA9 \xE2\x80\x94 \xE4\xBD\xA0 \xF0\x9F\x99\x82!";
  auto tok = CharTokenizer::from_corpus(corpus);
  EXPECT_EQ(tok.vocab_size(), 9);  // ' ' '!' a c f é — 你 🙂
  auto ids = tok.encode(corpus);
  EXPECT_EQ(ids.size(), 11u);  // one id per code point, not per byte (19 bytes)
  EXPECT_EQ(tok.decode(ids), corpus);
  // Ids follow code point order: the emoji is the largest.
  EXPECT_EQ(tok.decode_token(tok.vocab_size() - 1), "\xF0\x9F\x99\x82");
  EXPECT_EQ(tok.token_id("\xC3\xA9"), tok.encode("\xC3\xA9")[0]);
}

TEST(CharTokenizer, UnknownCharacterNamesItAndItsOffset) {
  auto tok = CharTokenizer::from_corpus("hello world");
  try {
    tok.encode("hello w\xC3\xB6rld");
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("U+00F6"), std::string::npos) << msg;
    EXPECT_NE(msg.find("character offset 7"), std::string::npos) << msg;
    EXPECT_NE(msg.find("not in the model's vocabulary"), std::string::npos) << msg;
  }
}

TEST(CharTokenizer, InvalidUtf8IsAnErrorWithByteOffset) {
  auto tok = CharTokenizer::from_corpus("abc");
  try {
    tok.encode("ab\xE2\x80");  // truncated 3-byte sequence
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("byte offset 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(CharTokenizer::from_corpus("a\xC0\x80"), Error);  // overlong NUL
  EXPECT_THROW(CharTokenizer::from_corpus("a\xED\xA0\x80"), Error);  // surrogate
  EXPECT_THROW(CharTokenizer::from_corpus(""), Error);
}

TEST(CharTokenizer, UnknownIdIsAnError) {
  auto tok = CharTokenizer::from_corpus("ab");
  EXPECT_THROW(tok.decode({0, 2}), Error);
  EXPECT_THROW(tok.decode({-1}), Error);
}

TEST(CharTokenizer, SaveLoadRoundTrip) {
  std::string corpus = "To be, or not to be\n\t\xC3\xA9\xE4\xBD\xA0\"\\";
  auto tok = CharTokenizer::from_corpus(corpus);
  std::string path = ::testing::TempDir() + "/bhasa_char_tokenizer.json";
  tok.save(path);
  auto loaded = load_tokenizer(path);
  EXPECT_EQ(loaded->kind(), "char");
  EXPECT_EQ(loaded->vocab_size(), tok.vocab_size());
  EXPECT_EQ(loaded->encode(corpus), tok.encode(corpus));
  EXPECT_EQ(loaded->decode(tok.encode(corpus)), corpus);
}

TEST(CharTokenizer, JsonIsHuggingFaceBpeWithoutMerges) {
  auto j = CharTokenizer::from_corpus("ba").to_json();
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_TRUE(j["model"]["merges"].empty());
  EXPECT_EQ(j["model"]["vocab"]["a"], 0);
  EXPECT_EQ(j["model"]["vocab"]["b"], 1);
  EXPECT_TRUE(j["pre_tokenizer"].is_null());
  EXPECT_EQ(j["decoder"]["type"], "Fuse");
}
