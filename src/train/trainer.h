// `bhasa train`: from a text corpus to a model directory. Draws random windows of
// seq_len tokens, runs forward/backward, clips and applies AdamW on the cosine
// schedule, evaluates, samples, and checkpoints so that no interruption (Ctrl+C,
// SIGTERM, kill -9) costs the run: the same command resumes the exact trajectory.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "model/config.h"

namespace bhasa {

// Training hyperparameters. Resolved in order: the preset's defaults, then the keys
// of --config FILE.json, then the flags given on the command line.
struct TrainHyper {
  int batch = 16;               // sequences per micro-batch
  int seq_len = 128;            // tokens per sequence
  int64_t max_steps = 0;        // optimizer updates; 0: from epochs
  double epochs = 0;            // used when max_steps is 0
  float lr = 2e-3f, min_lr = 2e-4f;
  int warmup = 100;             // steps of linear warmup
  float weight_decay = 0.1f;
  float grad_clip = 1.0f;       // global-norm clipping; 0: off
  float beta1 = 0.9f, beta2 = 0.95f;
  int grad_accum = 1;           // micro-batches per update
  float dropout = 0;            // in [0, 1): on each mixer's y and MLP's g in training forwards
  int64_t save_every = 100;     // steps between checkpoints/latest
  int64_t eval_every = 200;     // steps between validation losses; 0: only at the end
  int eval_batches = 20;        // batches of (batch, seq_len) per validation
  int sample_every_epochs = 5;  // 0: never
  int sample_tokens = 200;
  int keep_epochs = 3;          // epoch-N checkpoints kept
  uint64_t seed = 1337;
  double val_fraction = 0.1;
  int64_t log_every = 10;       // plain log lines (when not on a terminal)

  void validate() const;
};

struct TrainOptions {
  std::string data;             // "" default corpus, "shakespeare", or a file / directory
  std::string out;              // run directory; "" -> runs/<preset>
  std::string preset = "tiny";
  std::string config_path;      // --config FILE.json: model and training keys
  nlohmann::json overrides = nlohmann::json::object();  // command-line flags, same keys
  std::string tokenizer = "char";  // "char", "bpe:N" (train N tokens into <out>/tokenizer.json) or a tokenizer.json path
  std::string device = "cpu";
  std::string precision;        // CUDA GEMM math (bf16, tf32, fp32); "" for the default
  int threads = 0;              // 0: OpenMP's default
  bool restart = false;         // delete checkpoints and start over
  double max_minutes = 0;       // > 0: stop after this much training wall time in this run and write final/
  std::string command_line;     // printed after an interruption: how to resume
};

// The preset's training defaults (batch, seq_len, lr, steps, ...).
TrainHyper preset_hyper(const std::string& preset);

// Applies `keys` (model keys such as d_model / hidden_size, n_layer, d_state, ...
// and training keys such as batch, lr, max_steps, ...) to cfg and hyper. Throws
// Error naming an unknown key or a value of the wrong type.
void apply_train_overrides(const nlohmann::json& keys, const std::string& source, ModelConfig& cfg,
                           TrainHyper& hyper);

// Runs (or resumes) training. Returns the process exit status: 0 when the run
// finished or was stopped cleanly by a signal (after saving). Throws Error on bad input.
int train(const TrainOptions& opts);

}  // namespace bhasa
