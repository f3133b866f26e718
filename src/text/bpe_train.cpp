#include "text/bpe_train.h"

#include <algorithm>
#include <cctype>
#include <queue>
#include <thread>
#include <unordered_map>

#include "core/error.h"
#include "core/files.h"
#include "text/utf8.h"

namespace bhasa {

namespace {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using WordCounts = std::unordered_map<std::string, int64_t, StringHash, std::equal_to<>>;

// Counts the pre-tokenized words of `text`, skipping the special tokens (HF
// splits them out before pre-tokenizing, so they never take part in merges).
void count_words(std::string_view text, const std::vector<std::string>& specials, const PreTokenizer& pre,
                 WordCounts& counts) {
  auto add = [&](std::string_view word) {
    auto it = counts.find(word);
    if (it == counts.end()) counts.emplace(std::string(word), 1);
    else it->second++;
  };
  size_t done = 0;
  for (size_t i = 0; i < text.size(); i++) {
    size_t best = 0;
    for (const auto& s : specials)
      if (s.size() > best && text.compare(i, s.size(), s) == 0) best = s.size();
    if (best == 0) continue;
    pre.split(text.substr(done, i - done), add);
    done = i + best;
    i = done - 1;
  }
  pre.split(text.substr(done), add);
}

// Counts words on several threads. The text is cut only at "x\n|y" with x and y
// not whitespace: there the GPT-2 regex makes "\n" a word of its own, whether or
// not the text goes on, so the cut changes nothing. (Whitespace before the '\n'
// would not be safe: "  \n" at the end of a chunk would be one word.)
void count_words_parallel(std::string_view text, const std::vector<std::string>& specials, WordCounts& counts) {
  PreTokenizer pre = PreTokenizer::gpt2(false);
  bool special_spans_lines = false;
  for (const auto& s : specials) special_spans_lines |= s.find('\n') != std::string::npos;
  size_t n_threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 16);
  if (text.size() < (1u << 20) || special_spans_lines) n_threads = 1;
  std::vector<size_t> cuts = {0};
  for (size_t t = 1; t < n_threads; t++) {
    size_t p = std::max(cuts.back(), text.size() * t / n_threads);
    auto space = [&](size_t i) { return std::isspace(static_cast<unsigned char>(text[i])) != 0; };
    while (p < text.size() && !(p >= 2 && text[p - 1] == '\n' && !space(p) && !space(p - 2))) p++;
    cuts.push_back(p);
  }
  cuts.push_back(text.size());
  std::vector<WordCounts> partial(n_threads);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < n_threads; t++)
    threads.emplace_back([&, t] { count_words(text.substr(cuts[t], cuts[t + 1] - cuts[t]), specials, pre, partial[t]); });
  for (auto& th : threads) th.join();
  for (auto& part : partial)
    for (auto& [word, c] : part) counts[word] += c;
}

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

struct QueueEntry {
  int64_t count;
  uint64_t pair;  // (left id << 32) | right id: comparing keys compares (left, right)
  int32_t words;  // index of the list of words this entry will merge in
  bool operator<(const QueueEntry& o) const {  // top = highest count, then smallest pair
    return count != o.count ? count < o.count : pair > o.pair;
  }
};

