// The real `bhasa` binary: generate and eval against the library, and a clear message
// with a non-zero exit for each kind of bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include <nlohmann/json.hpp>

#include "infer/evaluate.h"
#include "infer/generator.h"
#include "infer/model_loader.h"
#include "infer_test_util.h"

using namespace bhasa;
using test::run_bhasa;

namespace {

const std::string& tiny_dir() {
  static const std::string dir = test::make_tiny_model_dir("cli");
  return dir;
}

void expect_failure(const std::string& args, const std::string& message, const std::string& stdin_text = "") {
  test::RunResult r = run_bhasa(args, true, stdin_text);
  EXPECT_NE(r.status, 0) << args << "\n" << r.output;
  EXPECT_NE(r.output.find(message), std::string::npos) << args << "\noutput: " << r.output;
  EXPECT_EQ(r.output.find("terminate called"), std::string::npos) << r.output;
}

TEST(Cli, ClearMessagesForBadInput) {
  const std::string m = " --model '" + tiny_dir() + "'";
  expect_failure("generate --model /nonexistent/dir --prompt hi", "does not exist");
  expect_failure("generate --model '" + test::temp_dir("empty_model") + "' --prompt hi", "no config.json");
  expect_failure("generate" + m + " --prompt ''", "the prompt is empty");
  expect_failure("generate" + m, "the prompt is empty");  // stdin is /dev/null
  expect_failure("generate" + m + " --prompt 'caf\xC3\xA9'", "not in the model's vocabulary");
  expect_failure("generate" + m + " --prompt hi --top-p 2", "--top-p must be in (0, 1]");
  expect_failure("generate" + m + " --prompt hi --max-new-tokens -1", "--max-new-tokens must be >= 0");
  expect_failure("generate" + m + " --prompt hi --temperature -0.5", "--temperature must be >= 0");
  expect_failure("generate" + m + " --prompt-ids 1,x", "is not a token id");
  expect_failure("generate --model '" + test::fixture_dir("hf-tiny") + "' --prompt hi", "no tokenizer.json");
  expect_failure("eval" + m + " --data /nonexistent/file.txt", "/nonexistent/file.txt");
  expect_failure("eval --model /nonexistent/dir --data x", "does not exist");
  expect_failure("chat --model '" + test::fixture_dir("hf-tiny") + "'", "no tokenizer.json");
}

// --format ids --temperature 0 prints exactly the library's greedy continuation.
TEST(Cli, GenerateIdsMatchesLibraryGreedy) {
  const std::string dir = test::fixture_dir("hf-small");
  test::RunResult r = run_bhasa("generate --threads 1 --model '" + dir +
                                    "' --prompt-ids 3,1,4,1,5 --format ids --temperature 0 --max-new-tokens 12",
                                false);
  ASSERT_EQ(r.status, 0) << r.output;
  std::vector<int32_t> got;
  std::istringstream in(r.output);
  for (int32_t id; in >> id;) got.push_back(id);

  LoadedModel m = load_model(dir);
  SamplerOptions greedy;
  greedy.temperature = 0;
  Generator g(*m.model, nullptr, greedy);
  g.feed(std::vector<int32_t>{3, 1, 4, 1, 5});
  GenerateOptions opts;
  opts.max_new_tokens = 12;
  EXPECT_EQ(got, g.generate(opts).ids);
  EXPECT_EQ(got.size(), 12u);
}

// Text output is exactly the library's text; the prompt can come from stdin; stop strings cut.
TEST(Cli, GenerateTextFromArgumentAndStdin) {
  const std::string args = "generate --threads 1 --model '" + tiny_dir() + "' --temperature 0.9 --seed 11 --max-new-tokens 50";
  test::RunResult a = run_bhasa(args + " --prompt 'ROMEO:'", false);
  test::RunResult b = run_bhasa(args, false, "ROMEO:");
  ASSERT_EQ(a.status, 0) << a.output;
  ASSERT_EQ(b.status, 0) << b.output;
  EXPECT_EQ(a.output, b.output);

  LoadedModel m = load_model(tiny_dir());
  SamplerOptions s;
  s.temperature = 0.9f;
  s.seed = 11;
  Generator g(*m.model, m.tokenizer.get(), s);
  g.feed(std::string_view("ROMEO:"));
  GenerateOptions opts;
  opts.max_new_tokens = 50;
  EXPECT_EQ(a.output, g.generate(opts).text);  // stdout is not a terminal: no newline added

  const std::string stop = a.output.substr(10, 2);
  test::RunResult c = run_bhasa(args + " --prompt 'ROMEO:' --stop '" + stop + "'", false);
  EXPECT_EQ(c.output, a.output.substr(0, a.output.find(stop)));
}

TEST(Cli, EvalMatchesLibraryAndReportsBitsPerChar) {
  const std::string data = test::temp_dir("eval_data") + "/valid.txt";
  std::string text;
  for (int i = 0; i < 30; ++i) text += "First Citizen:\nBefore we proceed any further, hear me speak.\n\n";
  FILE* f = std::fopen(data.c_str(), "wb");
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);

