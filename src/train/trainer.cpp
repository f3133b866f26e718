#include "train/trainer.h"

#include <fcntl.h>
#include <omp.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/files.h"
#include "infer/sampler.h"
#include "kernels/dropout.h"
#include "kernels/kernels.h"
#include "model/mamba.h"
#include "model/presets.h"
#include "text/bpe_train.h"
#include "text/char_tokenizer.h"
#include "train/checkpoint.h"
#include "train/corpus.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/signals.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace bhasa {

// ---- hyperparameters -----------------------------------------------------------

TrainHyper preset_hyper(const std::string& preset) {
  TrainHyper h;
  if (preset == "tiny") {
    h.batch = 16; h.seq_len = 128; h.lr = 2e-3f; h.min_lr = 2e-4f; h.warmup = 100; h.max_steps = 2000;
  } else if (preset == "seed") {
    h.batch = 16; h.seq_len = 512; h.lr = 1e-3f; h.min_lr = 1e-4f; h.warmup = 200; h.max_steps = 5000;
  } else if (preset == "char10m") {  // nanoGPT's shakespeare_char recipe
    h.batch = 64; h.seq_len = 256; h.lr = 1e-3f; h.min_lr = 1e-4f; h.warmup = 100; h.max_steps = 5000;
    h.beta2 = 0.99f; h.eval_every = 250;
  } else if (preset == "m130") {
    h.batch = 8; h.seq_len = 512; h.lr = 6e-4f; h.min_lr = 6e-5f; h.warmup = 500; h.max_steps = 20000;
  } else {
    preset_config(preset, 1);  // throws the list of presets
  }
  return h;
}

void TrainHyper::validate() const {
  auto positive = [](double v, const char* name) {
    check(v > 0, std::string("--") + name + " must be positive, got " + std::to_string(v));
  };
  positive(batch, "batch");
  positive(seq_len, "seq-len");
  positive(lr, "lr");
  positive(grad_accum, "grad-accum");
  positive(save_every, "save-every");
  positive(eval_batches, "eval-batches");
  positive(log_every, "log-every");
  check(max_steps > 0 || epochs > 0, "give --max-steps N or --epochs E (both are 0)");
  check(min_lr >= 0 && min_lr <= lr, "--min-lr must be in [0, lr]");
  check(warmup >= 0, "--warmup must be >= 0");
  check(weight_decay >= 0, "--weight-decay must be >= 0");
  check(grad_clip >= 0, "--grad-clip must be >= 0 (0 turns clipping off)");
  check(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, "beta1 and beta2 must be in [0, 1)");
  check(eval_every >= 0 && sample_every_epochs >= 0 && keep_epochs >= 0 && sample_tokens >= 0,
        "--eval-every, --sample-every-epochs, --keep-epochs and sample_tokens must be >= 0");
  check(dropout >= 0 && dropout < 1, "--dropout must be in [0, 1)");
  check(val_fraction >= 0 && val_fraction < 1, "--val-fraction must be in [0, 1)");
}

namespace {

template <class T>
void set_number(const json& v, const std::string& key, const std::string& source, T& out) {
  if constexpr (std::is_integral_v<T>) {
    check(v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()),
          source + ": '" + key + "' must be an integer, got " + v.dump());
    out = static_cast<T>(v.get<double>());
  } else {
    check(v.is_number(), source + ": '" + key + "' must be a number, got " + v.dump());
    out = static_cast<T>(v.get<double>());
  }
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

std::string hex64(uint64_t x) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(x));
  return buf;
}

}  // namespace

