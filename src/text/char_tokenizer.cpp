#include "text/char_tokenizer.h"

#include <set>

#include "core/error.h"
#include "core/files.h"
#include "text/utf8.h"

namespace bhasa {

CharTokenizer CharTokenizer::from_corpus(std::string_view corpus) {
  check(!corpus.empty(), "the training corpus is empty: a char tokenizer needs some text");
  utf8::check_valid(corpus, "the training corpus");
  // A presence table over all code points is faster than a set for large corpora.
  std::vector<bool> seen(0x110000, false);
  size_t pos = 0;
  uint32_t cp;
  while (pos < corpus.size()) {
    unsigned char c = static_cast<unsigned char>(corpus[pos]);
    if (c < 0x80) { seen[c] = true; pos++; continue; }
    utf8::next(corpus, pos, cp);
    seen[cp] = true;
  }
  std::vector<std::string> chars;
  for (uint32_t c = 0; c < seen.size(); c++) {
    if (!seen[c]) continue;
    std::string s;
    utf8::append(s, c);
    chars.push_back(std::move(s));
  }
  return CharTokenizer(std::move(chars));
}

CharTokenizer::CharTokenizer(std::vector<std::string> chars) : chars_(std::move(chars)) {
  for (size_t id = 0; id < chars_.size(); id++) {
    const std::string& s = chars_[id];
    size_t pos = 0;
    uint32_t cp = 0;
    check(utf8::next(s, pos, cp) && pos == s.size(),
          "char tokenizer: vocabulary entry " + std::to_string(id) +
              " is not exactly one UTF-8 character");
    check(id_of_.emplace(cp, static_cast<int32_t>(id)).second,
          "char tokenizer: character " + utf8::code_point_name(cp) + " appears twice in the vocabulary");
  }
}

CharTokenizer CharTokenizer::from_json(const nlohmann::json& j, const std::string& source) {
  const auto& vocab = j.at("model").at("vocab");
  check(vocab.is_object(), source + ": model.vocab must be an object {token: id}");
  std::vector<std::string> chars(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    check(it.value().is_number_integer(), source + ": model.vocab[\"" + it.key() + "\"] is not an integer id");
    int64_t id = it.value().get<int64_t>();
    check(id >= 0 && id < static_cast<int64_t>(chars.size()) && chars[id].empty(),
          source + ": char vocabulary ids must be 0..N-1, each used once (bad id " + std::to_string(id) + ")");
    chars[id] = it.key();
  }
  return CharTokenizer(std::move(chars));
}

std::vector<int32_t> CharTokenizer::encode(std::string_view text) const {
  utf8::check_valid(text, "the input text");
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  size_t pos = 0, n_chars = 0;
  uint32_t cp;
  while (pos < text.size()) {
    size_t start = pos;
    utf8::next(text, pos, cp);
    auto it = id_of_.find(cp);
    if (it == id_of_.end()) {
      throw Error("character " + utf8::code_point_name(cp) + " '" + std::string(text.substr(start, pos - start)) +
                  "' at character offset " + std::to_string(n_chars) + " (byte offset " + std::to_string(start) +
                  ") is not in the model's vocabulary (a char tokenizer of " + std::to_string(chars_.size()) +
                  " characters seen in its training corpus): remove or replace it");
    }
    ids.push_back(it->second);
    n_chars++;
  }
  return ids;
}

std::string CharTokenizer::decode_token(int32_t id) const {
  check(id >= 0 && id < vocab_size(), "token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                                          std::to_string(vocab_size() - 1) + ")");
  return chars_[id];
}

std::string CharTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) out += decode_token(id);
  return out;
}

int32_t CharTokenizer::token_id(std::string_view content) const {
  size_t pos = 0;
  uint32_t cp;
  if (!utf8::next(content, pos, cp) || pos != content.size()) return -1;
  auto it = id_of_.find(cp);
  return it == id_of_.end() ? -1 : it->second;
}

nlohmann::ordered_json CharTokenizer::to_json() const {
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (size_t id = 0; id < chars_.size(); id++) vocab[chars_[id]] = id;
  nlohmann::ordered_json model = {
      {"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
      {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
      {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
      {"vocab", vocab}, {"merges", nlohmann::ordered_json::array()}};
  return {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr},
          {"added_tokens", nlohmann::ordered_json::array()}, {"normalizer", nullptr},
          {"pre_tokenizer", nullptr}, {"post_processor", nullptr},
          {"decoder", {{"type", "Fuse"}}}, {"model", model}};
}

void CharTokenizer::save(const std::string& path) const {
  atomic_write_file(path, to_json().dump(2, ' ', false, nlohmann::json::error_handler_t::strict) + "\n");
}

}  // namespace bhasa
