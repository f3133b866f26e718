// Byte-level BPE against Hugging Face tokenizers: the fixture's cases.json holds
// text -> ids pairs that HF produced with the fixture's tokenizer.json.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "text/bpe.h"
#include "text/tokenizer.h"

using namespace bhasa;
using json = nlohmann::json;

static const std::string kDir = std::string(BHASA_TEST_DATA) + "/bpe-shakespeare-512";

TEST(Bpe, LoadsAsByteLevelBpe) {
  auto tok = load_tokenizer(kDir + "/tokenizer.json");
  EXPECT_EQ(tok->kind(), "bpe");
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->token_id("<|endoftext|>"), 0);
  EXPECT_EQ(tok->token_id("<|padding|>"), 1);
}

TEST(Bpe, EncodeMatchesHuggingFace) {
  auto tok = load_tokenizer(kDir + "/tokenizer.json");
  json cases = json::parse(read_text_file(kDir + "/cases.json"));
  ASSERT_GE(cases.size(), 10u);
  for (const auto& c : cases) {
    auto text = c["text"].get<std::string>();
    auto expected = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->encode(text), expected) << "text: " << text;
  }
}

TEST(Bpe, DecodeMatchesHuggingFace) {
  auto tok = load_tokenizer(kDir + "/tokenizer.json");
  json cases = json::parse(read_text_file(kDir + "/cases.json"));
  for (const auto& c : cases) {
    auto text = c["text"].get<std::string>();
    EXPECT_EQ(tok->decode(c["ids"].get<std::vector<int32_t>>()), text);
  }
}

TEST(Bpe, DecodeTokenGivesRawBytes) {
  auto tok = load_tokenizer(kDir + "/tokenizer.json");
  // "é" is two bytes; with this small vocab it is two byte tokens, each decoding
  // to one byte (half a character) so streaming must concatenate before printing.
  auto ids = tok->encode("\xC3\xA9");
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(tok->decode_token(ids[0]), "\xC3");
  EXPECT_EQ(tok->decode_token(ids[1]), "\xA9");
  // decode of a cut-off character gives U+FFFD, as HF does.
  EXPECT_EQ(tok->decode({ids[0]}), "\xEF\xBF\xBD");
  EXPECT_EQ(tok->decode_token(0), "<|endoftext|>");
}

TEST(Bpe, RoundTripsLongText) {
  auto tok = load_tokenizer(kDir + "/tokenizer.json");
  std::string text;
  for (int i = 0; i < 200; i++) text += "To be, or not to be: that is the question " + std::to_string(i) + "\n\t ";
  EXPECT_EQ(tok->decode(tok->encode(text)), text);
}

TEST(Bpe, InvalidUtf8InputNamesByteOffset) {
  auto tok = load_tokenizer(kDir + "/tokenizer.json");
  try {
    tok->encode("abc\xFF" "def");
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("byte offset 3"), std::string::npos) << e.what();
  }
}

TEST(Bpe, UnknownIdIsAnError) {
  auto tok = load_tokenizer(kDir + "/tokenizer.json");
  EXPECT_THROW(tok->decode({5, 512}), Error);
  EXPECT_THROW(tok->decode({-1}), Error);
}

TEST(Bpe, SaveWritesLoadableJson) {
  auto tok = load_tokenizer(kDir + "/tokenizer.json");
  std::string path = ::testing::TempDir() + "/bhasa_bpe_resave.json";
  tok->save(path);
  auto again = load_tokenizer(path);
  std::string text = "First Citizen:\nBefore we proceed any further, hear me speak.";
  EXPECT_EQ(again->encode(text), tok->encode(text));
}

// ---- bad tokenizer.json files: each error names what is wrong ----

static json fixture_json() { return json::parse(read_text_file(kDir + "/tokenizer.json")); }

