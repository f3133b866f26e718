// The bhasa tokenize / tokenizer train subcommands, run as a user would.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/files.h"

static const std::string kBpe = std::string(BHASA_TEST_DATA) + "/bpe-shakespeare-512/tokenizer.json";

struct Run {
  int status;
  std::string out;
};

// Runs `bhasa <args>` with `input` on stdin; returns the exit status and stdout+stderr.
static Run run_bhasa(const std::string& args, const std::string& input) {
  // One file per test: ctest runs the tests of this binary in parallel.
  std::string in_path = ::testing::TempDir() + "/bhasa_cli_stdin_" +
                        ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".txt";
  std::ofstream(in_path, std::ios::binary) << input;
  std::string cmd = std::string(BHASA_BIN) + " " + args + " < " + in_path + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = pclose(p);
  return {WEXITSTATUS(status), out};
}

TEST(TokenizeCli, EncodesToJsonIds) {
  auto r = run_bhasa("tokenize --tokenizer " + kBpe, "a");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out), nlohmann::json::parse("[66]"));
}

TEST(TokenizeCli, DecodesExactlyWithoutNewline) {
  std::string text = "First Citizen:\nBefore we proceed any further, hear me speak.";
  auto enc = run_bhasa("tokenize --tokenizer " + kBpe, text);
  ASSERT_EQ(enc.status, 0) << enc.out;
  auto dec = run_bhasa("tokenize --decode --tokenizer " + kBpe, enc.out);
  ASSERT_EQ(dec.status, 0) << dec.out;
  EXPECT_EQ(dec.out, text);
}

TEST(TokenizeCli, BadInputIsAnErrorMessage) {
  auto r = run_bhasa("tokenize --decode --tokenizer " + kBpe, "[1, \"x\"]");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("error: --decode: element 1"), std::string::npos) << r.out;
  r = run_bhasa("tokenize --decode --tokenizer " + kBpe, "[100000]");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("not in the vocabulary"), std::string::npos) << r.out;
  r = run_bhasa("tokenize --tokenizer " + kBpe, "bad \xFF");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("byte offset 4"), std::string::npos) << r.out;
}

TEST(TokenizeCli, TrainWritesAUsableTokenizer) {
  std::string dir = ::testing::TempDir();
  std::string data = dir + "/bhasa_cli_corpus.txt", out = dir + "/bhasa_cli_tokenizer.json";
  std::string corpus;
  for (int i = 0; i < 30; i++) corpus += "the quick brown fox jumps over the lazy dog " + std::to_string(i) + "\n";
  std::ofstream(data, std::ios::binary) << corpus;
  auto r = run_bhasa("tokenizer train --data " + data + " --vocab-size 300 --out " + out, "");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(bhasa::read_text_file(out));
  EXPECT_EQ(j["model"]["merges"].size(), 300u - 257u);
  auto enc = run_bhasa("tokenize --tokenizer " + out, corpus);
  ASSERT_EQ(enc.status, 0) << enc.out;
  auto dec = run_bhasa("tokenize --decode --tokenizer " + out, enc.out);
  EXPECT_EQ(dec.out, corpus);

  r = run_bhasa("tokenizer train --data " + data + " --vocab-size 100 --out " + out, "");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("too small"), std::string::npos) << r.out;
}

TEST(TokenizeCli, TrainCharTokenizer) {
  std::string dir = ::testing::TempDir();
  std::string data = dir + "/bhasa_cli_char_corpus.txt", out = dir + "/bhasa_cli_char_tokenizer.json";
  std::ofstream(data, std::ios::binary) << "hello world\n";
  auto r = run_bhasa("tokenizer train --type char --data " + data + " --out " + out, "");
  ASSERT_EQ(r.status, 0) << r.out;
  auto enc = run_bhasa("tokenize --tokenizer " + out, "hello");
  // vocabulary: '\n' ' ' d e h l o r w
  EXPECT_EQ(nlohmann::json::parse(enc.out), nlohmann::json::parse("[4, 3, 5, 5, 6]"));
  auto bad = run_bhasa("tokenize --tokenizer " + out, "help");
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.out.find("U+0070"), std::string::npos) << bad.out;
}
