#include "text/tokenizer.h"

#include "core/error.h"
#include "core/files.h"
#include "text/bpe.h"
#include "text/char_tokenizer.h"

namespace bhasa {

// Char-level files are the ones CharTokenizer::save writes: a BPE model with no
// merges and no ByteLevel pre-tokenizer (each character is its own token).
static bool is_char_level(const nlohmann::json& j) {
  const auto& model = j.at("model");
  auto merges = model.find("merges");
  bool no_merges = merges == model.end() || (merges->is_array() && merges->empty());
  auto pre = j.find("pre_tokenizer");
  bool no_pre = pre == j.end() || pre->is_null();
  auto type = model.find("type");  // (any JSON value: a non-string type is simply not char-level)
  return type != model.end() && type->is_string() && *type == "BPE" && no_merges && no_pre;
}

std::unique_ptr<Tokenizer> load_tokenizer_from_string(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number like 1e999
    throw Error(source + " is not valid JSON (" + e.what() + "): expected a Hugging Face tokenizer.json");
  }
  check(j.is_object(), source + " is not a JSON object: expected a Hugging Face tokenizer.json");
  check(j.contains("model") && j["model"].is_object(), source + " has no \"model\" object: expected a Hugging Face tokenizer.json");
  if (is_char_level(j)) {
    try {
      return std::make_unique<CharTokenizer>(CharTokenizer::from_json(j, source));
    } catch (const nlohmann::json::exception& e) {
      throw Error(source + ": unexpected JSON value (" + std::string(e.what()) + ")");
    }
  }
  return std::make_unique<BpeTokenizer>(BpeTokenizer::from_json(j, source));
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  return load_tokenizer_from_string(read_text_file(path), path);
}

}  // namespace bhasa