static std::string load_error(const json& j) {
  try {
    load_tokenizer_from_string(j.dump(), "bad.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(BpeBadJson, NotJson) {
  try {
    load_tokenizer_from_string("{not json", "bad.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos) << e.what();
  }
}

TEST(BpeBadJson, MissingModel) {
  json j = fixture_json();
  j.erase("model");
  EXPECT_NE(load_error(j).find("no \"model\""), std::string::npos) << load_error(j);
}

// A model "type" that is not a string (found by fuzz_tokenizer: it escaped as a JSON
// type_error and aborted): a clear error, whatever the rest.
TEST(BpeBadJson, NonStringModelType) {
  for (json type : {json(false), json(7), json::array(), json(nullptr)}) {
    json j = fixture_json();
    j["model"]["type"] = type;
    const std::string msg = load_error(j);
    EXPECT_NE(msg, "(no error)") << type.dump();
  }
  json j = fixture_json();  // the fuzzer's input: no merges either (the char-level check)
  j["model"]["type"] = false;
  j["model"].erase("merges");
  j["pre_tokenizer"] = nullptr;
  EXPECT_NE(load_error(j), "(no error)");
}

// An id far past the vocabulary's size (found by fuzz_tokenizer: it allocated 9.6 GB for the
// id table) is a clear error; ids a little past it (added tokens after a gap) still load.
TEST(BpeBadJson, IdFarPastTheVocabulary) {
  json j = fixture_json();
  j["model"]["vocab"]["zz_far"] = 298000000;
  EXPECT_NE(load_error(j).find("far past"), std::string::npos) << load_error(j);
  json ok = fixture_json();
  ok["model"]["vocab"]["zz_near"] = int(ok["model"]["vocab"].size()) + 10;
  EXPECT_EQ(load_error(ok), "(no error)");
}

// Ids that are not int32 integers (found by fuzz_tokenizer: a float id 7.8e77 converted to
// int, undefined behaviour): a clear error.
TEST(BpeBadJson, NonIntegerIds) {
  for (json id : {json(7.77e77), json(1.5), json(int64_t(1) << 40), json("3")}) {
    json j = fixture_json();
    j["model"]["vocab"]["zz"] = id;
    EXPECT_NE(load_error(j).find("not an integer id"), std::string::npos) << id.dump() << ": " << load_error(j);
    json a = fixture_json();
    a["added_tokens"] = json::array({{{"id", id}, {"content", "<x>"}}});
    EXPECT_NE(load_error(a).find("not an integer id"), std::string::npos) << id.dump() << ": " << load_error(a);
  }
}

TEST(BpeBadJson, MissingVocab) {
  json j = fixture_json();
  j["model"].erase("vocab");
  EXPECT_NE(load_error(j).find("no \"vocab\" field"), std::string::npos) << load_error(j);
}

TEST(BpeBadJson, MissingMerges) {
  json j = fixture_json();
  j["model"].erase("merges");
  EXPECT_NE(load_error(j).find("no \"merges\" field"), std::string::npos) << load_error(j);
}

TEST(BpeBadJson, MergeWithUnknownToken) {
  json j = fixture_json();
  j["model"]["merges"][3] = json::array({"zzz", "t"});
  std::string msg = load_error(j);
  EXPECT_NE(msg.find("merge 3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'zzz', which is not in the vocabulary"), std::string::npos) << msg;
}

TEST(BpeBadJson, MalformedMergeString) {
  json j = fixture_json();
  j["model"]["merges"][0] = "abc";
  EXPECT_NE(load_error(j).find("not two tokens separated by one space"), std::string::npos) << load_error(j);
}

TEST(BpeBadJson, UnsupportedModelType) {
  json j = fixture_json();
  j["model"]["type"] = "Unigram";
  std::string msg = load_error(j);
  EXPECT_NE(msg.find("'Unigram'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("only BPE"), std::string::npos) << msg;
}

TEST(BpeBadJson, UnsupportedPreTokenizer) {
  json j = fixture_json();
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  EXPECT_NE(load_error(j).find("'Whitespace' is not supported"), std::string::npos) << load_error(j);
}

TEST(BpeBadJson, InvalidUtf8InFile) {
  std::string text = read_text_file(kDir + "/tokenizer.json");
  text.insert(text.find("<|padding|>") + 2, "\xC3\x28");
  try {
    load_tokenizer_from_string(text, "bad.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos) << e.what();
  }
}

TEST(BpeBadJson, WrongValueType) {
  json j = fixture_json();
  j["model"]["vocab"]["!"] = "two";
  EXPECT_NE(load_error(j).find("not an integer id"), std::string::npos) << load_error(j);
}
