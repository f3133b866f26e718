// Picks the next token from a row of logits: greedy, temperature, top-k, top-p and a
// repetition penalty over the recent tokens, with a seeded RNG whose whole state is
// one integer (so a saved chat resumes the exact same random stream).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace bhasa {

struct SamplerOptions {
  float temperature = 0.8f;     // 0: greedy (argmax)
  int top_k = 40;               // keep the k most likely tokens; 0: all
  float top_p = 0.95f;          // keep the smallest set whose probability reaches p; 1: all
  float repeat_penalty = 1.0f;  // > 1 discourages tokens seen in the last repeat_last_n; 1: off
  int repeat_last_n = 64;       // window of the penalty; 0: every token seen so far
  uint64_t seed = 0;

  // Throws Error naming the bad option and its valid range.
  void validate() const;
};

class Sampler {
 public:
  // vocab: how many leading logits may be chosen (the tokenizer's vocabulary; the
  // model's rows past it are padding and are never sampled).
  Sampler(const SamplerOptions& opts, int vocab);

  const SamplerOptions& options() const { return opts_; }
  void set_temperature(float t);  // validated
  int vocab() const { return vocab_; }

  // Chooses a token from logits (>= vocab floats; modified in place by the penalty
  // and temperature). history: the tokens seen so far, oldest first.
  int32_t sample(float* logits, std::span<const int32_t> history);

  // The RNG state, so it can be saved and restored with a decode state.
  uint64_t rng_state() const { return rng_; }
  void set_rng_state(uint64_t s) { rng_ = s; }

 private:
  double uniform();  // [0, 1)
  // HF/llama.cpp: logit / p when positive, logit * p otherwise, once per distinct token.
  void apply_repeat_penalty(float* logits, std::span<const int32_t> recent);

  SamplerOptions opts_;
  int vocab_;
  uint64_t rng_;
  std::vector<int32_t> order_;  // (vocab) candidate ids, reused for every token
  std::vector<float> probs_;    // (vocab)
  std::vector<uint8_t> seen_;   // (vocab) marks for the penalty's distinct tokens
};

}  // namespace bhasa
