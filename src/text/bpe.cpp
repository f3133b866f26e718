#include "text/bpe.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "core/error.h"
#include "text/utf8.h"

namespace bhasa {

static uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

BpeTokenizer::BpeTokenizer(std::unordered_map<std::string, int32_t> vocab, std::vector<Merge> merges,
                           std::vector<AddedToken> added_tokens, PreTokenizer pre_tokenizer,
                           bool ignore_merges, std::string unk_token)
    : vocab_(std::move(vocab)),
      merges_(std::move(merges)),
      added_(std::move(added_tokens)),
      pre_tokenizer_(std::move(pre_tokenizer)),
      ignore_merges_(ignore_merges),
      unk_token_(std::move(unk_token)) {
  int32_t max_id = -1;
  for (const auto& [tok, id] : vocab_) {
    check(id >= 0, "BPE vocabulary: token '" + tok + "' has a negative id " + std::to_string(id));
    max_id = std::max(max_id, id);
  }
  for (const auto& a : added_) {
    check(a.id >= 0, "added token '" + a.content + "' has a negative id " + std::to_string(a.id));
    check(!a.content.empty(), "added token " + std::to_string(a.id) + " has empty content");
    max_id = std::max(max_id, a.id);
  }
  // ids index a table: one far past the number of tokens (a damaged file) would allocate
  // gigabytes (found by fuzz_tokenizer). Real files are dense: 0..N-1, added tokens after.
  const size_t entries = vocab_.size() + added_.size();
  check(size_t(max_id) < 2 * entries + 256, [&] {
    return "token id " + std::to_string(max_id) + " is far past the " + std::to_string(entries) +
           " tokens of this vocabulary: a tokenizer's ids run 0..N-1";
  });
  id_to_token_.assign(max_id + 1, "");
  for (const auto& [tok, id] : vocab_) {
    check(id_to_token_[id].empty(), "BPE vocabulary: id " + std::to_string(id) + " is used by both '" +
                                        id_to_token_[id] + "' and '" + tok + "'");
    id_to_token_[id] = tok;
  }
  for (size_t i = 0; i < added_.size(); i++) {
    id_to_token_[added_[i].id] = added_[i].content;  // an added token may also be in vocab
    added_index_[added_[i].id] = i;
  }

  for (size_t rank = 0; rank < merges_.size(); rank++) {
    const std::string& a = merges_[rank].first;  // not a structured binding: clang 14 cannot capture those
    const std::string& b = merges_[rank].second;
    auto name = [&] { return "merge " + std::to_string(rank) + " ('" + a + "', '" + b + "')"; };
    auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
    check(ia != vocab_.end(), name() + " refers to '" + a + "', which is not in the vocabulary");
    check(ib != vocab_.end(), name() + " refers to '" + b + "', which is not in the vocabulary");
    check(iab != vocab_.end(), name() + ": the merged token '" + a + b + "' is not in the vocabulary");
    // The first (lowest-rank) occurrence of a pair wins, as in HF.
    merge_of_.emplace(pair_key(ia->second, ib->second), std::make_pair(int32_t(rank), iab->second));
  }

  const auto& b2u = byte_to_unicode();
  for (int b = 0; b < 256; b++) {
    auto it = vocab_.find(b2u[b]);
    byte_id_[b] = it == vocab_.end() ? -1 : it->second;
  }
  if (!unk_token_.empty()) {
    auto it = vocab_.find(unk_token_);
    check(it != vocab_.end(), "BPE unk_token '" + unk_token_ + "' is not in the vocabulary");
    unk_id_ = it->second;
  }

  // What each id decodes to, as HF's ByteLevel decoder does it: map every character
  // back to its byte, or, if some character has no byte, keep the token's own UTF-8.
  const auto& u2b = unicode_to_byte();
  id_to_bytes_.resize(id_to_token_.size());
  for (size_t id = 0; id < id_to_token_.size(); id++) {
    const std::string& tok = id_to_token_[id];
    std::string bytes;
    size_t pos = 0;
    uint32_t cp;
    bool mapped = true;
    while (pos < tok.size()) {
      if (!utf8::next(tok, pos, cp)) { mapped = false; break; }
      auto it = u2b.find(cp);
      if (it == u2b.end()) { mapped = false; break; }
      bytes += static_cast<char>(it->second);
    }
    id_to_bytes_[id] = mapped ? bytes : tok;
  }
}

// Leftmost-longest exact matching of the added tokens of one pass (HF matches the
// non-normalized ones first, then the normalized ones in what is left).
template <class Emit>
void BpeTokenizer::split_added(std::string_view text, bool normalized_pass, Emit&& emit) const {
  auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  // single_word's notion of a word character (HF: alphanumeric or '_'); any
  // non-ASCII byte counts as one, an approximation for non-ASCII punctuation.
  auto is_word = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || static_cast<unsigned char>(c) >= 0x80;
  };
  bool any = false;
  for (const auto& a : added_) any |= a.normalized == normalized_pass;
  if (!any) {
    if (!text.empty()) emit(text, -1);
    return;
  }
  size_t done = 0;  // text before this offset has been emitted
  size_t i = 0;
  while (i < text.size()) {
    const AddedToken* best = nullptr;
    for (const auto& a : added_) {
      if (a.normalized != normalized_pass || a.content.size() > text.size() - i) continue;
      if (best && a.content.size() <= best->content.size()) continue;
      if (text.compare(i, a.content.size(), a.content) != 0) continue;
      size_t end = i + a.content.size();
      if (a.single_word && ((i > 0 && is_word(text[i - 1])) || (end < text.size() && is_word(text[end])))) continue;
      best = &a;
    }
    if (!best) { i++; continue; }
    size_t start = i, end = i + best->content.size();
    if (best->lstrip) while (start > done && is_space(text[start - 1])) start--;
    if (best->rstrip) while (end < text.size() && is_space(text[end])) end++;
    if (start > done) emit(text.substr(done, start - done), -1);
    emit(std::string_view(), best->id);
    done = i = end;
  }
  if (done < text.size()) emit(text.substr(done), -1);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  utf8::check_valid(text, "the input text");
  std::vector<int32_t> ids;
  split_added(text, false, [&](std::string_view seg, int32_t id) {
    if (id >= 0) { ids.push_back(id); return; }
    split_added(seg, true, [&](std::string_view seg2, int32_t id2) {
      if (id2 >= 0) { ids.push_back(id2); return; }
      pre_tokenizer_.split(seg2, [&](std::string_view word) { encode_word(word, ids); });
    });
  });
  return ids;
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  constexpr size_t kMaxCachedWord = 64, kMaxCacheEntries = 1 << 18;
  if (word.size() > kMaxCachedWord) {
    merge_word(word, out);
    return;
  }
  std::string key(word);
  {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    auto it = cache_->ids_of_word.find(key);
    if (it != cache_->ids_of_word.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_->mutex);
  if (cache_->ids_of_word.size() >= kMaxCacheEntries) cache_->ids_of_word.clear();
  cache_->ids_of_word.emplace(std::move(key), std::move(ids));
}

// HF's Word::merge_all: symbols in a linked list, candidate merges in a min-heap
// ordered by (rank, position); entries made stale by an earlier merge are skipped.
void BpeTokenizer::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges_) {
    std::string mapped;
    for (unsigned char b : word) mapped += byte_to_unicode()[b];
    auto it = vocab_.find(mapped);
    if (it != vocab_.end()) { out.push_back(it->second); return; }
  }
  struct Symbol { int32_t id; int32_t prev, next; bool alive; };
  std::vector<Symbol> sym(word.size());
  for (size_t i = 0; i < word.size(); i++) {
    unsigned char b = static_cast<unsigned char>(word[i]);
    int32_t id = byte_id_[b];
    if (id < 0) {
      char buf[120];
      std::snprintf(buf, sizeof buf, "byte 0x%02X has no token in the BPE vocabulary and there is no unk_token", b);
      check(unk_id_ >= 0, buf);
      id = unk_id_;
    }
    sym[i] = {id, int32_t(i) - 1, i + 1 < word.size() ? int32_t(i + 1) : -1, true};
  }
  struct Candidate { int32_t rank, pos, new_id; };
  auto later = [](const Candidate& x, const Candidate& y) { return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos; };
  std::vector<Candidate> heap;
  auto push = [&](int32_t pos) {
    int32_t next = sym[pos].next;
    if (next < 0) return;
    auto it = merge_of_.find(pair_key(sym[pos].id, sym[next].id));
    if (it == merge_of_.end()) return;
    heap.push_back({it->second.first, pos, it->second.second});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (int32_t i = 0; i + 1 < int32_t(sym.size()); i++) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = sym[left.next];
    auto it = merge_of_.find(pair_key(left.id, right.id));
    if (it == merge_of_.end() || it->second.second != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) sym[right.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev);
    push(top.pos);
  }
  for (int32_t i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

std::string BpeTokenizer::decode_token(int32_t id) const {
  check(id >= 0 && id < vocab_size() && !id_to_token_[id].empty(),
        "token id " + std::to_string(id) + " is not in the vocabulary (0.." + std::to_string(vocab_size() - 1) + ")");
  return id_to_bytes_[id];
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string bytes;
  for (int32_t id : ids) bytes += decode_token(id);
  return utf8::lossy(bytes);  // like HF: a cut-off character becomes U+FFFD
}

int32_t BpeTokenizer::token_id(std::string_view content) const {
  for (const auto& a : added_)
    if (a.content == content) return a.id;
  auto it = vocab_.find(std::string(content));
  return it == vocab_.end() ? -1 : it->second;
}

}  // namespace bhasa
