// Decode throughput on the mamba-130m shape (random weights): a 64-token prompt is
// prefilled, then 256 new tokens are generated per sequence, greedy. Timed: the
// generate call (the graph path: one eager step, one capture the first time, then
// replays), median of 5 after a warm-up; and, for comparison, a plain loop of step()
// with the logits copied to the host each token. Prints one table row per case.
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "model/mamba.h"
#include "model/presets.h"

using namespace bhasa;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void bench(MambaLM& m, int B, int prompt_len, int n_new) {
  const int V = m.config().vocab_size;
  std::mt19937 rng(B);
  std::vector<int32_t> prompt(size_t(B) * prompt_len), first(B), out(size_t(B) * n_new);
  for (auto& t : prompt) t = int32_t(rng() % V);
  for (auto& t : first) t = int32_t(rng() % V);
  std::vector<float> last(size_t(B) * V);
  DecodeState s = m.new_state(B);
  std::vector<double> graph_s, loop_s;
  for (int rep = 0; rep < 6; rep++) {  // rep 0 is the warm-up (capture)
    m.reset_state(s);
    m.prefill(s, prompt.data(), prompt_len, last.data());
    m.backend().synchronize();
    auto t0 = std::chrono::steady_clock::now();
    m.generate_tokens(s, first.data(), n_new, out.data(), 0.0f, 1);  // ends with a download
    if (rep > 0) graph_s.push_back(seconds_since(t0));
  }
  // without graphs: step() per token, logits to the host (what a naive loop does)
  std::vector<float> logits(size_t(B) * V);
  std::vector<int32_t> ids = first;
  const int loop_reps = std::getenv("DECODE_LOOP") && std::atoi(std::getenv("DECODE_LOOP")) == 0 ? 0 : 2;
  for (int rep = 0; rep < loop_reps; rep++) {
    m.reset_state(s);
    m.prefill(s, prompt.data(), prompt_len, last.data());
    m.backend().synchronize();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n_new; i++) m.step(s, ids.data(), logits.data());
    if (rep > 0) loop_s.push_back(seconds_since(t0));
  }
  std::sort(graph_s.begin(), graph_s.end());
  const double g = graph_s[graph_s.size() / 2], l = loop_s.empty() ? NAN : loop_s[0];
  std::printf("| decode B=%-3d prompt %d, %d new | graph: %.3f ms/token, %.0f tokens/s | step() loop: %.3f ms/token, %.0f tokens/s |\n",
              B, prompt_len, n_new, 1e3 * g / n_new, double(B) * n_new / g, 1e3 * l / n_new,
              double(B) * n_new / l);
  std::fflush(stdout);
  m.free_state(s);
}

}  // namespace

// Usage: cuda_decode [precision ...]: one table per GEMM precision (fp32 | tf32 | bf16;
// default: the backend's default, bf16, which decodes from a bf16 copy of the weights).
// DECODE_BATCHES="16 64" picks the batch sizes (default 1 and 64); DECODE_LOOP=0 skips the
// step() loop.
int main(int argc, char** argv) {
  try {
    std::vector<std::string> precisions(argv + 1, argv + argc);
    if (precisions.empty()) precisions.push_back("");
    for (const std::string& precision : precisions) {
      auto be = make_cuda_backend(precision);
      ModelConfig cfg = preset_config("m130", 0);
      MambaLM m(cfg, *be);
      m.init_params(3);
      std::printf("%s, m130 (%zu params)\n", be->name().c_str(), m.num_params());
      std::vector<int> batches = {1, 64};
      if (const char* bs = std::getenv("DECODE_BATCHES")) {  // e.g. "16 64"
        batches.clear();
        for (char* p = const_cast<char*>(bs); *p;) {
          char* end;
          const long b = std::strtol(p, &end, 10);
          if (end == p) break;
          batches.push_back(int(b));
          p = end;
        }
      }
      for (int B : batches) bench(m, B, 64, 256);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "decode bench failed: %s\n", e.what());
    return 1;
  }
  return 0;
}