void apply_train_overrides(const json& keys, const std::string& source, ModelConfig& cfg, TrainHyper& h) {
  check(keys.is_object(), source + ": expected a JSON object of settings");
  std::map<std::string, std::function<void(const json&, const std::string&)>> setters;
  auto num = [&](std::initializer_list<const char*> names, auto& field) {
    for (const char* n : names)
      setters[n] = [&field, &source](const json& v, const std::string& k) { set_number(v, k, source, field); };
  };
  // Model shape (either key set of config.json).
  num({"d_model", "hidden_size"}, cfg.d_model);
  num({"n_layer", "num_hidden_layers"}, cfg.n_layer);
  num({"d_state", "state_size"}, cfg.d_state);
  num({"d_conv", "conv_kernel"}, cfg.d_conv);
  num({"expand"}, cfg.expand);
  num({"dt_rank", "time_step_rank"}, cfg.dt_rank);
  num({"d_intermediate"}, cfg.d_intermediate);
  num({"norm_eps", "norm_epsilon", "layer_norm_epsilon"}, cfg.norm_eps);
  num({"pad_vocab_size_multiple"}, cfg.pad_vocab_size_multiple);
  setters["rms_norm"] = [&](const json& v, const std::string& k) {
    check(v.is_boolean(), source + ": '" + k + "' must be true or false");
    cfg.rms_norm = v.get<bool>();
  };
  // Training.
  num({"batch", "batch_size"}, h.batch);
  num({"seq_len", "max_seq_len", "block_size"}, h.seq_len);
  num({"max_steps"}, h.max_steps);
  num({"epochs"}, h.epochs);
  num({"lr", "learning_rate"}, h.lr);
  num({"min_lr"}, h.min_lr);
  num({"warmup", "warmup_steps"}, h.warmup);
  num({"weight_decay"}, h.weight_decay);
  num({"grad_clip"}, h.grad_clip);
  num({"beta1"}, h.beta1);
  num({"beta2"}, h.beta2);
  num({"grad_accum"}, h.grad_accum);
  num({"dropout"}, h.dropout);
  num({"save_every"}, h.save_every);
  num({"eval_every"}, h.eval_every);
  num({"eval_batches"}, h.eval_batches);
  num({"sample_every_epochs"}, h.sample_every_epochs);
  num({"sample_tokens"}, h.sample_tokens);
  num({"keep_epochs"}, h.keep_epochs);
  num({"seed"}, h.seed);
  num({"val_fraction"}, h.val_fraction);
  num({"log_every"}, h.log_every);
  for (const auto& [key, value] : keys.items()) {
    auto it = setters.find(key);
    if (it == setters.end()) {
      std::string known;
      for (const auto& [k, _] : setters) known += (known.empty() ? "" : ", ") + k;
      throw Error(source + ": unknown setting '" + key + "'; known settings: " + known);
    }
    if (!value.is_null()) it->second(value, key);
  }
  // Asking for epochs means "not the preset's step count".
  if (keys.contains("epochs") && !keys.contains("max_steps")) h.max_steps = 0;
}

// ---- data ------------------------------------------------------------------------

