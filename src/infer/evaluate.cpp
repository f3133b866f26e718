#include "infer/evaluate.h"

#include <algorithm>
#include <chrono>
#include <tuple>
#include <cmath>
#include <vector>

#include "core/error.h"

namespace bhasa {

std::pair<double, int64_t> evaluate_ids(MambaLM& model, std::span<const int32_t> ids, int seq_len,
                                        int batch) {
  check(seq_len > 0, "--seq-len must be > 0, got " + std::to_string(seq_len));
  check(batch > 0, "--batch must be > 0, got " + std::to_string(batch));
  const int64_t N = int64_t(ids.size());
  check(N >= 2, "the evaluation text has " + std::to_string(N) +
                    " tokens; it needs at least 2 (one to read, one to predict)");
  const int64_t n_pred = N - 1;
  const int L = int(std::min<int64_t>(seq_len, n_pred));
  const int64_t n_windows = (n_pred + L - 1) / L;
  const int B = int(std::min<int64_t>(batch, n_windows));
  if (model.planned_batch() != B || model.planned_seq_len() != L) model.plan(B, L);

  std::vector<int32_t> inputs(size_t(B) * L), targets(size_t(B) * L);  // (B, L)
  double total = 0.0;
  int64_t counted = 0;
  for (int64_t w0 = 0; w0 < n_windows; w0 += B) {
    int64_t valid = 0;
    for (int b = 0; b < B; ++b) {
      const int64_t start = (w0 + b) * L;  // window w predicts ids[start+1 .. start+L]
      for (int t = 0; t < L; ++t) {
        const int64_t i = start + t;
        const bool ok = i + 1 < N;
        inputs[size_t(b) * L + t] = ok ? ids[i] : 0;
        targets[size_t(b) * L + t] = ok ? ids[i + 1] : -1;  // padding is ignored by the loss
        valid += ok;
      }
    }
    if (valid == 0) break;
    total += model.forward(inputs.data(), targets.data(), false) * double(valid);
    counted += valid;
  }
  return {total, counted};
}

EvalResult evaluate_text(MambaLM& model, const Tokenizer& tok, std::string_view text, int seq_len,
                         int batch, int64_t max_tokens) {
  check(max_tokens >= 0, "--max-tokens must be >= 0 (0: all), got " + std::to_string(max_tokens));
  auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> ids = tok.encode(text);
  if (max_tokens > 0 && int64_t(ids.size()) > max_tokens) ids.resize(size_t(max_tokens));
  const int V = model.config().vocab_size;
  for (int32_t id : ids)
    check(id >= 0 && id < V, [&] { return "the tokenizer produced id " + std::to_string(id) +
                                 " but the model has only " + std::to_string(V) + " rows"; });

  EvalResult r;
  std::tie(r.total_nats, r.tokens) = evaluate_ids(model, ids, seq_len, batch);
  if (tok.kind() == "char") {
    r.unit = "char";
    r.units = r.tokens;  // one token per character
  } else {
    r.unit = "byte";
    for (size_t i = 1; i < ids.size(); ++i) r.units += int64_t(tok.decode_token(ids[i]).size());
  }
  r.loss = r.total_nats / double(r.tokens);
  r.perplexity = std::exp(r.loss);
  r.bits_per_unit = r.total_nats / double(std::max<int64_t>(r.units, 1)) / std::log(2.0);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace bhasa
