#include "text/byte_level.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "text/utf8.h"

namespace bhasa {

static std::array<uint32_t, 256> byte_code_points() {
  // Same order as GPT-2's bytes_to_unicode(): printable bytes keep their value.
  std::array<uint32_t, 256> cps{};
  std::array<bool, 256> printable{};
  for (int b = '!'; b <= '~'; b++) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; b++) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; b++) printable[b] = true;
  uint32_t n = 0;
  for (int b = 0; b < 256; b++) cps[b] = printable[b] ? b : 256 + n++;
  return cps;
}

const std::array<std::string, 256>& byte_to_unicode() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    auto cps = byte_code_points();
    for (int b = 0; b < 256; b++) utf8::append(t[b], cps[b]);
    return t;
  }();
  return table;
}

const std::unordered_map<uint32_t, uint8_t>& unicode_to_byte() {
  static const std::unordered_map<uint32_t, uint8_t> table = [] {
    std::unordered_map<uint32_t, uint8_t> t;
    auto cps = byte_code_points();
    for (int b = 0; b < 256; b++) t[cps[b]] = static_cast<uint8_t>(b);
    return t;
  }();
  return table;
}

Regex::Regex(const std::string& pattern, bool literal) : pattern_(pattern), literal_(literal) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                                   &err, &err_offset, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw Error("pre-tokenizer regex '" + pattern + "' does not compile at offset " + std::to_string(err_offset) +
                ": " + reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
  code_ = std::shared_ptr<void>(code, [](void* p) { pcre2_code_free(static_cast<pcre2_code*>(p)); });
}

void Regex::split_isolated(std::string_view text, const std::function<void(std::string_view)>& emit) const {
  auto* code = static_cast<pcre2_code*>(code_.get());
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> guard(md, pcre2_match_data_free);
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0, emitted = 0;
  while (pos < text.size()) {
    // The input was validated once up front, so skip PCRE2's per-call UTF check.
    int rc = pcre2_match(code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) throw Error("pre-tokenizer regex '" + pattern_ + "' failed to match (PCRE2 error " + std::to_string(rc) + ")");
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t start = ov[0], end = ov[1];
    if (end == start) {
      // An empty match splits nothing: step over one character.
      pos = start + 1;
      while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) pos++;
      continue;
    }
    if (start > emitted) emit(text.substr(emitted, start - emitted));
    emit(text.substr(start, end - start));
    emitted = pos = end;
  }
  if (emitted < text.size()) emit(text.substr(emitted));
}

PreTokenizer PreTokenizer::gpt2(bool add_prefix_space) {
  static const auto gpt2_regex = std::make_shared<Regex>(kGpt2Pattern);
  PreTokenizer p;
  p.steps.push_back({Step::ByteLevel, gpt2_regex, add_prefix_space});
  return p;
}

// Runs steps[k..] on `piece`, recursing so each step sees every piece of the last.
static void run_steps(const std::vector<PreTokenizer::Step>& steps, size_t k, std::string_view piece,
                      const std::function<void(std::string_view)>& emit) {
  if (k == steps.size()) {
    emit(piece);
    return;
  }
  const auto& step = steps[k];
  auto next = [&](std::string_view p) { run_steps(steps, k + 1, p, emit); };
  if (step.kind == PreTokenizer::Step::ByteLevel && step.add_prefix_space && !piece.empty() && piece[0] != ' ') {
    std::string spaced(1, ' ');
    spaced.append(piece);
    if (step.regex) step.regex->split_isolated(spaced, next);
    else next(spaced);
    return;
  }
  if (step.regex) step.regex->split_isolated(piece, next);
  else next(piece);
}

void PreTokenizer::split(std::string_view text, const std::function<void(std::string_view)>& emit) const {
  if (text.empty()) return;
  run_steps(steps, 0, text, emit);
}

}  // namespace bhasa
