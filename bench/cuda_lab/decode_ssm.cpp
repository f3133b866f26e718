// ssm_decode_step and sample_tokens on the m130 shape at B = 1, 8, 12, 16, 32, 64, with a
// device copy of the SSM state for scale. As decode_ops: 24 calls captured in one CUDA
// graph, states rotated over 8 copies (logits over 4, or 1 = L2-resident), median of
// 15 replays, us per call. Floors at 4.29 TB/s. Environment: LAB_LABEL names the variant
// in the table (set the kernels' own switches, e.g. BHASA_SSM_ROWS_MIN_B, alongside);
// LAB_SAMPLE=0 skips the sampler, LAB_STEP=0 the step.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/kernels.h"
#include "graph_timer.h"

using namespace bhasa;

namespace {

constexpr int E = 1536, N = 16, R = 48, K = 4, P = R + 2 * N, V = 50280;
constexpr int kCopies = 8, kCalls = 24;

float* rnd(Backend& be, size_t n, std::mt19937& rng, float scale, float mean = 0.f) {
  std::normal_distribution<float> d(mean, scale);
  std::vector<float> h(n);
  for (auto& x : h) x = d(rng);
  float* p = be.alloc(n);
  be.upload(p, h.data(), n);
  return p;
}

double time_op(Backend& be, const std::function<void(int)>& op) { return time_in_graph(be, kCalls, op); }

}  // namespace

int main() {
  try {
    auto be = make_cuda_backend();
    std::mt19937 rng(1);
    struct Layer { float *conv_w, *conv_b, *dt_w, *dt_b, *A_log, *Dp; };
    std::vector<Layer> L(kCopies);
    for (auto& l : L) {
      l.conv_w = rnd(*be, size_t(E) * K, rng, 0.3f);
      l.conv_b = rnd(*be, E, rng, 0.1f);
      l.dt_w = rnd(*be, size_t(E) * R, rng, 0.1f);
      l.dt_b = rnd(*be, E, rng, 0.3f, -2.f);
      l.A_log = rnd(*be, size_t(E) * N, rng, 0.3f, 1.f);
      l.Dp = rnd(*be, E, rng, 1.f);
    }
    const char* label = std::getenv("LAB_LABEL");
    label = label ? label : "";
    const bool do_step = !std::getenv("LAB_STEP") || std::atoi(std::getenv("LAB_STEP")) != 0;
    const bool do_sample = !std::getenv("LAB_SAMPLE") || std::atoi(std::getenv("LAB_SAMPLE")) != 0;
    std::printf("| op | B | variant | us/call | floor us |\n|---|---|---|---|---|\n");
    for (int B : {1, 8, 12, 16, 32, 64}) {
      float *xz = rnd(*be, size_t(B) * 2 * E, rng, 1.f), *dbc = rnd(*be, size_t(B) * P, rng, 0.5f),
            *y = be->alloc(size_t(B) * E), *conv = rnd(*be, size_t(kCopies) * B * (K - 1) * E, rng, 1.f),
            *ssm = rnd(*be, size_t(kCopies) * B * E * N, rng, 0.1f),
            *logits = rnd(*be, size_t(4) * B * V, rng, 1.f);
      int32_t *counter = be->alloc_i32(1), *ids = be->alloc_i32(B), *hist = be->alloc_i32(size_t(B) * 256);
      auto cs = [&](int i) { return conv + size_t(i % kCopies) * B * (K - 1) * E; };
      auto hs = [&](int i) { return ssm + size_t(i % kCopies) * B * E * N; };
      // bytes: h read + written, conv state read + written, x, z, y
      const double step_bytes = 4.0 * B * E * (2.0 * N + 2.0 * (K - 1) + 3.0);
      auto step = [&](int i) {
        const Layer& l = L[i % kCopies];
        be->ssm_decode_step(B, E, N, R, K, xz, xz + E, 2 * E, cs(i), l.conv_w, l.conv_b, dbc, l.dt_w, l.dt_b,
                            l.A_log, l.Dp, hs(i), y);
      };
      if (do_step) {
        std::printf("| ssm_decode_step | %d | %s | %.2f | %.2f |\n", B, label, time_op(*be, step), step_bytes / 4.29e6);
        // what a copy engine moves in the same time: h of one copy into the next (read + write)
        std::printf("| cudaMemcpy h (B,E,N) | %d | copy | %.2f | %.2f |\n", B,
                    time_op(*be, [&](int i) { be->copy(hs(i + 1), hs(i), size_t(B) * E * N); }),
                    8.0 * B * E * N / 4.29e6);
      }
      if (do_sample)
      for (float temp : {0.0f, 0.8f})
        for (int copies : {1, 4}) {
          if (temp > 0.0f && copies == 4) continue;
          auto sample = [&](int i) {
            be->sample_tokens(B, V, logits + size_t(i % copies) * B * V, temp, 7, counter, ids, hist, 256);
          };
          const int32_t zero = 0;
          be->upload_i32(counter, &zero, 1);
          std::printf("| sample_tokens T=%.1f, logits x%d | %d | %s | %.2f | %.2f |\n", temp, copies, B, label,
                      time_op(*be, sample), 4.0 * B * V / 4.29e6);
          std::fflush(stdout);
        }
      if (do_sample) {  // logits spread as a language model's (std 8): most skip the noise
        float* wide = rnd(*be, size_t(B) * V, rng, 8.f);
        std::printf("| sample_tokens T=0.8, logits std 8 x1 | %d | %s | %.2f | %.2f |\n", B, label,
                    time_op(*be, [&](int) { be->sample_tokens(B, V, wide, 0.8f, 7, counter, ids, hist, 256); }),
                    4.0 * B * V / 4.29e6);
        be->free(wide);
      }
      for (float* p : {xz, dbc, y, conv, ssm, logits}) be->free(p);
      be->free(counter), be->free(ids), be->free(hist);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "decode_ssm failed: %s\n", e.what());
    return 1;
  }
  return 0;
}
