// A tokenizer maps text to token ids and back. Two kinds, both stored as Hugging
// Face tokenizer.json files: char-level (the default for training from scratch)
// and byte-level BPE (GPT-2 / GPT-NeoX style, what pretrained Mamba models use).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bhasa {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text (UTF-8) -> ids. Throws Error on invalid UTF-8 or text the vocabulary
  // cannot express.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Ids -> text. Throws Error for an id outside the vocabulary.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // The raw bytes of one token, for streaming output. For byte-level BPE this can
  // be part of a multi-byte UTF-8 character: concatenate before printing.
  virtual std::string decode_token(int32_t id) const = 0;
  // One past the largest id (the embedding needs at least this many rows).
  virtual int vocab_size() const = 0;
  // Id of an added/special token such as "<|endoftext|>", or -1 if there is none.
  virtual int32_t token_id(std::string_view content) const = 0;
  // "char" or "bpe".
  virtual std::string kind() const = 0;
  // Writes a Hugging Face tokenizer.json (atomically).
  virtual void save(const std::string& path) const = 0;
};

// Reads a Hugging Face tokenizer.json and returns the tokenizer it describes:
// a BPE model with no merges and no ByteLevel pre-tokenizer is char-level,
// otherwise byte-level BPE. Throws Error naming what is wrong or unsupported.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);
// The same from the file's parsed text; `source` names it in error messages.
std::unique_ptr<Tokenizer> load_tokenizer_from_string(const std::string& json_text,
                                                      const std::string& source = "tokenizer.json");

}  // namespace bhasa
