// bhasa tokenize: text on stdin -> token ids (JSON array) on stdout, or --decode
// ids -> text. bhasa tokenizer train: a tokenizer.json from a text corpus.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <memory>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "core/error.h"
#include "core/files.h"
#include "text/bpe_train.h"
#include "text/char_tokenizer.h"
#include "text/tokenizer.h"

namespace bhasa::cli {

static std::string read_stdin() {
  std::ios::sync_with_stdio(false);
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

// A model directory stands for its tokenizer.json.
static std::string tokenizer_path(const std::string& path) {
  if (std::filesystem::is_directory(path)) return (std::filesystem::path(path) / "tokenizer.json").string();
  return path;
}

static std::vector<int32_t> parse_ids(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error("--decode expects a JSON array of token ids on stdin, e.g. [12, 7, 93] (" + std::string(e.what()) + ")");
  }
  check(j.is_array(), "--decode expects a JSON array of token ids on stdin, e.g. [12, 7, 93]");
  std::vector<int32_t> ids;
  for (size_t i = 0; i < j.size(); i++) {
    check(j[i].is_number_integer() && j[i].get<int64_t>() >= INT32_MIN && j[i].get<int64_t>() <= INT32_MAX,
          "--decode: element " + std::to_string(i) + " of the array is not an integer token id: " + j[i].dump());
    ids.push_back(j[i].get<int32_t>());
  }
  return ids;
}

void add_tokenize_command(CLI::App& app) {
  struct TokenizeOptions {
    std::string tokenizer;
    bool decode = false;
  };
  auto topt = std::make_shared<TokenizeOptions>();
  auto* tok = app.add_subcommand("tokenize", "Encode stdin to token ids (a JSON array), or --decode ids back to text");
  tok->add_option("--tokenizer", topt->tokenizer, "tokenizer.json, or a model directory that has one")->required();
  tok->add_flag("--decode", topt->decode, "read a JSON array of ids on stdin and print the text (no added newline)");
  tok->callback([topt] {
    auto tokenizer = load_tokenizer(tokenizer_path(topt->tokenizer));
    std::string input = read_stdin();
    if (topt->decode) {
      std::string text = tokenizer->decode(parse_ids(input));
      std::fwrite(text.data(), 1, text.size(), stdout);
    } else {
      // Written by hand: a nlohmann array of a 100 MB corpus's ids would take GBs.
      std::vector<int32_t> ids = tokenizer->encode(input);
      std::string out = "[";
      for (size_t i = 0; i < ids.size(); i++) (out += i ? "," : "") += std::to_string(ids[i]);
      out += "]\n";
      std::fwrite(out.data(), 1, out.size(), stdout);
    }
    std::fflush(stdout);
  });

  struct TrainOptions {
    std::vector<std::string> data;
    int vocab_size = 0;
    std::string out;
    std::string type = "bpe";
    std::vector<std::string> special = {"<|endoftext|>"};
  };
  auto opt = std::make_shared<TrainOptions>();
  auto* group = app.add_subcommand("tokenizer", "Tokenizer tools");
  group->require_subcommand(1);
  auto* train = group->add_subcommand("train", "Train a tokenizer on text files and write a Hugging Face tokenizer.json");
  train->add_option("--data", opt->data, "UTF-8 text file(s) to train on")->required()->check(CLI::ExistingFile);
  train->add_option("--vocab-size", opt->vocab_size, "vocabulary size for bpe (specials + 256 bytes + merges)");
  train->add_option("--out", opt->out, "where to write tokenizer.json")->required();
  train->add_option("--type", opt->type, "bpe (byte-level BPE) or char (one token per character)")
      ->check(CLI::IsMember({"bpe", "char"}));
  train->add_option("--special-token", opt->special, "special token(s) for bpe, given ids 0..k-1")
      ->capture_default_str();
  train->callback([opt] {
    auto start = std::chrono::steady_clock::now();
    std::unique_ptr<Tokenizer> tokenizer;
    if (opt->type == "char") {
      std::string text;
      for (const auto& path : opt->data) text += read_text_file(path);
      tokenizer = std::make_unique<CharTokenizer>(CharTokenizer::from_corpus(text));
    } else {
      check(opt->vocab_size > 0, "--vocab-size is required for a bpe tokenizer (e.g. --vocab-size 4096)");
      BpeTrainOptions o;
      o.vocab_size = opt->vocab_size;
      o.special_tokens = opt->special;
      o.on_progress = [](int done, int wanted) { std::fprintf(stderr, "\rmerges %d / %d", done, wanted); };
      tokenizer = std::make_unique<BpeTokenizer>(train_bpe_files(opt->data, o));
      std::fprintf(stderr, "\n");
    }
    tokenizer->save(opt->out);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "wrote %s: %s tokenizer, vocab size %d, %.2f s\n", opt->out.c_str(),
                 tokenizer->kind().c_str(), tokenizer->vocab_size(), secs);
  });
}

}  // namespace bhasa::cli
