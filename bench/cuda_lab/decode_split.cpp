// Does a batch decode faster as independent sub-batches on concurrent streams? Each of
// S host threads owns a backend (its own stream), a model with the same random weights
// and a DecodeState of B/S rows; all start generate_tokens together. Timed: the wall time
// until all finish, median of 5 after a warm-up. The decode chain is latency-bound at
// B = 64 (bench/cuda_lab/NOTES.md), so its kernels may overlap another chain's.
#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "model/mamba.h"
#include "model/presets.h"

using namespace bhasa;

int main() {
  const int B = std::getenv("SPLIT_B") ? std::atoi(std::getenv("SPLIT_B")) : 64;
  const int S = std::getenv("SPLIT_S") ? std::atoi(std::getenv("SPLIT_S")) : 2;
  const int prompt_len = 64, n_new = 256, reps = 6, b = B / S;
  std::barrier sync(S + 1);
  std::vector<double> wall;
  std::vector<std::thread> threads;
  for (int k = 0; k < S; k++)
    threads.emplace_back([&, k] {
      auto be = make_cuda_backend("bf16");
      MambaLM m(preset_config("m130", 0), *be);
      m.init_params(3);
      const int V = m.config().vocab_size;
      std::mt19937 rng(k);
      std::vector<int32_t> prompt(size_t(b) * prompt_len), first(b), out(size_t(b) * n_new);
      for (auto& t : prompt) t = int32_t(rng() % V);
      for (auto& t : first) t = int32_t(rng() % V);
      std::vector<float> last(size_t(b) * V);
      DecodeState s = m.new_state(b);
      for (int rep = 0; rep < reps; rep++) {
        m.reset_state(s);
        m.prefill(s, prompt.data(), prompt_len, last.data());
        m.backend().synchronize();
        sync.arrive_and_wait();  // all ready
        m.generate_tokens(s, first.data(), n_new, out.data(), 0.0f, 1);
        sync.arrive_and_wait();  // all done
      }
      m.free_state(s);
    });
  for (int rep = 0; rep < reps; rep++) {
    sync.arrive_and_wait();
    auto t0 = std::chrono::steady_clock::now();
    sync.arrive_and_wait();
    if (rep > 0) wall.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  for (auto& t : threads) t.join();
  std::sort(wall.begin(), wall.end());
  const double g = wall[wall.size() / 2];
  std::printf("| B=%d as %d x %d concurrent | %.3f ms/step | %.0f tokens/s |\n", B, S, b, 1e3 * g / n_new,
              double(B) * n_new / g);
  return 0;
}