BpeTokenizer train_from_counts(const WordCounts& word_counts, const BpeTrainOptions& opt) {
  // Initial vocabulary: specials, then the 256 byte symbols in character order.
  std::vector<std::string> id_to_token;
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<AddedToken> added;
  for (const auto& s : opt.special_tokens) {
    if (vocab.count(s)) continue;
    vocab[s] = int32_t(id_to_token.size());
    added.push_back({int32_t(id_to_token.size()), s, true, false, false, false, false});
    id_to_token.push_back(s);
  }
  const auto& b2u = byte_to_unicode();
  std::vector<int> bytes_by_char(256);
  for (int b = 0; b < 256; b++) bytes_by_char[b] = b;
  std::sort(bytes_by_char.begin(), bytes_by_char.end(), [&](int x, int y) {
    size_t p = 0, q = 0;
    uint32_t cx = 0, cy = 0;
    utf8::next(b2u[x], p, cx);
    utf8::next(b2u[y], q, cy);
    return cx < cy;
  });
  std::array<int32_t, 256> byte_id{};
  for (int b : bytes_by_char) {
    auto [it, inserted] = vocab.emplace(b2u[b], int32_t(id_to_token.size()));
    if (inserted) id_to_token.push_back(b2u[b]);
    byte_id[b] = it->second;
  }
  check(opt.vocab_size >= int(id_to_token.size()),
        "vocab size " + std::to_string(opt.vocab_size) + " is too small: byte-level BPE needs " +
            std::to_string(id_to_token.size()) + " (256 byte tokens + " + std::to_string(added.size()) +
            " special tokens) before any merge");

  // Words as symbol ids, with their counts.
  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> counts;
  words.reserve(word_counts.size());
  for (const auto& [w, c] : word_counts) {
    std::vector<int32_t> syms(w.size());
    for (size_t i = 0; i < w.size(); i++) syms[i] = byte_id[static_cast<unsigned char>(w[i])];
    words.push_back(std::move(syms));
    counts.push_back(c);
  }

  // Pair counts, and lists of the words where a pair occurs. As in HF, each queue
  // entry owns the list of words it was queued for; a stale entry is re-queued
  // with its list. (A pair is queued again only if a merge recreates an existing
  // token, and then each entry covers its own words.)
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> first_words;
  for (size_t w = 0; w < words.size(); w++) {
    for (size_t i = 0; i + 1 < words[w].size(); i++) {
      uint64_t p = pair_key(words[w][i], words[w][i + 1]);
      pair_count[p] += counts[w];
      auto& list = first_words[p];
      if (list.empty() || list.back() != int32_t(w)) list.push_back(int32_t(w));
    }
  }
  std::vector<std::vector<int32_t>> word_lists;
  std::priority_queue<QueueEntry> queue;
  for (auto& [p, list] : first_words) {
    word_lists.push_back(std::move(list));
    if (pair_count[p] > 0) queue.push({pair_count[p], p, int32_t(word_lists.size() - 1)});
  }
  first_words.clear();

  std::vector<BpeTokenizer::Merge> merges;
  int wanted = opt.vocab_size - int(id_to_token.size());
  std::vector<std::pair<uint64_t, int32_t>> changes;  // (pair, +1 / -1) of one word's merge
  std::unordered_map<uint64_t, std::vector<int32_t>> new_pair_words;
  std::vector<int32_t> out;
  while (int(id_to_token.size()) < opt.vocab_size && !queue.empty()) {
    QueueEntry top = queue.top();
    queue.pop();
    int64_t current = pair_count[top.pair];
    if (top.count != current) {  // stale: counts changed since it was queued
      top.count = current;
      queue.push(top);
      continue;
    }
    if (current < 1) break;
    int32_t a = int32_t(top.pair >> 32), b = int32_t(top.pair & 0xFFFFFFFFu);
    std::string merged = id_to_token[a] + id_to_token[b];
    auto [it, inserted] = vocab.emplace(merged, int32_t(id_to_token.size()));
    if (inserted) id_to_token.push_back(merged);
    int32_t new_id = it->second;
    merges.emplace_back(id_to_token[a], id_to_token[b]);

    // Replace a b by new_id in every word of this entry, recording how the
    // neighbouring pairs change (as HF's Word::merge does).
    new_pair_words.clear();
    for (int32_t w : word_lists[top.words]) {
      auto& syms = words[w];
      changes.clear();
      out.clear();
      for (size_t i = 0; i < syms.size();) {
        if (i + 1 < syms.size() && syms[i] == a && syms[i + 1] == b) {
          if (!out.empty()) {
            changes.push_back({pair_key(out.back(), a), -1});
            changes.push_back({pair_key(out.back(), new_id), +1});
          }
          if (i + 2 < syms.size()) {
            changes.push_back({pair_key(b, syms[i + 2]), -1});
            changes.push_back({pair_key(new_id, syms[i + 2]), +1});
          }
          out.push_back(new_id);
          i += 2;
        } else {
          out.push_back(syms[i++]);
        }
      }
      if (changes.empty() && out.size() == syms.size()) continue;  // pair no longer in this word
      syms.assign(out.begin(), out.end());
      for (const auto& [p, delta] : changes) {
        pair_count[p] += delta * counts[w];
        if (delta > 0) {
          auto& list = new_pair_words[p];
          if (list.empty() || list.back() != w) list.push_back(w);
        }
      }
    }
    std::vector<int32_t>().swap(word_lists[top.words]);  // this entry is done
    for (auto& [p, list] : new_pair_words) {
      int64_t c = pair_count[p];
      if (c <= 0) continue;
      word_lists.push_back(std::move(list));
      queue.push({c, p, int32_t(word_lists.size() - 1)});
    }
    if (opt.on_progress && merges.size() % 1000 == 0) opt.on_progress(int(merges.size()), wanted);
  }
  if (opt.on_progress) opt.on_progress(int(merges.size()), wanted);
  return BpeTokenizer(std::move(vocab), std::move(merges), std::move(added), PreTokenizer::gpt2(false));
}

}  // namespace

BpeTokenizer train_bpe(std::string_view text, const BpeTrainOptions& options) {
  check(!text.empty(), "the training text is empty: BPE training needs some text");
  utf8::check_valid(text, "the training text");
  WordCounts counts;
  count_words_parallel(text, options.special_tokens, counts);
  return train_from_counts(counts, options);
}

BpeTokenizer train_bpe_files(const std::vector<std::string>& paths, const BpeTrainOptions& options) {
  check(!paths.empty(), "no training files given");
  WordCounts counts;
  size_t total = 0;
  for (const auto& path : paths) {
    std::string text = read_text_file(path);
    utf8::check_valid(text, path);
    total += text.size();
    count_words_parallel(text, options.special_tokens, counts);
  }
  check(total > 0, "the training files are empty: BPE training needs some text");
  return train_from_counts(counts, options);
}

}  // namespace bhasa
