// Char-level tokenizer: one token per Unicode code point, the vocabulary being the
// sorted set of code points in the training corpus. Saved as a Hugging Face
// tokenizer.json that HF tokenizers loads and encodes identically: a BPE model
// whose vocab is the characters, with no merges, no normalizer, no pre-tokenizer
// and a Fuse decoder (concatenate tokens).
#pragma once
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "text/tokenizer.h"

namespace bhasa {

class CharTokenizer : public Tokenizer {
 public:
  // Vocabulary = sorted distinct code points of `corpus`. Throws Error for an
  // empty corpus or invalid UTF-8.
  static CharTokenizer from_corpus(std::string_view corpus);
  // From the characters in id order (each one code point, all distinct).
  explicit CharTokenizer(std::vector<std::string> chars);
  // From a parsed tokenizer.json already known to be char-level.
  static CharTokenizer from_json(const nlohmann::json& j, const std::string& source);

  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::string decode_token(int32_t id) const override;
  int vocab_size() const override { return static_cast<int>(chars_.size()); }
  int32_t token_id(std::string_view content) const override;
  std::string kind() const override { return "char"; }
  void save(const std::string& path) const override;
  nlohmann::ordered_json to_json() const;

 private:
  std::vector<std::string> chars_;                  // id -> the character (UTF-8)
  std::unordered_map<uint32_t, int32_t> id_of_;     // code point -> id
};

}  // namespace bhasa
