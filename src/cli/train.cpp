// `bhasa train`: options -> TrainOptions -> bhasa::train. Every flag that is given
// overrides the preset and --config FILE.json; flags not given leave them alone.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/common.h"
#include "core/error.h"
#include "model/presets.h"
#include "train/trainer.h"

namespace bhasa::cli {

namespace {

// The command as typed, shell-quoted, so "run the same command again" can be shown.
std::string own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string out, arg;
  auto flush = [&] {
    bool plain = !arg.empty() && arg.find_first_not_of(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == std::string::npos;
    std::string q = arg;
    if (!plain) {
      q = "'";
      for (char c : arg) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
      q += "'";
    }
    out += (out.empty() ? "" : " ") + q;
    arg.clear();
  };
  for (char c : raw) {
    if (c == '\0') flush();
    else arg += c;
  }
  if (!arg.empty()) flush();
  return out;
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "train",
      "Train a Mamba model from scratch on a text corpus. Checkpoints go to OUT/checkpoints/latest; running the "
      "same command again resumes exactly where it stopped. Ctrl+C saves and exits.");
  struct Flags {
    TrainOptions opts;
    int batch = 0, seq_len = 0, warmup = 0, grad_accum = 0, eval_batches = 0, sample_every_epochs = 0,
        keep_epochs = 0;
    int64_t max_steps = 0, save_every = 0, eval_every = 0;
    double epochs = 0, lr = 0, min_lr = 0, weight_decay = 0, grad_clip = 0, dropout = 0, val_fraction = 0;
    uint64_t seed = 0;
  };
  auto f = std::make_shared<Flags>();
  TrainOptions& o = f->opts;
  // (option, the key it sets in the overrides, a function reading the parsed value)
  auto overrides = std::make_shared<std::vector<std::pair<CLI::Option*, std::function<void(nlohmann::json&)>>>>();
  auto add = [&](const std::string& flag, const char* key, auto& var, const std::string& help) {
    CLI::Option* opt = cmd->add_option(flag, var, help);
    overrides->push_back({opt, [key, &var](nlohmann::json& j) { j[key] = var; }});
    return opt;
  };

  cmd->add_option("--data", o.data,
                  "text file or directory of .txt files; 'shakespeare' downloads tinyshakespeare; "
                  "default: the King James Bible (Debian bible-kjv, offline)");
  cmd->add_option("--out", o.out, "run directory (default runs/<preset>)");
  std::string presets;
  for (const auto& p : preset_names()) presets += (presets.empty() ? "" : ", ") + p;
  cmd->add_option("--preset", o.preset, "model size and training defaults: " + presets)->capture_default_str();
  cmd->add_option("--config", o.config_path,
                  "JSON file overriding any model or training setting (d_model, n_layer, d_state, lr, batch, ...)");
  cmd->add_option("--tokenizer", o.tokenizer, "char (vocabulary from the corpus), bpe:N (train a byte-level BPE of N tokens first) or a tokenizer.json path")
      ->capture_default_str();
  cmd->add_option("--device", o.device, "cpu or cuda")->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  add_precision_option(cmd, o.precision);
  cmd->add_option("--threads", o.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--restart", o.restart, "delete the run's checkpoints and start over");
  cmd->add_option("--max-minutes", o.max_minutes, "stop after this many minutes of training and write final/")
      ->check(CLI::NonNegativeNumber);
  add("--max-steps", "max_steps", f->max_steps, "optimizer steps (default from the preset)");
  add("--epochs", "epochs", f->epochs, "train for this many epochs instead of --max-steps");
  add("--batch", "batch", f->batch, "sequences per micro-batch");
  add("--seq-len", "seq_len", f->seq_len, "tokens per sequence");
  add("--lr", "lr", f->lr, "peak learning rate");
  add("--min-lr", "min_lr", f->min_lr, "learning rate at the end of the cosine decay");
  add("--warmup", "warmup", f->warmup, "steps of linear warmup");
  add("--weight-decay", "weight_decay", f->weight_decay, "AdamW decoupled weight decay (not on A_log, D, dt bias, norms, biases)");
  add("--grad-clip", "grad_clip", f->grad_clip, "global gradient-norm clip (0: off; default 1.0)");
  add("--grad-accum", "grad_accum", f->grad_accum, "micro-batches per optimizer step");
  add("--dropout", "dropout", f->dropout, "dropout probability in [0, 1) on each mixer's and MLP's output (default 0)");
  add("--save-every", "save_every", f->save_every, "steps between checkpoints (default 100)");
  add("--eval-every", "eval_every", f->eval_every, "steps between validation losses");
  add("--eval-batches", "eval_batches", f->eval_batches, "batches per validation");
  add("--sample-every-epochs", "sample_every_epochs", f->sample_every_epochs, "print a sample every N epochs (0: never)");
  add("--keep-epochs", "keep_epochs", f->keep_epochs, "epoch-N checkpoints to keep (0: none)");
  add("--seed", "seed", f->seed, "random seed (initialisation and data order)");
  add("--val-fraction", "val_fraction", f->val_fraction, "fraction of the text held out for validation (default 0.1)");

  cmd->callback([f, overrides] {
    for (auto& [opt, set] : *overrides)
      if (opt->count() > 0) set(f->opts.overrides);
    f->opts.command_line = own_command_line();
    int rc = bhasa::train(f->opts);
    if (rc != 0) std::exit(rc);
  });
}

}  // namespace bhasa::cli