  test::RunResult r = run_bhasa("eval --threads 1 --model '" + tiny_dir() + "' --data '" + data + "' --seq-len 64 --batch 3 --json", false);
  ASSERT_EQ(r.status, 0) << r.output;
  nlohmann::json j = nlohmann::json::parse(r.output);
  LoadedModel m = load_model(tiny_dir());
  EvalResult ref = evaluate_text(*m.model, *m.tokenizer, text, 64, 3);
  EXPECT_EQ(j["tokens"].get<int64_t>(), int64_t(text.size()) - 1);
  EXPECT_NEAR(j["loss"].get<double>(), ref.loss, 1e-6);
  EXPECT_NEAR(j["perplexity"].get<double>(), std::exp(ref.loss), 1e-4);
  EXPECT_NEAR(j["bits_per_char"].get<double>(), ref.loss / std::log(2.0), 1e-6);
  // A random model of 59 characters is close to uniform: loss near ln(59).
  EXPECT_NEAR(ref.loss, std::log(59.0), 0.2);

  // Batched windows with a padded last batch equal the windows evaluated one by one:
  // 8 ids, seq_len 3 -> windows predicting ids[1..3], ids[4..6], ids[7].
  std::vector<int32_t> ids = m.tokenizer->encode(text);
  std::span<const int32_t> all(ids);
  auto [nats, n] = evaluate_ids(*m.model, all.subspan(0, 8), 3, 2);
  EXPECT_EQ(n, 7);
  double separate = 0;
  for (auto [start, len] : {std::pair{0, 4}, std::pair{3, 4}, std::pair{6, 2}})
    separate += evaluate_ids(*m.model, all.subspan(start, len), 3, 1).first;
  EXPECT_NEAR(nats, separate, 1e-4 * separate);

  test::RunResult human = run_bhasa("eval --threads 1 --model '" + tiny_dir() + "' --data '" + data + "' --max-tokens 100", false);
  ASSERT_EQ(human.status, 0);
  EXPECT_NE(human.output.find("99 tokens"), std::string::npos) << human.output;
  EXPECT_NE(human.output.find("bits per char"), std::string::npos) << human.output;
}

// Piped chat: one line per turn, replies separated by a blank line; state is kept.
TEST(Cli, ChatWithoutTerminalForScripts) {
  const std::string args = "chat --threads 1 --model '" + tiny_dir() + "' --temperature 0 --max-reply-tokens 20";
  test::RunResult r = run_bhasa(args, false, "Hello.\nHow are you?\n");
  ASSERT_EQ(r.status, 0) << r.output;
  LoadedModel m = load_model(tiny_dir());
  SamplerOptions s;
  s.temperature = 0;
  Generator g(*m.model, m.tokenizer.get(), s);
  GenerateOptions opts;
  opts.max_new_tokens = 20;
  opts.stop = {"\n\n"};
  g.feed(std::string_view("Hello.\n"));
  std::string expected = g.generate(opts).text + "\n\n";
  g.feed(std::string_view("How are you?\n"));
  expected += g.generate(opts).text + "\n\n";
  EXPECT_EQ(r.output, expected);
}

}  // namespace

// `bench decode` on the chosen backend with a batch: one JSON line whose counts add up
// (tokens/s covers every sequence: batch * new_tokens / seconds).
TEST(Cli, BenchDecodeBatch) {
  test::RunResult r = run_bhasa("bench decode --preset tiny --batch 3 --prompt-len 5 --new-tokens 7 --threads 1", false);
  ASSERT_EQ(r.status, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output.substr(r.output.find('{')));
  EXPECT_EQ(j["backend"], "cpu");
  EXPECT_EQ(j["batch"], 3);
  EXPECT_EQ(j["new_tokens"], 7);
  const double s = j["seconds"].get<double>();
  ASSERT_GT(s, 0.0);
  EXPECT_NEAR(j["tokens_per_s"].get<double>(), 3 * 7 / s, 1e-6 * 3 * 7 / s);
  EXPECT_NEAR(j["ms_per_token"].get<double>(), 1e3 * s / 7, 1e-9 * 1e3 * s);
  expect_failure("bench decode --preset tiny --batch 0", "--batch");
}
