// Training text: a file, a directory of .txt files, the default corpus (the King
// James Bible from Debian's bible-kjv, available offline after setup) or
// tinyshakespeare (downloaded once, then cached). Every corpus is checked to be
// non-empty UTF-8 text before a single token is made from it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bhasa {

struct Corpus {
  std::string text;    // the whole corpus, valid UTF-8
  std::string source;  // what it came from, for messages ("data/a.txt", "bible-kjv (cached at ...)")
};

// Throws Error naming `name` and the byte offset when `bytes` is empty, contains a
// NUL byte (binary data) or is not valid UTF-8 (overlong forms and surrogates rejected).
void check_utf8_text(const std::string& bytes, const std::string& name);

// Reads a text file, or every *.txt file of a directory (sorted by name, concatenated).
// Each file is checked with check_utf8_text.
Corpus read_corpus(const std::string& path);

// What --data means: "" -> the default corpus (bible-kjv), "shakespeare" ->
// tinyshakespeare (downloaded and cached), anything else -> read_corpus(path).
Corpus load_training_text(const std::string& data);

// $XDG_CACHE_HOME/bhasa, else ~/.cache/bhasa (created when missing).
std::string cache_dir();

// The default corpus: `bible "gen1:1-rev22:21"`, cached as text in cache_dir().
Corpus default_corpus();

// tinyshakespeare from its canonical URL, or from $BHASA_SHAKESPEARE_URL when set
// (the tests point it at a server on loopback). Cached in cache_dir().
Corpus shakespeare_corpus();
extern const char* const kShakespeareUrl;

// Downloads an http:// (or, when built with OpenSSL, https://) URL into `dest`
// atomically. Throws Error saying what failed and how to work around it offline.
void download_file(const std::string& url, const std::string& dest);

// The nanoGPT split: the first (1 - val_fraction) of the tokens train, the rest validate.
struct TokenSplit {
  std::vector<int32_t> train;  // (n_train)
  std::vector<int32_t> val;    // (n_val)
};
TokenSplit split_tokens(const std::vector<int32_t>& tokens, double val_fraction);

}  // namespace bhasa