namespace {

// Random training windows: each sequence is tokens[s, s+L) with targets tokens[s+1, s+L+1),
// s uniform over every valid start. The RNG is the whole data position.
struct WindowSampler {
  const std::vector<int32_t>& tokens;
  std::mt19937_64 rng;
  void draw(int B, int L, int32_t* ids, int32_t* targets) {  // ids, targets: (B, L)
    const uint64_t starts = tokens.size() - static_cast<size_t>(L);  // s in [0, n - L - 1]
    for (int b = 0; b < B; ++b) {
      const size_t s = static_cast<size_t>(rng() % starts);
      for (int t = 0; t < L; ++t) {
        ids[b * L + t] = tokens[s + t];
        targets[b * L + t] = tokens[s + t + 1];
      }
    }
  }
};

// Mean loss over n_batches fixed, evenly spaced windows of the validation tokens (the
// same windows every time, so successive values are comparable).
double evaluate(MambaLM& model, const std::vector<int32_t>& val, int B, int L, int n_batches,
                std::vector<int32_t>& ids, std::vector<int32_t>& targets) {
  const size_t n_windows = static_cast<size_t>(n_batches) * B;
  const size_t max_start = val.size() - static_cast<size_t>(L) - 1;
  double total = 0;
  for (int k = 0; k < n_batches; ++k) {
    for (int b = 0; b < B; ++b) {
      const size_t i = static_cast<size_t>(k) * B + b;
      const size_t s = n_windows > 1 ? max_start * i / (n_windows - 1) : 0;
      for (int t = 0; t < L; ++t) {
        ids[b * L + t] = val[s + t];
        targets[b * L + t] = val[s + t + 1];
      }
    }
    total += model.forward(ids.data(), targets.data(), false);
  }
  return total / n_batches;
}

// A short continuation from the model, for a look at what it has learnt.
std::string generate_sample(MambaLM& model, const Tokenizer& tok, int32_t first, int n_tokens, uint64_t seed) {
  SamplerOptions so;
  so.temperature = 0.8f;
  so.top_k = 0;
  so.top_p = 1.0f;
  so.seed = seed;
  Sampler sampler(so, tok.vocab_size());
  const int V = model.config().vocab_size;
  std::vector<float> logits(V);  // (V)
  DecodeState st = model.new_state(1);
  std::vector<int32_t> ids{first};
  model.prefill(st, ids.data(), 1, logits.data());
  for (int i = 0; i < n_tokens; ++i) {
    int32_t next = sampler.sample(logits.data(), ids);
    ids.push_back(next);
    model.step(st, &next, logits.data());
  }
  model.free_state(st);
  return tok.decode(ids);
}

// "bpe:N" trains a byte-level BPE of N tokens on the corpus once and keeps it as
// <run dir>/tokenizer.json; a rerun before the first checkpoint loads that file
// instead of training again (checkpoints carry their own copy for resuming).
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec, const std::string& text,
                                          const std::string& run_dir) {
  if (spec == "char") return std::make_unique<CharTokenizer>(CharTokenizer::from_corpus(text));
  std::error_code ec;
  if (spec.rfind("bpe:", 0) == 0) {
    int n = 0;
    try {
      size_t used = 0;
      n = std::stoi(spec.substr(4), &used);
      if (used != spec.size() - 4) n = 0;
    } catch (const std::exception&) {
    }
    check(n > 0, "--tokenizer " + spec + ": expected bpe:N with N the vocabulary size, e.g. bpe:4096");
    const std::string saved = run_dir + "/tokenizer.json";
    if (fs::exists(saved, ec)) {
      auto tok = load_tokenizer(saved);
      if (tok->kind() == "bpe" && tok->vocab_size() == n) {
        std::printf("tokenizer: reusing %s (byte-level BPE, %d tokens)\n", saved.c_str(), tok->vocab_size());
        return tok;
      }
    }
    std::printf("tokenizer: training a byte-level BPE with %d tokens on %zu bytes\n", n, text.size());
    std::fflush(stdout);
    BpeTrainOptions bo;
    bo.vocab_size = n;
    auto tok = std::make_unique<BpeTokenizer>(train_bpe(text, bo));
    tok->save(saved);
    return tok;
  }
  check(fs::exists(spec, ec), "--tokenizer " + spec + ": expected char, bpe:N or a tokenizer.json path");
  return load_tokenizer(spec);
}

// Which model fields differ, for the refusal to resume with another config.
std::string config_diff(const ModelConfig& a, const ModelConfig& b) {
  std::string d;
  auto f = [&](const char* name, double x, double y) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%s%s %g -> %g", d.empty() ? "" : ", ", name, x, y);
    if (x != y) d += buf;
  };
  f("d_model", a.d_model, b.d_model);
  f("n_layer", a.n_layer, b.n_layer);
  f("vocab_size", a.vocab_size, b.vocab_size);
  f("d_state", a.d_state, b.d_state);
  f("d_conv", a.d_conv, b.d_conv);
  f("expand", a.expand, b.expand);
  f("dt_rank", a.dt_rank, b.dt_rank);
  f("d_intermediate", a.d_intermediate, b.d_intermediate);
  f("rms_norm", a.rms_norm, b.rms_norm);
  f("norm_eps", a.norm_eps, b.norm_eps);
  f("use_conv_bias", a.use_conv_bias, b.use_conv_bias);
  return d;
}

