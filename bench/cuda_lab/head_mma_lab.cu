// The decode head alone (head_mma.cu) at the m130 shape, (M, 50280, 768), M = 16 / 32 / 64:
// as built and with parts taken away (its products, its weight copies, its sums and stores),
// then a check of its output against float64. (cuBLASLt's time for the same product, 30 us in
// the decode chain at M = 64, is in bench/cuda_lab/NOTES.md.) CUDA events around 20 calls back to back
// (so that the host's launch time is hidden), median of 10 such after 2 warm-ups; the weight (77 MB) does not fit
// in L2, so every call streams it from DRAM.
// Build (from the repo root, after the cuda preset's build):
//   for v in 0 1 2 3 6; do nvcc -O3 -std=c++20 -arch=sm_90 -Isrc -DHEAD_MMA_LAB=$v \
//     $([ $v = 0 ] || echo -Dhead_mma=head_mma_lab$v -Dhead_mma_serves=head_mma_serves_lab$v) \
//     -c src/kernels/cuda/head_mma.cu -o hlab$v.o; done
//   nvcc -O3 -std=c++20 -arch=sm_90 -Isrc bench/cuda_lab/head_mma_lab.cu hlab*.o build/cuda/libbhasa.a -o head_mma_lab
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/cuda/head_mma.h"

namespace bhasa::cuda {
// the variants: head_mma.cu compiled with HEAD_MMA_LAB = 1, 2, 3, 6 under other names
#define LAB_DECL(v)                                                                                            \
  void head_mma_lab##v(cudaStream_t, bool, int, int, int, int, const void*, const float*, int, int, float, \
                       const void*, int, float*, int, const HeadPick*);
LAB_DECL(1)
LAB_DECL(2)
LAB_DECL(3)
LAB_DECL(6)
}  // namespace bhasa::cuda

int main() {
  using namespace bhasa::cuda;
  const int N = 50280, K = 768, Mmax = 64;
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.f, 0.05f);
  std::vector<__nv_bfloat16> hw(size_t(N) * K), ha(size_t(Mmax) * K);
  for (auto& v : hw) v = __float2bfloat16(d(rng));
  for (auto& v : ha) v = __float2bfloat16(d(rng) * 20);
  std::vector<float> hss(size_t(12) * Mmax, 10.f);
  void *w, *a;
  float *ss, *out;
  cudaMalloc(&w, hw.size() * 2), cudaMalloc(&a, ha.size() * 2);
  cudaMalloc(&ss, hss.size() * 4), cudaMalloc(&out, size_t(Mmax) * N * 4);
  cudaMemcpy(w, hw.data(), hw.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(a, ha.data(), ha.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(ss, hss.data(), hss.size() * 4, cudaMemcpyHostToDevice);
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  cudaStream_t st;
  cudaStreamCreate(&st);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  using Fn = void (*)(cudaStream_t, bool, int, int, int, int, const void*, const float*, int, int, float, const void*,
                      int, float*, int, const HeadPick*);
  const Fn fns[] = {head_mma, head_mma_lab1, head_mma_lab2, head_mma_lab3, head_mma_lab6};
  const char* names[] = {"head_mma", "no products", "no copies", "neither (the fixed cost)",
                         "products alone (no copies, sums, stores)"};
  std::printf("| M | variant | us | weight TB/s |\n|---|---|---|---|\n");
  for (int M : {16, 32, 64})
    for (int v = 0; v < 5; ++v) {
      std::vector<float> t;
      for (int i = 0; i < 12; ++i) {  // batches of 20 calls back to back: the host's launch time hidden
        cudaEventRecord(e0, st);
        for (int j = 0; j < 20; ++j) fns[v](st, false, sms, M, N, K, a, ss, 12, M, 1e-5f, w, K, out, N, nullptr);
        cudaEventRecord(e1, st);
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        if (i >= 2) t.push_back(ms * 1e3f / 20);
      }
      std::sort(t.begin(), t.end());
      const float us = t[t.size() / 2];
      std::printf("| %d | %s | %.2f | %.2f |\n", M, names[v], us, double(N) * K * 2 / (us * 1e-6) / 1e12);
    }
  // the check: M = 64 against float64 on every 97th column (rstd from ss: 12 tiles of 10)
  {
    const int M = 64;
    head_mma(st, false, sms, M, N, K, a, ss, 12, M, 1e-5f, w, K, out, N);
    std::vector<float> got(size_t(M) * N);
    cudaMemcpy(got.data(), out, got.size() * 4, cudaMemcpyDeviceToHost);
    const double rstd = 1.0 / std::sqrt(120.0 / K + 1e-5);
    double num = 0, den = 0;
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; n += 97) {
        double acc = 0;
        for (int k = 0; k < K; ++k)
          acc += double(__bfloat162float(ha[size_t(m) * K + k])) * __bfloat162float(hw[size_t(n) * K + k]);
        const double d = got[size_t(m) * N + n] - acc * rstd;
        num += d * d, den += acc * rstd * acc * rstd;
      }
    std::printf("check M=64: ||out - ref|| / ||ref|| = %.2e (float64 reference, every 97th column)\n",
                std::sqrt(num / den));
  }
  std::printf("(%s)\n", cudaGetErrorString(cudaGetLastError()));
  return 0;
}
