// Reading and writing the Hugging Face tokenizer.json form of a byte-level BPE.
// Everything we cannot reproduce exactly is refused with a message, rather than
// silently giving ids that differ from HF's.
#include <cstdint>

#include "core/error.h"
#include "core/files.h"
#include "text/bpe.h"

namespace bhasa {

using json = nlohmann::json;

static const json& field(const json& obj, const char* key, const std::string& where) {
  check(obj.is_object(), where + " must be a JSON object");
  auto it = obj.find(key);
  check(it != obj.end(), where + " has no \"" + key + "\" field");
  return *it;
}

static std::string type_of(const json& obj, const std::string& where) {
  const json& t = field(obj, "type", where);
  check(t.is_string(), where + ".type must be a string");
  return t.get<std::string>();
}

// A token id: an integer in int32 (a float or a huge integer would not convert cleanly).
static int32_t json_token_id(const json& v, const std::string& where) {
  check(v.is_number_integer() && v.get<int64_t>() >= INT32_MIN && v.get<int64_t>() <= INT32_MAX,
        [&] { return where + " is not an integer id in int32 (" + v.dump() + ")"; });
  return int32_t(v.get<int64_t>());
}

static bool flag(const json& obj, const char* key, bool fallback) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? fallback : it->get<bool>();
}

static PreTokenizer::Step parse_step(const json& p, const std::string& where) {
  std::string type = type_of(p, where);
  if (type == "ByteLevel") {
    PreTokenizer::Step step{PreTokenizer::Step::ByteLevel, nullptr, flag(p, "add_prefix_space", false)};
    if (flag(p, "use_regex", true)) step.regex = std::make_shared<Regex>(kGpt2Pattern);
    return step;
  }
  if (type == "Split") {
    const json& pattern = field(p, "pattern", where);
    std::string behavior = field(p, "behavior", where).get<std::string>();
    check(behavior == "Isolated", where + ": Split behavior '" + behavior + "' is not supported (only Isolated)");
    check(!flag(p, "invert", false), where + ": Split with invert = true is not supported");
    if (pattern.contains("Regex"))
      return {PreTokenizer::Step::Split, std::make_shared<Regex>(pattern["Regex"].get<std::string>()), false};
    if (pattern.contains("String"))
      return {PreTokenizer::Step::Split, std::make_shared<Regex>(pattern["String"].get<std::string>(), true), false};
    throw Error(where + ".pattern must be {\"Regex\": ...} or {\"String\": ...}");
  }
  throw Error(where + ": pre-tokenizer type '" + type + "' is not supported (ByteLevel, Split, Sequence are)");
}

static PreTokenizer parse_pre_tokenizer(const json& p, const std::string& where) {
  check(!p.is_null(), where + " is null: a byte-level BPE needs a ByteLevel pre-tokenizer");
  PreTokenizer pre;
  if (type_of(p, where) == "Sequence") {
    const json& list = field(p, "pretokenizers", where);
    for (size_t i = 0; i < list.size(); i++)
      pre.steps.push_back(parse_step(list[i], where + ".pretokenizers[" + std::to_string(i) + "]"));
  } else {
    pre.steps.push_back(parse_step(p, where));
  }
  bool byte_level = false;
  for (const auto& s : pre.steps) byte_level |= s.kind == PreTokenizer::Step::ByteLevel;
  check(byte_level, where + " has no ByteLevel step: only byte-level BPE is supported");
  check(pre.steps.back().kind == PreTokenizer::Step::ByteLevel,
        where + ": a Split after the ByteLevel step is not supported");
  return pre;
}

