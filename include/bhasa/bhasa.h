// bhasa's public C++ API: load a Mamba model directory, tokenize, and generate text
// with a session that keeps the model's recurrent state (fixed size, whatever the
// length of the conversation). A thin façade over the engine in src/.
//
//   bhasa::Model model = bhasa::Model::load("runs/shakespeare/final");
//   bhasa::Session chat(model, {.temperature = 0.8f, .seed = 1});
//   chat.feed("ROMEO:\n");
//   chat.generate(200, {"\n\n"}, [](std::string_view s) { std::cout << s << std::flush; });
//   chat.save_state("romeo.state");   // later: chat.load_state("romeo.state")
//
// Errors (missing files, bad options, text outside the vocabulary, ...) are thrown as
// std::runtime_error (bhasa::Error) with a message that says what to do.
// Training has its own API (the trainer); this header covers running models.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bhasa {

// How the next token is chosen (see `bhasa generate --help` for the same options).
struct Sampling {
  float temperature = 0.8f;     // 0: greedy
  int top_k = 40;               // 0: all tokens
  float top_p = 0.95f;          // 1: all tokens
  float repeat_penalty = 1.0f;  // 1: off
  int repeat_last_n = 64;       // 0: all tokens seen
  uint64_t seed = 0;
};

// A loaded model directory: config.json, model.safetensors and (for text) tokenizer.json.
class Model {
 public:
  // device: "cpu" or "cuda"; threads > 0 sets the CPU thread count.
  static Model load(const std::string& dir, const std::string& device = "cpu", int threads = 0);

  bool has_tokenizer() const;  // false: only token ids can be used
  std::vector<int32_t> tokenize(std::string_view text) const;
  std::string detokenize(const std::vector<int32_t>& ids) const;
  int vocab_size() const;      // rows of the embedding
  size_t num_params() const;

  struct Impl;

 private:
  explicit Model(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
  friend class Session;
};

// One generation context (the generator): feed text, sample tokens, save and restore
// the state. Keeps the model alive.
class Session {
 public:
  explicit Session(const Model& model, const Sampling& sampling = {});
  ~Session();
  Session(Session&&) noexcept;
  Session& operator=(Session&&) noexcept;

  void feed(std::string_view text);              // continues the state
  void feed_ids(const std::vector<int32_t>& ids);
  int32_t next_token();                          // samples one token and feeds it
  // Samples up to max_new_tokens, streaming complete UTF-8 text to on_text; stops at
  // the first stop string (not included). Returns the text.
  std::string generate(int max_new_tokens, const std::vector<std::string>& stop = {},
                       const std::function<void(std::string_view)>& on_text = {});
  void set_temperature(float t);
  void reset();                                  // forget everything fed
  int64_t tokens_seen() const;
  void save_state(const std::string& path) const;
  void load_state(const std::string& path);      // Error if saved from another model

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bhasa
