// Every GEMM of one mamba-130m training step (B x L = 16 x 2048), timed under each
// GEMM math (tf32, bf16, bf16_fast) and checked against full-fp32 products: which
// precision the training step should use, and what its GEMMs cost. CUDA events,
// median of 9 runs after 2 warm-ups, random data. Run by bench/cuda_lab/run.sh.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/kernels.h"

using namespace bhasa;

namespace {

constexpr int T = 16 * 2048, Dm = 768, E = 1536, N = 16, R = 48, P = R + 2 * N, V = 50280, LAYERS = 24;

struct G {
  const char* name;
  bool ta, tb;
  int M, N, K, lda, ldb, ldc;
  int per_step;  // how many times one training step runs it
};

std::vector<float> uniform(size_t n, uint64_t s) {
  std::vector<float> v(n);
  s |= 1;
  for (auto& x : v) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    x = float(int32_t(s >> 40) & 0xffffff) / 8388608.0f - 1.0f;
  }
  return v;
}

}  // namespace

int main() {
  if (!cuda_gpu_available()) {
    std::printf("no CUDA GPU: nothing to measure\n");
    return 0;
  }
  // Row-major shapes as src/model/mamba.cpp calls them (T tokens, per layer unless noted).
  const G gs[] = {
      {"in_proj fwd", false, true, T, 2 * E, Dm, Dm, Dm, 2 * E, LAYERS},
      {"x_proj fwd", false, true, T, P, E, E, E, P, LAYERS},
      {"dt_proj fwd", false, true, T, E, R, P, R, E, LAYERS},
      {"out_proj fwd", false, true, T, Dm, E, E, E, Dm, LAYERS},
      {"out_proj dX", false, false, T, E, Dm, Dm, E, E, LAYERS},
      {"out_proj dW", true, false, Dm, E, T, Dm, E, E, LAYERS},
      {"dt_proj dX", false, false, T, R, E, E, R, P, LAYERS},
      {"dt_proj dW", true, false, E, R, T, E, P, R, LAYERS},
      {"x_proj dX", false, false, T, E, P, P, E, E, LAYERS},
      {"x_proj dW", true, false, P, E, T, P, E, E, LAYERS},
      {"in_proj dX", false, false, T, Dm, 2 * E, 2 * E, Dm, Dm, LAYERS},
      {"in_proj dW", true, false, 2 * E, Dm, T, 2 * E, Dm, Dm, LAYERS},
      {"lm_head fwd", false, true, T, V, Dm, Dm, Dm, V, 1},
      {"lm_head dX", false, false, T, Dm, V, V, Dm, Dm, 1},
      {"lm_head dW", true, false, V, Dm, T, V, Dm, Dm, 1},
  };
  const GemmMath maths[] = {GemmMath::fp32, GemmMath::tf32, GemmMath::bf16, GemmMath::bf16_fast};
  std::vector<std::unique_ptr<Backend>> be;
  for (GemmMath m : maths) {
    CudaOptions o;
    o.gemm = m;
    be.push_back(make_cuda_backend(o));
  }
  std::printf("GEMMs of one mamba-130m training step, B x L = 16 x 2048, on %s\n", be[0]->name().c_str());
  std::printf("\n| gemm (M, N, K) | x/step | tf32 ms | bf16 ms | bf16_fast ms | TFLOP/s tf32 / bf16 / fast | rel err tf32 / bf16 / fast |\n|---|---|---|---|---|---|---|\n");
  double total[4] = {0, 0, 0, 0}, flops_total = 0;
  uint64_t seed = 1;
  for (const G& g : gs) {
    const size_t a_n = size_t(g.ta ? g.K : g.M) * g.lda, b_n = size_t(g.tb ? g.N : g.K) * g.ldb,
                 c_n = size_t(g.M) * g.ldc;
    const auto A = uniform(a_n, seed++), B = uniform(b_n, seed++);
    const size_t check_n = std::min<size_t>(c_n, size_t(64) * g.ldc);  // the first rows of C
    std::vector<float> ref, got;
    double ms[4] = {0, 0, 0, 0}, err[4] = {0, 0, 0, 0};
    for (int mi = 0; mi < 4; mi++) {
      Backend& gpu = *be[mi];
      float* dA = gpu.alloc(a_n);
      float* dB = gpu.alloc(b_n);
      float* dC = gpu.alloc(c_n);
      gpu.upload(dA, A.data(), a_n);
      gpu.upload(dB, B.data(), b_n);
      auto run = [&] { gpu.gemm(g.ta, g.tb, g.M, g.N, g.K, dA, g.lda, dB, g.ldb, 0.0f, dC, g.ldc); };
      std::vector<double> t;
      for (int i = 0; i < 11; i++) {
        gpu.mark(0);
        run();
        gpu.mark(1);
        const double s = gpu.seconds(0, 1);
        if (i >= 2) t.push_back(s);
      }
      std::sort(t.begin(), t.end());
      ms[mi] = t[t.size() / 2] * 1e3;
      std::vector<float> c(check_n);
      gpu.download(c.data(), dC, check_n);
      if (mi == 0) {
        ref = c;
      } else {
        double num = 0, den = 0;
        for (size_t i = 0; i < check_n; i++) {
          if (!std::isfinite(c[i])) { num = INFINITY; break; }
          num += (double(c[i]) - ref[i]) * (double(c[i]) - ref[i]);
          den += double(ref[i]) * ref[i];
        }
        err[mi] = std::sqrt(num / std::max(den, 1e-60));
      }
      gpu.free(dA);
      gpu.free(dB);
      gpu.free(dC);
    }
    const double flops = 2.0 * g.M * g.N * double(g.K);
    flops_total += flops * g.per_step;
    for (int mi = 1; mi < 4; mi++) total[mi] += ms[mi] * g.per_step;
    std::printf("| %s (%d, %d, %d) | %d | %.3f | %.3f | %.3f | %.0f / %.0f / %.0f | %.1e / %.1e / %.1e |\n", g.name,
                g.M, g.N, g.K, g.per_step, ms[1], ms[2], ms[3], flops / ms[1] / 1e9, flops / ms[2] / 1e9,
                flops / ms[3] / 1e9, err[1], err[2], err[3]);
  }
  std::printf("\nper training step: %.1f TFLOP of GEMM; tf32 %.1f ms (%.0f TFLOP/s), bf16 %.1f ms (%.0f), bf16_fast %.1f ms (%.0f)\n",
              flops_total / 1e12, total[1], flops_total / total[1] / 1e9, total[2], flops_total / total[2] / 1e9,
              total[3], flops_total / total[3] / 1e9);
  return 0;
}