BpeTokenizer BpeTokenizer::from_json(const json& j, const std::string& source) {
  try {
    const json& model = field(j, "model", source);
    std::string where = source + ": model";
    std::string type = type_of(model, where);
    check(type == "BPE", where + ".type is '" + type + "': only BPE (byte-level) and char tokenizers are supported");
    auto dropout = model.find("dropout");
    check(dropout == model.end() || dropout->is_null() || dropout->get<double>() == 0.0,
          where + ".dropout is set: BPE dropout is not supported");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      auto it = model.find(key);
      check(it == model.end() || it->is_null() || it->get<std::string>().empty(),
            where + "." + key + " is set: only byte-level BPE without subword markers is supported");
    }
    check(!flag(model, "byte_fallback", false),
          where + ".byte_fallback is true: SentencePiece-style BPE is not supported, only byte-level");

    const json& vocab_json = field(model, "vocab", where);
    check(vocab_json.is_object(), where + ".vocab must be an object {token: id}");
    std::unordered_map<std::string, int32_t> vocab;
    for (auto it = vocab_json.begin(); it != vocab_json.end(); ++it) {
      vocab.emplace(it.key(), json_token_id(it.value(), where + ".vocab[\"" + it.key() + "\"]"));
    }

    const json& merges_json = field(model, "merges", where);
    check(merges_json.is_array(), where + ".merges must be an array");
    std::vector<Merge> merges;
    merges.reserve(merges_json.size());
    for (size_t i = 0; i < merges_json.size(); i++) {
      const json& m = merges_json[i];
      std::string at = where + ".merges[" + std::to_string(i) + "]";
      if (m.is_string()) {  // "a b"
        std::string s = m.get<std::string>();
        size_t space = s.find(' ');
        check(space != std::string::npos && s.find(' ', space + 1) == std::string::npos,
              at + " '" + s + "' is not two tokens separated by one space");
        merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else {  // ["a", "b"]
        check(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
              at + " must be \"a b\" or [\"a\", \"b\"]");
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      }
    }

    std::vector<AddedToken> added;
    if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
      for (const json& a : j["added_tokens"]) {
        AddedToken t;
        t.id = json_token_id(field(a, "id", source + ": added_tokens entry"), source + ": added_tokens entry's id");
        t.content = field(a, "content", source + ": added_tokens entry").get<std::string>();
        t.special = flag(a, "special", false);
        t.normalized = flag(a, "normalized", !t.special);
        t.lstrip = flag(a, "lstrip", false);
        t.rstrip = flag(a, "rstrip", false);
        t.single_word = flag(a, "single_word", false);
        added.push_back(std::move(t));
      }
    }

    // Normalizers change the text before matching; NFC leaves NFC text unchanged,
    // so we accept it on the understanding that input is NFC already.
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      std::string nt = type_of(j["normalizer"], source + ": normalizer");
      check(nt == "NFC", source + ": normalizer '" + nt + "' is not supported (only none or NFC)");
    }
    check(j.contains("pre_tokenizer"), source + " has no \"pre_tokenizer\" field");
    PreTokenizer pre = parse_pre_tokenizer(j["pre_tokenizer"], source + ": pre_tokenizer");
    check(j.contains("decoder") && !j["decoder"].is_null(), source + " has no decoder: byte-level BPE needs the ByteLevel decoder");
    std::string dt = type_of(j["decoder"], source + ": decoder");
    check(dt == "ByteLevel", source + ": decoder '" + dt + "' is not supported (only ByteLevel)");

    std::string unk;
    if (model.contains("unk_token") && model["unk_token"].is_string()) unk = model["unk_token"].get<std::string>();
    BpeTokenizer tok(std::move(vocab), std::move(merges), std::move(added), std::move(pre),
                     flag(model, "ignore_merges", false), unk);
    tok.loaded_json_ = j.dump();
    return tok;
  } catch (const json::exception& e) {
    // A field of the wrong JSON type: say where rather than crash.
    throw Error(source + ": unexpected JSON value (" + std::string(e.what()) + ")");
  } catch (const Error& e) {
    std::string msg = e.what();
    throw Error(msg.rfind(source, 0) == 0 ? msg : source + ": " + msg);
  }
}

static nlohmann::ordered_json step_json(const PreTokenizer::Step& s) {
  if (s.kind == PreTokenizer::Step::ByteLevel)
    return {{"type", "ByteLevel"}, {"add_prefix_space", s.add_prefix_space}, {"trim_offsets", true},
            {"use_regex", s.regex != nullptr}};
  nlohmann::ordered_json pattern = {{s.regex->literal() ? "String" : "Regex", s.regex->pattern()}};
  return {{"type", "Split"}, {"pattern", pattern}, {"behavior", "Isolated"}, {"invert", false}};
}

nlohmann::ordered_json BpeTokenizer::to_json() const {
  if (!loaded_json_.empty()) return nlohmann::ordered_json::parse(loaded_json_);
  using ojson = nlohmann::ordered_json;
  ojson added = ojson::array();
  for (const auto& a : added_)
    added.push_back({{"id", a.id}, {"content", a.content}, {"single_word", a.single_word}, {"lstrip", a.lstrip},
                     {"rstrip", a.rstrip}, {"normalized", a.normalized}, {"special", a.special}});
  ojson pre;
  if (pre_tokenizer_.steps.size() == 1) {
    pre = step_json(pre_tokenizer_.steps[0]);
  } else {
    ojson list = ojson::array();
    for (const auto& s : pre_tokenizer_.steps) list.push_back(step_json(s));
    pre = {{"type", "Sequence"}, {"pretokenizers", list}};
  }
  ojson vocab = ojson::object();
  for (size_t id = 0; id < id_to_token_.size(); id++) {
    auto it = vocab_.find(id_to_token_[id]);
    if (it != vocab_.end() && it->second == int32_t(id)) vocab[id_to_token_[id]] = id;
  }
  ojson merges = ojson::array();
  for (const auto& [a, b] : merges_) merges.push_back({a, b});
  ojson model = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", unk_token_.empty() ? ojson(nullptr) : ojson(unk_token_)},
                 {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
                 {"byte_fallback", false}, {"ignore_merges", ignore_merges_}, {"vocab", vocab}, {"merges", merges}};
  ojson byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  return {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
          {"normalizer", nullptr}, {"pre_tokenizer", pre}, {"post_processor", byte_level},
          {"decoder", byte_level}, {"model", model}};
}

void BpeTokenizer::save(const std::string& path) const {
  atomic_write_file(path, to_json().dump(2, ' ', false, json::error_handler_t::strict) + "\n");
}

}  // namespace bhasa
