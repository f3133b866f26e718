#include "infer/bench_infer.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/error.h"
#include "infer/model_loader.h"
#include "kernels/kernels.h"
#include "model/mamba.h"

namespace bhasa {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A fixed pseudo-random prompt (the weights are random too, so its content is moot).
std::vector<int32_t> random_ids(int n, int vocab) {
  std::vector<int32_t> ids(n);
  uint64_t x = 88172645463325252ull;
  for (int32_t& id : ids) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    id = int32_t(x % uint64_t(vocab));
  }
  return ids;
}

nlohmann::json describe(const ModelConfig& cfg, const MambaLM& model, int threads) {
  return {{"d_model", cfg.d_model}, {"n_layer", cfg.n_layer}, {"vocab_size", cfg.vocab_size},
          {"d_state", cfg.d_state}, {"params", model.num_params()}, {"threads", threads},
          {"dtype", "f32"}};
}

// threads <= 0: OpenMP's default. Returns the count in use.
int use_threads(int threads) {
  if (threads <= 0) return omp_get_max_threads();
  set_cpu_threads(threads);
  return threads;
}

}  // namespace

double measure_read_bandwidth(int threads) {
  const size_t n = size_t(1) << 27;  // 512 MiB of floats: far past any cache
  std::vector<float> buf(n, 1.0f);
  double best = 0.0;
  for (int rep = 0; rep < 3; ++rep) {
    auto t0 = Clock::now();
    double total = 0.0;
#pragma omp parallel for num_threads(threads) reduction(+ : total) schedule(static)
    for (size_t blk = 0; blk < n; blk += 4096) {
      // 64 independent sums (8 AVX registers), so the adds keep up with memory
      float acc[64] = {};
      for (size_t i = blk; i < blk + 4096; i += 64)
        for (int j = 0; j < 64; ++j) acc[j] += buf[i + j];
      float s = 0.0f;
      for (float a : acc) s += a;
      total += s;
    }
    double sec = seconds_since(t0);
    if (total != double(n)) throw Error("bandwidth probe: wrong sum");  // keeps the loop alive
    best = std::max(best, double(n * sizeof(float)) / sec);
  }
  return best;
}

nlohmann::json bench_decode(const ModelConfig& cfg, Backend& backend, int threads, int batch, int prompt_len,
                            int new_tokens) {
  check(batch > 0 && prompt_len > 0 && new_tokens > 0,
        "bench decode: the batch, prompt length and new tokens must be positive");
  threads = use_threads(threads);
  MambaLM model(cfg, backend);
  model.init_params(1234);
  const int V = cfg.vocab_size;
  std::vector<float> logits(size_t(batch) * V);       // (B, V)
  std::vector<int32_t> out(size_t(batch) * new_tokens);  // (B, new_tokens)
  DecodeState state = model.new_state(batch);
  const std::vector<int32_t> prompt = random_ids(batch * prompt_len, V);  // (B, L)
  const std::vector<int32_t> first = random_ids(batch, V);               // (B)

  if (backend.supports_graphs()) {  // untimed: captures the step's graph (same buffers below)
    model.prefill(state, prompt.data(), prompt_len, logits.data());
    model.generate_tokens(state, first.data(), new_tokens, out.data(), 0.0f, 1);
    model.reset_state(state);
  }
  auto t0 = Clock::now();
  model.prefill(state, prompt.data(), prompt_len, logits.data());
  const double prefill_s = seconds_since(t0);
  t0 = Clock::now();
  model.generate_tokens(state, first.data(), new_tokens, out.data(), 0.0f, 1);  // returns once done
  const double decode_s = seconds_since(t0);
  model.free_state(state);

  nlohmann::json j = {{"bench", "decode"}, {"backend", backend.name()}, {"batch", batch},
                      {"prompt_len", prompt_len}, {"new_tokens", new_tokens}, {"seconds", decode_s},
                      {"tokens_per_s", double(batch) * new_tokens / decode_s},
                      {"ms_per_token", 1e3 * decode_s / new_tokens},  // a step of the whole batch
                      {"prompt_seconds", prefill_s}};
  if (backend.name() == "cpu") {
    // Per step every weight is read once (the tied embedding as the LM head).
    const double weight_bytes = double(model.num_params()) * sizeof(float);
    const double bandwidth = measure_read_bandwidth(threads);
    j["weight_bytes_per_token"] = weight_bytes;
    j["read_bandwidth_GBps"] = bandwidth / 1e9;
    j["bandwidth_bound_tokens_per_s"] = double(batch) * bandwidth / weight_bytes;
  }
  j["model"] = describe(cfg, model, threads);
  return j;
}

nlohmann::json bench_prefill(const ModelConfig& cfg, int threads, int prompt_len) {
  check(prompt_len > 0, "bench prefill: the prompt length must be positive");
  threads = use_threads(threads);
  auto backend = make_cpu_backend();
  MambaLM model(cfg, *backend);
  model.init_params(1234);
  std::vector<float> logits(cfg.vocab_size);  // (1, V)
  DecodeState state = model.new_state(1);
  std::vector<int32_t> prompt = random_ids(prompt_len, cfg.vocab_size);

  model.prefill(state, prompt.data(), prompt_len, logits.data());  // warm-up: plans, faults pages
  model.reset_state(state);
  auto t0 = Clock::now();
  model.prefill(state, prompt.data(), prompt_len, logits.data());
  double sec = seconds_since(t0);
  model.free_state(state);

  nlohmann::json j = {{"bench", "prefill"}, {"prompt_len", prompt_len}, {"seconds", sec},
                      {"tokens_per_s", prompt_len / sec}};
  j["model"] = describe(cfg, model, threads);
  return j;
}

}  // namespace bhasa
