// The sgemm ceiling on this machine: OpenBLAS on the GEMM shapes of one seed-preset
// training step. Build: g++ -O2 bench/sgemm_peak.cpp -I/usr/include/x86_64-linux-gnu/openblas-openmp \
//   -L/usr/lib/x86_64-linux-gnu/openblas-openmp -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -fopenmp
#include <cblas.h>
#include <chrono>
#include <cstdio>
#include <vector>

int main() {
  const int T = 1024;  // batch 4 x 256
  struct Shape { int M, N, K; } shapes[] = {{T, 2048, 512}, {T, 512, 1024}, {T, 2048, 512}, {T, 512, 1024}};
  double flops = 0, secs = 0;
  for (int rep = 0; rep < 2; rep++) {
    flops = secs = 0;
    for (auto s : shapes) {
      std::vector<float> A(size_t(s.M) * s.K, 0.01f), B(size_t(s.K) * s.N, 0.02f), C(size_t(s.M) * s.N);
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 5; i++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.M, s.N, s.K, 1.f, A.data(), s.K, B.data(), s.K, 0.f, C.data(), s.N);
      secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      flops += 5.0 * 2 * s.M * s.N * s.K;
    }
  }
  std::printf("{\"sgemm_gflops\": %.1f}\n", flops / secs / 1e9);
}
