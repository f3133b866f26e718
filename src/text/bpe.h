// Byte-level BPE (GPT-2 / GPT-NeoX), matching Hugging Face tokenizers id for id:
// split out added tokens (exact match, leftmost-longest), pre-tokenize into words
// (regex), map each word's bytes to printable characters, then apply merges in
// rank order. Decoding maps the characters back to bytes.
#pragma once
#include <array>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "text/byte_level.h"
#include "text/tokenizer.h"

namespace bhasa {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = true;
  bool normalized = false;   // matched after normalization (we support no normalizer: same thing)
  bool lstrip = false;       // also swallow whitespace before the token
  bool rstrip = false;       // also swallow whitespace after it
  bool single_word = false;  // only match when not inside a word
};

class BpeTokenizer : public Tokenizer {
 public:
  using Merge = std::pair<std::string, std::string>;  // in vocab (byte-mapped) form

  // vocab: token (byte-mapped form) -> id. merges: in rank order; each side and
  // their concatenation must be in vocab. Throws Error naming a bad merge.
  BpeTokenizer(std::unordered_map<std::string, int32_t> vocab, std::vector<Merge> merges,
               std::vector<AddedToken> added_tokens, PreTokenizer pre_tokenizer,
               bool ignore_merges = false, std::string unk_token = "");
  // From a parsed Hugging Face tokenizer.json. `source` names the file in errors.
  static BpeTokenizer from_json(const nlohmann::json& j, const std::string& source);

  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::string decode_token(int32_t id) const override;
  int vocab_size() const override { return static_cast<int>(id_to_token_.size()); }
  int32_t token_id(std::string_view content) const override;
  std::string kind() const override { return "bpe"; }
  void save(const std::string& path) const override;
  // The tokenizer.json: the loaded file unchanged, or built from the parts.
  nlohmann::ordered_json to_json() const;

  const std::vector<Merge>& merges() const { return merges_; }
  // Token string (byte-mapped form, or an added token's content) of an id; "" if unused.
  const std::string& token(int32_t id) const { return id_to_token_.at(id); }

 private:
  // BPE of one pre-tokenized word (raw bytes) -> ids, appended to out.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  // Splits text at added tokens: emit(segment, -1) for plain text, emit("", id) for a token.
  template <class Emit> void split_added(std::string_view text, bool normalized_pass, Emit&& emit) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;             // id -> token ("" for an unused id)
  std::vector<Merge> merges_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merge_of_;  // (left id, right id) -> (rank, merged id)
  std::array<int32_t, 256> byte_id_{};               // id of each single-byte token, -1 if absent
  std::vector<AddedToken> added_;
  std::unordered_map<int32_t, size_t> added_index_;  // id -> index into added_
  PreTokenizer pre_tokenizer_;
  bool ignore_merges_ = false;
  std::string unk_token_;
  int32_t unk_id_ = -1;
  std::string loaded_json_;                          // the file's JSON when loaded from one

  std::vector<std::string> id_to_bytes_;             // id -> what decode_token returns

  // Word -> ids cache: most text repeats a small set of words. Behind a pointer so
  // the tokenizer stays movable; guarded so encode can run on several threads.
  struct Cache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>> ids_of_word;
  };
  std::unique_ptr<Cache> cache_ = std::make_unique<Cache>();
};

}  // namespace bhasa
