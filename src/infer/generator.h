// A generator is one conversation with a model: its recurrent state (fixed size,
// whatever the length of the text so far), the logits of the last token fed, the
// sampler and the recent tokens for the repetition penalty. feed() continues the
// state (the past is never reprocessed); generate() samples token by token.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "infer/sampler.h"
#include "model/mamba.h"
#include "text/tokenizer.h"

namespace bhasa {

struct GenerateOptions {
  int max_new_tokens = 256;        // >= 0
  std::vector<std::string> stop;   // generation ends at the first of these (not printed)
  void validate() const;
};

enum class StopReason { MaxTokens, StopString, EndOfText, Cancelled };
const char* stop_reason_name(StopReason r);  // "max_tokens", "stop", "eos", "cancelled"

struct Generation {
  std::vector<int32_t> ids;  // every sampled token (all of them are in the state)
  std::string text;          // what was streamed: UTF-8, up to the stop string
  StopReason reason = StopReason::MaxTokens;
};

class Generator {
 public:
  // model and tokenizer must outlive the generator; tokenizer may be null (ids only).
  Generator(MambaLM& model, const Tokenizer* tokenizer, const SamplerOptions& sampling);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  MambaLM& model() { return model_; }
  const Tokenizer* tokenizer() const { return tok_; }
  Sampler& sampler() { return sampler_; }

  // Forgets everything fed so far (zero state).
  void reset();
  // Runs ids through the model, continuing from the current state. Throws Error for
  // an empty list or an id outside the model's vocabulary.
  void feed(std::span<const int32_t> ids);
  // Encodes text with the tokenizer and feeds it. Throws Error when there is no
  // tokenizer, or the text cannot be encoded.
  void feed(std::string_view text);
  // Tokens fed so far (prompt and generated) since the last reset.
  int64_t n_past() const { return n_past_; }
  // Logits (model vocab) after the last token fed; null before the first feed.
  const float* logits() const { return n_past_ > 0 ? logits_.data() : nullptr; }

  // Samples the next token from the current logits and feeds it (one recurrent step).
  int32_t next();

  // Samples up to max_new_tokens tokens. on_text (may be empty) receives text as soon
  // as it is complete UTF-8 and cannot be the start of a stop string. cancel (may be
  // null) is checked before each token. Needs a tokenizer when stop strings are given.
  Generation generate(const GenerateOptions& opts,
                      const std::function<void(std::string_view)>& on_text = {},
                      const std::atomic<bool>* cancel = nullptr);

  // The whole conversation state in a small safetensors file: conv and SSM states, the
  // last logits, the recent tokens and the RNG. load_state checks that the file was
  // written for a model of the same layout (and batch), with an Error otherwise.
  void save_state(const std::string& path) const;
  void load_state(const std::string& path);

 private:
  MambaLM& model_;
  const Tokenizer* tok_;
  Sampler sampler_;
  DecodeState state_;
  std::vector<float> logits_;     // (V) of the last token fed
  std::vector<int32_t> history_;  // recent tokens for the repetition penalty
  int64_t n_past_ = 0;
  int32_t eos_id_ = -1;           // "<|endoftext|>" when the tokenizer has it
  void remember(int32_t id);
};

}  // namespace bhasa