std::string format_duration(double s) {
  char buf[32];
  if (s < 0 || !std::isfinite(s)) return "?";
  const long t = std::lround(s);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  return buf;
}

}  // namespace

// ---- the training loop -------------------------------------------------------------

int train(const TrainOptions& opts) {
  using clock = std::chrono::steady_clock;
  if (opts.threads > 0) omp_set_num_threads(opts.threads);

  // Settings: preset, then --config FILE.json, then command-line flags.
  TrainHyper h = preset_hyper(opts.preset);
  ModelConfig cfg = preset_config(opts.preset, 1);
  if (!opts.config_path.empty()) {
    json j;
    try {
      j = json::parse(read_text_file(opts.config_path));
    } catch (const json::exception& e) {
      throw Error(opts.config_path + ": not valid JSON (" + e.what() + ")");
    }
    apply_train_overrides(j, opts.config_path, cfg, h);
  }
  apply_train_overrides(opts.overrides, "command line", cfg, h);
  if (cfg.dt_rank <= 0) cfg.dt_rank = (cfg.d_model + 15) / 16;
  h.validate();

  const std::string out = opts.out.empty() ? "runs/" + opts.preset : opts.out;
  const std::string ckpt_dir = out + "/checkpoints";
  const std::string latest = ckpt_dir + "/latest";
  std::error_code ec;
  fs::create_directories(out, ec);
  check(!ec, "cannot create the run directory " + out + ": " + ec.message());
  // One trainer per run directory: a second one would fight over the checkpoints.
  const int lock_fd = ::open((out + "/.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  check(lock_fd >= 0, "cannot create " + out + "/.lock: " + std::strerror(errno));
  if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0)
    throw Error("another `bhasa train` is already running in " + out + "; wait for it or use another --out");
  recover_checkpoint_dirs(ckpt_dir);
  if (opts.restart) {
    fs::remove_all(ckpt_dir, ec);
    fs::remove_all(out + "/final", ec);
    fs::remove(out + "/tokenizer.json", ec);  // bpe:N trains afresh
  }
  const bool resume = fs::exists(latest, ec);

  // Data and tokenizer (a resumed run keeps the checkpoint's tokenizer).
  Corpus corpus = load_training_text(opts.data);
  const std::string data_hash = hex64(fnv1a(corpus.text)) + "-" + std::to_string(corpus.text.size());
  Checkpoint ck;
  std::unique_ptr<Tokenizer> tok;
  if (resume) {
    ck = load_checkpoint(latest);
    tok = std::move(ck.tokenizer);
  } else {
    tok = make_tokenizer(opts.tokenizer, corpus.text, out);
  }
  const std::vector<int32_t> tokens = tok->encode(corpus.text);
  TokenSplit split = split_tokens(tokens, h.val_fraction);
  const int B = h.batch, L = h.seq_len;
  check(split.train.size() > static_cast<size_t>(L) + 1,
        corpus.source + ": too little text: " + std::to_string(split.train.size()) +
            " training tokens for --seq-len " + std::to_string(L) + "; use a smaller --seq-len or more text");
  const bool have_val = h.val_fraction > 0 && split.val.size() > static_cast<size_t>(L) + 1;
  if (h.val_fraction > 0 && !have_val)
    std::fprintf(stderr, "warning: the validation split (%zu tokens) is shorter than --seq-len %d; "
                 "no validation loss will be reported\n", split.val.size(), L);
  // Characters per token, for bits per character.
  double val_chars = 0;
  if (have_val) {
    const std::string val_text = tok->decode(split.val);
    for (unsigned char c : val_text) val_chars += (c & 0xC0) != 0x80;
  }

  cfg.vocab_size = padded_vocab(tok->vocab_size(), cfg.pad_vocab_size_multiple);
  cfg.validate();
  if (resume) {
    const std::string diff = config_diff(ck.model.cfg, cfg);
    if (!diff.empty() || ck.state.config_hash != cfg.layout_hash())
      throw Error(latest + " was trained with a different model config (" + (diff.empty() ? "layout" : diff) +
                  "); run the original command to resume it, or add --restart to start over "
                  "(this deletes " + ckpt_dir + ")");
    if (ck.state.data_hash != data_hash)
      throw Error(latest + " was trained on different text than " + corpus.source +
                  "; resume with the original --data, or add --restart to start over (this deletes " + ckpt_dir + ")");
  }

  const int64_t tokens_per_step = static_cast<int64_t>(B) * L * h.grad_accum;
  const int64_t steps_per_epoch = std::max<int64_t>(1, static_cast<int64_t>(split.train.size()) / tokens_per_step);
  const int64_t total_steps =
      h.max_steps > 0 ? h.max_steps : std::max<int64_t>(1, std::llround(h.epochs * steps_per_epoch));
  LrSchedule sched{h.lr, h.min_lr, h.warmup, static_cast<int>(total_steps)};

  auto backend = make_backend(device_spec(opts.device, opts.precision));
  MambaLM model(cfg, *backend);
  AdamWOptions ao;
  ao.beta1 = h.beta1;
  ao.beta2 = h.beta2;
  ao.weight_decay = h.weight_decay;
  ao.grad_clip = h.grad_clip;
  AdamW opt(model, ao);
  WindowSampler windows{split.train, std::mt19937_64(h.seed)};
  TrainerState st;
  st.steps_per_epoch = steps_per_epoch;
  st.config_hash = cfg.layout_hash();
  st.data_hash = data_hash;
  if (resume) {
    model.load_params(ck.model.params.data());
    opt.load_state(ck.m, ck.v);
    std::istringstream rs(ck.state.rng);
    rs >> windows.rng;
    check(!rs.fail(), latest + "/trainer_state.json: damaged RNG state; start over with --restart");
    st.step = ck.state.step;
    st.epoch = ck.state.epoch;
    st.tokens_seen = ck.state.tokens_seen;
    st.best_val_loss = ck.state.best_val_loss;
    ck = Checkpoint{};  // free the host copies
  } else {
    model.init_params(h.seed);
  }
  model.plan(B, L);

  const bool tty = ::isatty(STDOUT_FILENO);
  std::printf("%s %s: %s, %zu parameters, %s; data %s: %zu train / %zu val tokens, vocab %d; "
              "batch %d x %d x %d, %lld steps (%lld per epoch)\n",
              resume ? "resuming" : "training", out.c_str(), opts.preset.c_str(), model.num_params(),
              backend->name().c_str(), corpus.source.c_str(), split.train.size(), split.val.size(),
              tok->vocab_size(), B, L, h.grad_accum, static_cast<long long>(total_steps),
              static_cast<long long>(steps_per_epoch));
  if (resume) std::printf("resumed from %s at step %lld\n", latest.c_str(), static_cast<long long>(st.step));
  std::fflush(stdout);

  MetricsLog metrics(out + "/metrics.jsonl", resume ? st.step : 0);
  const std::string svg_path = out + "/loss.svg";
  auto save_latest = [&](const std::string& dest) {
    std::vector<float> params(model.num_params()), m, v;
    model.store_params(params.data());
    opt.store_state(m, v);
    std::ostringstream rs;
    rs << windows.rng;
    st.rng = rs.str();
    st.lr = sched.lr;
    st.min_lr = sched.min_lr;
    st.warmup_steps = sched.warmup_steps;
    st.total_steps = sched.total_steps;
    save_checkpoint(dest, cfg, params.data(), *tok, m, v, &st);
  };
  int32_t sample_start = split.train[0];
  try {
    sample_start = tok->encode("\n").at(0);
  } catch (const std::exception&) {
  }

  std::vector<int32_t> ids(static_cast<size_t>(B) * L), targets(ids.size());  // (B, L)
  install_stop_handlers();
  int64_t last_saved = resume ? st.step : -1;
  auto t_last = clock::now();
  int64_t steps_since = 0;
  double step_seconds = 0;  // moving average, for the ETA
  auto clear_line = [&] {
    if (tty) std::printf("\r\033[K");
  };

  bool ran_steps = false;
  const auto t_start = clock::now();
  const double seconds_before = st.train_seconds;
  auto out_of_time = [&] {
    return opts.max_minutes > 0 &&
           std::chrono::duration<double>(clock::now() - t_start).count() >= opts.max_minutes * 60;
  };
  while (st.step < total_steps && !stop_requested() && !out_of_time()) {
    ran_steps = true;
    const auto t0 = clock::now();
    model.zero_grads();
    double loss = 0;
    for (int a = 0; a < h.grad_accum; ++a) {
      windows.draw(B, L, ids.data(), targets.data());
      // The masks depend only on (run seed, step, micro-batch), so a resumed run drops
      // exactly what the uninterrupted one would have.
      if (h.dropout > 0) model.set_dropout(h.dropout, dropout_seed(h.seed, uint64_t(st.step), uint64_t(a)));
      loss += model.forward(ids.data(), targets.data(), true);
      model.backward();
    }
    loss /= h.grad_accum;
    check(std::isfinite(loss), "the loss became " + std::to_string(loss) + " at step " + std::to_string(st.step + 1) +
                                   "; the run diverged: restart with a lower --lr (--restart)");
    const float lr = sched.at(static_cast<int>(st.step));
    const double grad_norm = opt.step(lr, static_cast<int>(st.step + 1), 1.0f / h.grad_accum);
    st.step += 1;
    st.tokens_seen += tokens_per_step;
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    step_seconds = step_seconds == 0 ? dt : 0.9 * step_seconds + 0.1 * dt;
    const double tokens_per_s = tokens_per_step / dt;

    nlohmann::ordered_json line;
    line["step"] = st.step;
    line["epoch"] = static_cast<double>(st.step) / steps_per_epoch;
    line["loss"] = loss;
    line["lr"] = lr;
    line["tokens_per_s"] = std::round(tokens_per_s);
    line["grad_norm"] = grad_norm;
    const bool eval_now = have_val && ((h.eval_every > 0 && st.step % h.eval_every == 0) || st.step == total_steps);
    double val_loss = 0;
    if (eval_now) {
      val_loss = evaluate(model, split.val, B, L, h.eval_batches, ids, targets);
      const double bpc = val_loss / std::log(2.0) * (static_cast<double>(split.val.size()) / val_chars);
      line["val_loss"] = val_loss;
      line["bpc"] = bpc;
      if (st.best_val_loss == 0 || val_loss < st.best_val_loss) st.best_val_loss = val_loss;
    }
    st.train_seconds = seconds_before + std::chrono::duration<double>(clock::now() - t_start).count();
    line["time_s"] = std::round(st.train_seconds * 10) / 10;
    metrics.write(line);

    // Feedback: a live line on a terminal, plain lines otherwise.
    ++steps_since;
    const double eta = step_seconds * static_cast<double>(total_steps - st.step);
    if (tty) {
      // Redrawn at most ~10 times a second, with the smoothed rate.
      if (std::chrono::duration<double>(clock::now() - t_last).count() > 0.1 || st.step == total_steps) {
        std::printf("\r\033[Kstep %lld/%lld  epoch %.2f  loss %.4f  lr %.2e  %.0f tok/s  ETA %s",
                    static_cast<long long>(st.step), static_cast<long long>(total_steps),
                    static_cast<double>(st.step) / steps_per_epoch, loss, lr, tokens_per_step / step_seconds,
                    format_duration(eta).c_str());
        std::fflush(stdout);
        t_last = clock::now();
      }
    } else if (st.step % h.log_every == 0 || st.step == total_steps || st.step == 1) {
      const double el = std::chrono::duration<double>(clock::now() - t_last).count();
      std::printf("step %lld/%lld epoch %.2f loss %.4f lr %.2e tok/s %.0f grad_norm %.3f eta %s\n",
                  static_cast<long long>(st.step), static_cast<long long>(total_steps),
                  static_cast<double>(st.step) / steps_per_epoch, loss, lr,
                  steps_since * tokens_per_step / std::max(el, 1e-9), grad_norm, format_duration(eta).c_str());
      std::fflush(stdout);
      t_last = clock::now();
      steps_since = 0;
    }
    if (eval_now) {
      clear_line();
      std::printf("step %lld: val_loss %.4f (bpc %.3f)\n", static_cast<long long>(st.step), val_loss,
                  line["bpc"].get<double>());
      std::fflush(stdout);
    }

    // Epoch boundary: sample, then epoch-N (before latest, so a crash in between
    // redoes the epoch checkpoint on resume).
    if (st.step % steps_per_epoch == 0) {
      st.epoch = st.step / steps_per_epoch;
      if (h.sample_every_epochs > 0 && st.epoch % h.sample_every_epochs == 0 && h.sample_tokens > 0) {
        clear_line();
        std::printf("--- sample after epoch %lld ---\n%s\n---\n", static_cast<long long>(st.epoch),
                    generate_sample(model, *tok, sample_start, h.sample_tokens, h.seed + st.step).c_str());
        std::fflush(stdout);
      }
      if (h.keep_epochs > 0) {
        save_latest(ckpt_dir + "/epoch-" + std::to_string(st.epoch));
        prune_epoch_dirs(ckpt_dir, h.keep_epochs);
      }
    }
    if (st.step % h.save_every == 0) {
      save_latest(latest);
      last_saved = st.step;
    }
  }

  if (stop_requested() && st.step < total_steps) {
    if (last_saved != st.step) save_latest(latest);
    write_loss_svg(svg_path, read_loss_curves(metrics.path()), "bhasa train: " + out);
    clear_line();
    std::printf("stopped at step %lld of %lld; the checkpoint is in %s\nto resume, run the same command again:\n  %s\n",
                static_cast<long long>(st.step), static_cast<long long>(total_steps), latest.c_str(),
                opts.command_line.empty() ? "bhasa train ..." : opts.command_line.c_str());
    std::fflush(stdout);
    // The handlers stay until the process exits, so a second Ctrl+C arriving now
    // still gets the "second interrupt" exit rather than the default action.
    return 0;
  }

  // Finished (or already finished when resumed): latest, final/ and the loss curve.
  if (last_saved != st.step) save_latest(latest);
  {
    std::vector<float> params(model.num_params());
    model.store_params(params.data());
    save_checkpoint(out + "/final", cfg, params.data(), *tok, {}, {}, nullptr);
  }
  write_loss_svg(svg_path, read_loss_curves(metrics.path()), "bhasa train: " + out);
  clear_line();
  if (resume && !ran_steps)
    std::printf("the run had already finished (step %lld of %lld); add --restart to train again, "
                "or a larger --max-steps to continue\n", static_cast<long long>(st.step),
                static_cast<long long>(total_steps));
  if (h.sample_tokens > 0) {
    std::printf("--- sample ---\n%s\n---\n",
                generate_sample(model, *tok, sample_start, h.sample_tokens, h.seed + st.step).c_str());
  }
  std::printf("done: %lld steps; model in %s/final, metrics in %s, loss curve in %s\n",
              static_cast<long long>(st.step), out.c_str(), metrics.path().c_str(), svg_path.c_str());
  if (st.best_val_loss > 0) std::printf("best val_loss %.4f\n", st.best_val_loss);
  std::fflush(stdout);
  remove_stop_handlers();
  return 0;
}

}  // namespace bhasa
