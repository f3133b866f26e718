// The pieces of GPT-2's byte-level pre-tokenization, as Hugging Face tokenizers
// implements them: a regex that splits text into words, and a map of each of the
// 256 bytes to a printable Unicode character (so every token is a printable string).
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace bhasa {

// GPT-2's word-splitting regex (HF ByteLevel with use_regex = true).
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// byte -> the character GPT-2 uses for it (UTF-8): printable Latin-1 bytes map to
// themselves, the rest to U+0100 + n in byte order.
const std::array<std::string, 256>& byte_to_unicode();
// The inverse: code point -> byte, for decoding.
const std::unordered_map<uint32_t, uint8_t>& unicode_to_byte();

// A compiled PCRE2 regex (UTF + UCP, JIT when available).
class Regex {
 public:
  // literal = true matches `pattern` as a plain string (HF Split {"String": ...}).
  Regex(const std::string& pattern, bool literal = false);
  // Calls emit(piece) for the matches and the text between them, in order, none
  // empty (HF SplitDelimiterBehavior::Isolated). `text` must be valid UTF-8.
  void split_isolated(std::string_view text, const std::function<void(std::string_view)>& emit) const;
  const std::string& pattern() const { return pattern_; }
  bool literal() const { return literal_; }

 private:
  std::string pattern_;
  bool literal_;
  std::shared_ptr<void> code_;  // pcre2_code_8*, freed by its deleter
};

// A pre-tokenizer pipeline: zero or more regex Split steps, then ByteLevel
// (optional prefix space, optional GPT-2 regex). Each step splits every piece
// the previous step produced.
struct PreTokenizer {
  struct Step {
    enum Kind { Split, ByteLevel } kind;
    std::shared_ptr<Regex> regex;    // Split: its pattern; ByteLevel: GPT-2's when use_regex
    bool add_prefix_space = false;   // ByteLevel only
  };
  std::vector<Step> steps;

  // GPT-2 / GPT-NeoX: ByteLevel(add_prefix_space, use_regex = true).
  static PreTokenizer gpt2(bool add_prefix_space = false);
  // Calls emit(word) for each word of `text` (raw bytes, before the byte map).
  // The views are valid only during the call.
  void split(std::string_view text, const std::function<void(std::string_view)>& emit) const;
};

}  // namespace bhasa
