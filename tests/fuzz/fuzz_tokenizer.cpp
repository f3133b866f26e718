// libFuzzer target: tokenizer.json. The input is split at the first 0xFF byte
// (never valid UTF-8): the JSON before it, and text to encode after it (a fixed
// sample when absent). A tokenizer that loads must encode and decode without
// crashing (a round trip is not asserted: added tokens with lstrip/rstrip
// legitimately drop whitespace).
#include <cstdint>
#include <string>

#include "core/error.h"
#include "text/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t cut = input.find('\xff');
  const std::string json_text = input.substr(0, cut);
  const std::string text = cut == std::string::npos ? std::string("Hello world, it's 2024!\n  caf\xc3\xa9 <|endoftext|>")
                                                     : input.substr(cut + 1);
  std::unique_ptr<bhasa::Tokenizer> tok;
  try {
    tok = bhasa::load_tokenizer_from_string(json_text, "fuzz");
  } catch (const bhasa::Error&) {
    return 0;
  }
  (void)tok->vocab_size();
  (void)tok->token_id("<|endoftext|>");
  std::vector<int32_t> ids;
  try {
    ids = tok->encode(text);
  } catch (const bhasa::Error&) {
    return 0;  // invalid UTF-8, or text the vocabulary cannot express
  }
  try {
    (void)tok->decode(ids);
    for (int32_t id : ids) (void)tok->decode_token(id);
  } catch (const bhasa::Error&) {
  }
  try {
    (void)tok->decode({-1, 0, tok->vocab_size(), 1 << 30});
  } catch (const bhasa::Error&) {
  }
  return 0;
}
