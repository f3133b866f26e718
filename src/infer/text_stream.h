// Turning a stream of token bytes into text that is safe to print as it comes:
// - Utf8Assembler holds back the bytes of a character split across tokens
//   (byte-level BPE tokens can end inside a multi-byte UTF-8 character);
// - StopMatcher holds back text that might be the start of a stop string, and
//   cuts the output where a stop string appears (the stop string is not printed).
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace bhasa {

class Utf8Assembler {
 public:
  // Appends bytes; returns the text that is now complete (valid UTF-8: bytes that
  // can never form a character become U+FFFD, as HF tokenizers' decode does).
  std::string push(std::string_view bytes);
  // Whatever is held back (an unfinished character at the end of generation), as U+FFFD.
  std::string flush();
  void clear() { held_.clear(); }

 private:
  std::string held_;  // at most 3 bytes: the start of an unfinished character
};

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops = {});
  // Appends text. Returns the part that can be printed now; sets `stopped` when a
  // stop string appeared (the text from it on is dropped).
  std::string push(std::string_view text, bool& stopped);
  // The held-back text, when generation ends without a stop string.
  std::string flush();
  void clear() { held_.clear(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;
};

}  // namespace bhasa
