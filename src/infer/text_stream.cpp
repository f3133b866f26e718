#include "infer/text_stream.h"

#include <algorithm>

#include "text/utf8.h"

namespace bhasa {

// Length of the UTF-8 sequence a lead byte announces (0 for a continuation or invalid byte).
static size_t sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

std::string Utf8Assembler::push(std::string_view bytes) {
  held_.append(bytes);
  // Find the last lead byte within the final 4 bytes: if its character is not yet
  // complete, keep it (and its continuation bytes) for the next push.
  size_t keep_from = held_.size();
  for (size_t back = 1; back <= std::min<size_t>(4, held_.size()); ++back) {
    size_t i = held_.size() - back;
    unsigned char c = static_cast<unsigned char>(held_[i]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for its lead
    size_t need = sequence_length(c);
    if (need > back) keep_from = i;
    break;
  }
  std::string ready = utf8::lossy(std::string_view(held_).substr(0, keep_from));
  held_.erase(0, keep_from);
  return ready;
}

std::string Utf8Assembler::flush() {
  std::string rest = utf8::lossy(held_);
  held_.clear();
  return rest;
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

std::string StopMatcher::push(std::string_view text, bool& stopped) {
  held_.append(text);
  stopped = false;
  // Every earlier position was already cleared of stop strings, so search only held_.
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) cut = std::min(cut, held_.find(s));
  if (cut != std::string::npos) {
    stopped = true;
    std::string out = held_.substr(0, cut);
    held_.clear();
    return out;
  }
  // Hold back the longest tail of held_ that is a prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : stops_)
    for (size_t n = std::min(s.size() - 1, held_.size()); n > hold; --n)
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
  std::string out = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return out;
}

std::string StopMatcher::flush() {
  std::string rest = std::move(held_);
  held_.clear();
  return rest;
}

}  // namespace bhasa
