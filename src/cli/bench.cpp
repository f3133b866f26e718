// bhasa bench train|decode|prefill: throughput on random weights, one JSON line each.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/common.h"
#include "infer/bench_infer.h"
#include "model/mamba.h"
#include "model/presets.h"

namespace bhasa::cli {

namespace {
struct BenchOptions {
  std::string preset = "seed";
  int batch = 4, seq_len = 256, steps = 3, vocab = 0;
  int prompt_len = 0, new_tokens = 128, decode_batch = 1;
  RuntimeOptions rt;
};

// Matmul FLOPs of one training step (forward 2*params*tokens, backward twice that),
// counting the tied head once; the scan and elementwise work are not in it.
double train_step_gemm_flops(const ModelConfig& c, double tokens) {
  const double D = c.d_model, E = c.d_inner(), N = c.d_state, R = c.dt_rank, I = c.d_intermediate;
  const double per_layer = 2 * E * D + (R + 2 * N) * E + R * E + D * E + 3 * I * D;
  const double matmul_params = c.n_layer * per_layer + double(c.vocab_size) * D;
  return 6 * matmul_params * tokens;
}

// The preset's shape; its vocabulary --vocab, else m130's own or tinyshakespeare's 65 symbols.
ModelConfig bench_config(const BenchOptions& o) {
  return preset_config(o.preset, o.vocab == 0 && o.preset != "m130" ? 65 : o.vocab);
}

void bench_train(const BenchOptions& o) {
  ModelConfig cfg = bench_config(o);
  auto backend = o.rt.make();
  MambaLM model(cfg, *backend);
  model.init_params(1234);
  model.plan(o.batch, o.seq_len);
  const size_t T = size_t(o.batch) * o.seq_len, n = model.num_params();
  std::vector<int32_t> ids(T), targets(T);  // (B, L)
  std::mt19937 rng(7);
  for (size_t i = 0; i < T; i++) ids[i] = int32_t(rng() % cfg.vocab_size);
  for (size_t i = 0; i < T; i++) targets[i] = (i + 1) % o.seq_len ? ids[i + 1] : -1;
  float* m = backend->alloc(n);
  float* v = backend->alloc(n);
  // Timed with the backend's marks: CUDA events on the GPU (no synchronisation
  // between forward and backward), the host clock on the CPU.
  std::vector<double> times, fwd_times;
  for (int s = 0; s < o.steps + 1; s++) {  // the first step is a warm-up
    backend->mark(0);
    model.zero_grads();
    model.forward(ids.data(), targets.data(), true);
    backend->mark(1);
    model.backward();
    backend->adamw(n, model.params(), model.grads(), m, v, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, s + 1, 1.0f);
    backend->freeze_weights(model.params(), n);  // as AdamW::step: fixed until the next update
    backend->mark(2);
    if (s > 0) {
      times.push_back(backend->seconds(0, 2));
      fwd_times.push_back(backend->seconds(0, 1));
    }
  }
  backend->free(m);
  backend->free(v);
  std::sort(times.begin(), times.end());
  std::sort(fwd_times.begin(), fwd_times.end());
  const double step_s = times[times.size() / 2], fwd_s = fwd_times[fwd_times.size() / 2];
  const double flops = train_step_gemm_flops(cfg, double(T));
  nlohmann::json j = {{"bench", "train"}, {"preset", o.preset}, {"device", o.rt.device}, {"backend", backend->name()},
                      {"params", n}, {"batch", o.batch}, {"seq_len", o.seq_len},
                      {"threads", omp_get_max_threads()}, {"steps", o.steps},
                      {"step_s", step_s}, {"forward_s", fwd_s},
                      {"tokens_per_s", double(T) / step_s},
                      {"gemm_gflop_per_step", flops / 1e9},
                      {"achieved_gflops", flops / step_s / 1e9},
                      {"activation_mb", model.activation_bytes() / 1e6}};
  std::printf("%s\n", j.dump().c_str());
}
}  // namespace

void add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* bench = app.add_subcommand("bench", "Throughput benchmarks on random weights (JSON lines)");
  bench->require_subcommand(1);
  auto common = [&](CLI::App* cmd) {
    cmd->add_option("--preset", o->preset, "model shape: tiny, seed, char10m, m130");
    cmd->add_option("--vocab", o->vocab, "vocabulary size (default: the preset's, or 65)");
    o->rt.add_to(cmd);
  };
  CLI::App* train = bench->add_subcommand("train", "time full training steps: forward, backward, AdamW");
  common(train);
  train->add_option("--batch", o->batch, "batch size")->check(CLI::PositiveNumber);
  train->add_option("--seq-len", o->seq_len, "sequence length")->check(CLI::PositiveNumber);
  train->add_option("--steps", o->steps, "timed steps (after one warm-up)")->check(CLI::PositiveNumber);
  train->callback([o] { bench_train(*o); });

  CLI::App* decode = bench->add_subcommand("decode", "time recurrent decoding after a prompt (greedy, a batch of sequences)");
  common(decode);
  decode->add_option("--batch", o->decode_batch, "sequences decoded together (default 1)")->check(CLI::PositiveNumber);
  decode->add_option("--prompt-len", o->prompt_len, "prompt tokens (default 64)");
  decode->add_option("--new-tokens", o->new_tokens, "tokens to decode")->check(CLI::PositiveNumber);
  decode->callback([o] {
    auto backend = o->rt.make();  // applies --threads
    ModelConfig cfg = bench_config(*o);
    nlohmann::json j = bench_decode(cfg, *backend, o->rt.threads, o->decode_batch, o->prompt_len ? o->prompt_len : 64,
                                    o->new_tokens);
    j["device"] = o->rt.device;
    std::printf("%s\n", j.dump().c_str());
  });

  CLI::App* prefill = bench->add_subcommand("prefill", "time prefilling one prompt (batch 1)");
  common(prefill);
  prefill->add_option("--prompt-len", o->prompt_len, "prompt tokens (default 512)");
  prefill->callback([o] {
    o->rt.make();
    ModelConfig cfg = bench_config(*o);
    std::printf("%s\n", bench_prefill(cfg, o->rt.threads, o->prompt_len ? o->prompt_len : 512).dump().c_str());
  });
}

}  // namespace bhasa::cli
