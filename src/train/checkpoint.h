// Training checkpoints. A checkpoint is a model directory (config.json,
// model.safetensors, tokenizer.json) plus optimizer.safetensors (AdamW's m and v)
// and trainer_state.json. It is written into a temporary directory beside its
// destination, every file and the directory are fsync'd, and only then is it swapped
// into place (renameat2 RENAME_EXCHANGE with the old one, which is then deleted), so
// a crash or kill -9 at any instant leaves a complete checkpoint under the name.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/model_dir.h"
#include "text/tokenizer.h"

namespace bhasa {

// Everything besides weights and moments that the trainer needs to continue the
// exact same trajectory.
struct TrainerState {
  int64_t step = 0;             // optimizer updates done
  int64_t epoch = 0;            // completed epochs (step / steps_per_epoch)
  int64_t steps_per_epoch = 1;
  int64_t tokens_seen = 0;      // training tokens consumed (the data position)
  std::string rng;              // the window sampler's std::mt19937_64, written with <<
  float lr = 0, min_lr = 0;     // the schedule
  int64_t warmup_steps = 0, total_steps = 0;
  std::string config_hash;      // ModelConfig::layout_hash() of the model
  std::string data_hash;        // fingerprint of the training text
  double best_val_loss = 0;     // 0 when never evaluated
  double train_seconds = 0;     // wall time spent training (evaluations included), over all resumes
  nlohmann::json to_json() const;
  static TrainerState from_json(const nlohmann::json& j, const std::string& source);
};

struct Checkpoint {
  ModelFiles model;                  // config + flat parameters
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<float> m, v;           // (total) AdamW moments; empty for a plain model directory
  TrainerState state;
};

// Writes a complete checkpoint to `dest` (e.g. OUT/checkpoints/latest) crash-safely.
// m and v may be empty (then no optimizer state is written: e.g. final/).
void save_checkpoint(const std::string& dest, const ModelConfig& cfg, const float* params,
                     const Tokenizer& tokenizer, const std::vector<float>& m, const std::vector<float>& v,
                     const TrainerState* state);

// Reads a checkpoint written by save_checkpoint (with optimizer state and trainer
// state). Throws Error naming the file that is missing or damaged.
Checkpoint load_checkpoint(const std::string& dir);

// ---- directory mechanics ----------------------------------------------------
// Deletes temporary directories left by an interrupted write (".tmp-*") under
// `parent`, and puts back a checkpoint that a fallback swap left as "<name>.old".
void recover_checkpoint_dirs(const std::string& parent);
// fsyncs every regular file in `dir`, then `dir` itself.
void fsync_tree(const std::string& dir);
// Atomically replaces `dest` by the complete directory `tmp` (same parent).
void swap_dir_into_place(const std::string& tmp, const std::string& dest);
// Keeps the `keep` highest-numbered "epoch-N" directories under `parent` (keep <= 0: all).
void prune_epoch_dirs(const std::string& parent, int keep);

}  // namespace bhasa
