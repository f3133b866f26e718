// Held-out evaluation: mean cross-entropy of next-token prediction over a text, and
// what it means per character (char tokenizer) or per byte (byte-level BPE).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "model/mamba.h"
#include "text/tokenizer.h"

namespace bhasa {

struct EvalResult {
  int64_t tokens = 0;         // predicted tokens (every token of the text but the first)
  double total_nats = 0.0;    // sum of -log p(token) over them
  int64_t units = 0;          // characters (char tokenizer) or UTF-8 bytes (BPE) predicted
  std::string unit;           // "char" or "byte"
  double loss = 0.0;          // total_nats / tokens
  double perplexity = 0.0;    // exp(loss)
  double bits_per_unit = 0.0; // total_nats / units / ln 2
  double seconds = 0.0;
};

// The text is cut into windows of seq_len predictions, run batch windows at a time;
// each window starts from a zero state (as in training). max_tokens > 0 uses only the
// first max_tokens tokens. Throws Error when the text has fewer than 2 tokens.
EvalResult evaluate_text(MambaLM& model, const Tokenizer& tok, std::string_view text, int seq_len,
                         int batch, int64_t max_tokens = 0);

// The same over token ids; returns {total nats, predicted tokens}.
std::pair<double, int64_t> evaluate_ids(MambaLM& model, std::span<const int32_t> ids, int seq_len,
                                        int batch);

}  // namespace bhasa
