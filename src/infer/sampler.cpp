#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "core/error.h"

namespace bhasa {

void SamplerOptions::validate() const {
  check(std::isfinite(temperature) && temperature >= 0.0f,
        "--temperature must be >= 0 (0 is greedy), got " + std::to_string(temperature));
  check(top_k >= 0, "--top-k must be >= 0 (0 keeps every token), got " + std::to_string(top_k));
  check(std::isfinite(top_p) && top_p > 0.0f && top_p <= 1.0f,
        "--top-p must be in (0, 1] (1 keeps every token), got " + std::to_string(top_p));
  check(std::isfinite(repeat_penalty) && repeat_penalty > 0.0f,
        "--repeat-penalty must be > 0 (1 is off), got " + std::to_string(repeat_penalty));
  check(repeat_last_n >= 0,
        "--repeat-last-n must be >= 0 (0 is all tokens), got " + std::to_string(repeat_last_n));
}

// splitmix64 seeding, so nearby seeds give unrelated streams and seed 0 is fine.
static uint64_t mix_seed(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

Sampler::Sampler(const SamplerOptions& opts, int vocab)
    : opts_(opts), vocab_(vocab), rng_(mix_seed(opts.seed)), order_(vocab), probs_(vocab),
      seen_(vocab, 0) {
  opts_.validate();
  check(vocab > 0, "sampler: the vocabulary is empty");
}

void Sampler::set_temperature(float t) {
  SamplerOptions o = opts_;
  o.temperature = t;
  o.validate();
  opts_ = o;
}

// splitmix64 step: the RNG's whole state is rng_.
double Sampler::uniform() {
  rng_ += 0x9E3779B97F4A7C15ull;
  uint64_t z = rng_;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53;
}

void Sampler::apply_repeat_penalty(float* logits, std::span<const int32_t> recent) {
  const float p = opts_.repeat_penalty;
  for (int32_t t : recent) {
    if (t < 0 || t >= vocab_ || seen_[t]) continue;
    seen_[t] = 1;
    logits[t] = logits[t] > 0.0f ? logits[t] / p : logits[t] * p;
  }
  for (int32_t t : recent)
    if (t >= 0 && t < vocab_) seen_[t] = 0;
}

int32_t Sampler::sample(float* logits, std::span<const int32_t> history) {
  if (opts_.repeat_penalty != 1.0f) {
    size_t n = history.size();
    if (opts_.repeat_last_n > 0 && n > size_t(opts_.repeat_last_n)) n = opts_.repeat_last_n;
    apply_repeat_penalty(logits, history.subspan(history.size() - n));
  }
  if (opts_.temperature == 0.0f)  // greedy: the first maximum, as torch.argmax
    return int32_t(std::max_element(logits, logits + vocab_) - logits);

  // Candidates, most likely first: top-k keeps k of them, a full sort only when needed.
  for (int i = 0; i < vocab_; ++i) order_[i] = i;
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  int n = vocab_;
  if (opts_.top_k > 0 && opts_.top_k < n) n = opts_.top_k;
  if (n < vocab_ || opts_.top_p < 1.0f)
    std::partial_sort(order_.begin(), order_.begin() + n, order_.end(), by_logit);

  // softmax(logits / T) over the candidates, in double for the running sums.
  const float inv_t = 1.0f / opts_.temperature;
  float max_logit = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) max_logit = std::max(max_logit, logits[order_[i]]);
  double total = 0.0;
  for (int i = 0; i < n; ++i) {
    probs_[i] = std::exp((logits[order_[i]] - max_logit) * inv_t);
    total += probs_[i];
  }
  // top-p: the smallest prefix (of the sorted candidates) whose mass reaches top_p.
  if (opts_.top_p < 1.0f) {
    double mass = 0.0;
    for (int i = 0; i < n; ++i) {
      mass += probs_[i] / total;
      if (mass >= opts_.top_p) {
        n = i + 1;
        break;
      }
    }
    total = 0.0;
    for (int i = 0; i < n; ++i) total += probs_[i];
  }
  double r = uniform() * total;
  for (int i = 0; i < n; ++i) {
    r -= probs_[i];
    if (r < 0.0) return order_[i];
  }
  return order_[n - 1];  // rounding left a sliver of mass
}

}  // namespace bhasa
