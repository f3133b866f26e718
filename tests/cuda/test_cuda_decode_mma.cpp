// decode_mma.cu (the tensor-core GEMM of the decode products at 8 < M <= 64) against a
// float64 product of the same bf16 operands: many M, N (odd ones, the head's 50280), K,
// beta 0 (C NaN-poisoned) and 1, a strided C, every tile the kernel has; two calls bitwise
// equal (the split-K sum has a fixed order).
#include <gtest/gtest.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "cuda_test_util.h"
#include "kernels/cuda/decode_mma.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {


// One product: returns ||C - ref|| / ||ref|| over the (M, N) block of C (ldc >= N), the
// columns between N and ldc checked untouched; columns every `step` (plus the last 9).
double check(Backend& gpu, int M, int N, int K, float beta, cuda::MmaTile tile, std::mt19937& rng, int ldc = 0,
             std::vector<float>* out = nullptr) {
  if (ldc == 0) ldc = N;
  const auto A = randn_bf16(size_t(M) * K, rng, 1.f), W = randn_bf16(size_t(N) * K, rng, 0.05f);
  std::vector<float> C = randn(size_t(M) * ldc, rng);
  if (beta == 0.f)
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) C[size_t(m) * ldc + n] = std::numeric_limits<float>::quiet_NaN();
  uint16_t *dA = to_device(A), *dW = to_device(W);
  float* dC = to_device(C);
  auto stream = static_cast<cudaStream_t>(cuda_stream_of(gpu));
  cuda::decode_mma(stream, true, M, N, K, dA, dW, K, beta, dC, ldc, tile);
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  const auto got = to_host(dC, C.size());
  cudaFree(dA), cudaFree(dW), cudaFree(dC);
  if (out) *out = got;
  const int step = N > 4096 ? 13 : 1;
  std::vector<float> g, r;
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      if (!std::isfinite(got[size_t(m) * ldc + n])) return INFINITY;  // unwritten (NaN) or broken
      if (n % step && n < N - 9) continue;
      double acc = 0;
      for (int k = 0; k < K; ++k) acc += bf16_bits_to_float(A[size_t(m) * K + k]) * bf16_bits_to_float(W[size_t(n) * K + k]);
      g.push_back(got[size_t(m) * ldc + n]);
      r.push_back(float(acc + (beta == 0.f ? 0.0 : beta * double(C[size_t(m) * ldc + n]))));
    }
    for (int n = N; n < ldc; ++n)
      if (got[size_t(m) * ldc + n] != C[size_t(m) * ldc + n]) return INFINITY;  // outside C's block
  }
  return rel_l2(g, r);
}

constexpr double kBf16 = 1e-2;  // bf16 operands, fp32 accumulation: in practice ~1e-6 here

}  // namespace

TEST(CudaDecodeMma, MatchesFloat64) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  std::mt19937 rng(11);
  struct Shape { int N, K; };
  for (Shape s : {Shape{80, 1536}, Shape{768, 1536}, Shape{3072, 768}, Shape{50280, 768}, Shape{37, 48},
                  Shape{1001, 96}, Shape{203, 2048}})
    for (int M : {1, 9, 16, 33, 64})
      for (float beta : {0.f, 1.f}) {
        if (s.N == 50280 && !(M == 64 && beta == 0.f) && !(M == 9 && beta == 1.f)) continue;  // the head: twice
        EXPECT_LE(check(*gpu, M, s.N, s.K, beta, {}, rng), kBf16)
            << "M=" << M << " N=" << s.N << " K=" << s.K << " beta=" << beta;
      }
}

// every tile (rows x split x warps along K), odd N, a strided C
TEST(CudaDecodeMma, EveryTile) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  std::mt19937 rng(12);
  const cuda::MmaTile tiles[] = {{16, 8, 4, 0}, {16, 8, 8, 1}, {32, 4, 2, 2}, {32, 8, 4, 3}, {64, 4, 1, 0},
                                 {64, 2, 2, 1}, {128, 4, 1, 2}, {128, 2, 1, 3}, {64, 1, 2, 1}, {16, 3, 8, 0},
                                 {64, 5, 2, 7}, {32, 4, 4, 4}, {64, 2, 4, 3}, {64, 4, 4, 7}, {64, 2, 2, 3, 16},
                                 {32, 4, 4, 7, 32}, {16, 8, 4, 3, 16}, {64, 2, 2, 3, 64}, {32, 4, 4, 7, 48},
                                 {128, 2, 1, 11, 32}, {64, 2, 2, 11, 64}, {64, 3, 2, 11}};
  // rows 0 takes the pick's row groups (16 or 32 rows above 16); rows 64 / 48 keep A's
  // 16-row tiles at 1, 2, 3, 4 a block. On an sm_90a device the tiles of 64 and 128 weight
  // rows with K slices of whole 64s and load 3 or 7 run on wgmma; load 11 is the same tiles
  // on mma.sync.
  for (cuda::MmaTile t : tiles)
    for (int M : {9, 20, 40, 64})
      EXPECT_LE(check(*gpu, M, 333, 768, 0.5f, t, rng, 341), kBf16)
          << "bn=" << t.bn << " split=" << t.split << " wk=" << t.wk << " load=" << t.load << " rows=" << t.rows
          << " M=" << M;
  // beta 1 with several stores a thread (the first two read C early, the rest at the store)
  EXPECT_LE(check(*gpu, 64, 1000, 256, 1.f, {128, 1, 1, 3}, rng), kBf16);
  // a K slice of more 16-byte chunks a row (192) than threads (128): the copies wrap rows
  EXPECT_LE(check(*gpu, 20, 80, 1536, 0.f, {16, 1, 4, 3, 16}, rng), kBf16);
}

// norm_gemm's RMSNorm folded in (decode_mma_norm): x fp32 with a row stride, g, eps
TEST(CudaDecodeMma, NormFolded) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  std::mt19937 rng(15);
  struct Shape { int N, K; };
  for (Shape s : {Shape{3072, 768}, Shape{1001, 96}, Shape{50280, 768}, Shape{80, 1536}})
    for (int M : {9, 33, 64})
    for (int load : {-1, 2}) {  // the weight by bulk copies / by cp.async (A is staged by the threads)
      if (s.N == 50280 && (M != 64 || load == 2)) continue;
      const int ldx = s.K + 4;
      auto x = randn(size_t(M) * ldx, rng, 2.f, 0.5f), g = randn(s.K, rng, 0.3f, 1.f);
      const auto W = randn_bf16(size_t(s.N) * s.K, rng, 0.05f);
      float *dx = to_device(x), *dg = to_device(g), *dC = to_device(std::vector<float>(size_t(M) * s.N, NAN));
      uint16_t* dW = to_device(W);
      auto stream = static_cast<cudaStream_t>(cuda_stream_of(*gpu));
      cuda::MmaTile tile;
      tile.load = load;
      tile.rows = load == 2 ? 16 : 64;  // row groups of 16 (blocks along grid z), or all rows a block
      cuda::decode_mma_norm(stream, true, M, s.N, s.K, dx, ldx, dg, 1e-5f, dW, s.K, dC, s.N, tile);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      const auto got = to_host(dC, size_t(M) * s.N);
      cudaFree(dx), cudaFree(dg), cudaFree(dC), cudaFree(dW);
      std::vector<float> o, r;
      for (int m = 0; m < M; ++m) {
        double ss = 0;
        for (int k = 0; k < s.K; ++k) ss += double(x[size_t(m) * ldx + k]) * x[size_t(m) * ldx + k];
        const double rs = 1.0 / std::sqrt(ss / s.K + 1e-5);
        for (int n = 0; n < s.N; n += s.N > 4096 ? 11 : 1) {
          double acc = 0;
          for (int k = 0; k < s.K; ++k) acc += double(x[size_t(m) * ldx + k]) * rs * g[k] * bf16_bits_to_float(W[size_t(n) * s.K + k]);
          o.push_back(got[size_t(m) * s.N + n]), r.push_back(float(acc));
        }
      }
      bool finite = true;
      for (float v : got) finite = finite && std::isfinite(v);
      EXPECT_TRUE(finite) << "M=" << M << " N=" << s.N << " load=" << load;
      EXPECT_LE(rel_l2(o, r), kBf16) << "M=" << M << " N=" << s.N << " K=" << s.K << " load=" << load;
    }
}

// the split-K sum runs in a fixed order: the same inputs give the same bits
TEST(CudaDecodeMma, Deterministic) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  std::vector<float> a, b;
  std::mt19937 r1(13), r2(13);
  check(*gpu, 64, 768, 1536, 1.f, {}, r1, 0, &a);
  check(*gpu, 64, 768, 1536, 1.f, {}, r2, 0, &b);
  EXPECT_EQ(a, b);
}

// the backend routes the decode products there (CudaOptions::decode_mma, decode_mma_max_m
// raised to 64; M = 20 rows)
TEST(CudaDecodeMma, BackendProducts) {
  if (!cuda_gpu_available()) GTEST_SKIP() << "no CUDA GPU on this machine";
  auto cpu = make_cpu_backend();
  if (std::getenv("BHASA_DECODE_MMA") || std::getenv("BHASA_DECODE_MMA_NORM"))
    GTEST_SKIP() << "BHASA_DECODE_MMA(_NORM) is set";
  for (int mode : {0, 1, 3}) {  // 3: 1 with the norm as a kernel of its own
    CudaOptions opt;
    opt.decode_mma = mode == 3 ? 1 : mode;
    opt.decode_mma_max_m = 64;
    if (mode == 3) setenv("BHASA_DECODE_MMA_NORM", "0", 1);
    auto gpu = make_cuda_backend(opt);
    unsetenv("BHASA_DECODE_MMA_NORM");
    std::mt19937 rng(14);
    const int M = 20, N = 768, K = 1536, D = 512;
    auto W = randn(size_t(N) * K, rng, 0.03f), A = randn(size_t(M) * K, rng), C = randn(size_t(M) * N, rng);
    auto x = randn(size_t(M) * D, rng, 2.f, 0.5f), g = randn(D, rng, 0.3f, 1.f), W2 = randn(size_t(N) * D, rng, 0.05f);
    DevBuf dW(*gpu, W.size() + W2.size());
    gpu->upload(dW.p, W.data(), W.size());
    gpu->upload(dW.p + W.size(), W2.data(), W2.size());
    gpu->freeze_weights(dW.p, dW.n);
    DevBuf dA(*gpu, A), dC(*gpu, C), dx(*gpu, x), dg(*gpu, g), dout(*gpu, size_t(M) * N);
    gpu->gemm(false, true, M, N, K, dA.p, K, dW.p, K, 1.f, dC.p, N);
    gpu->norm_gemm(M, N, D, true, 1e-5f, dx.p, dg.p, nullptr, dW.p + W.size(), dout.p);
    auto ref = C;
    cpu->gemm(false, true, M, N, K, A.data(), K, W.data(), K, 1.f, ref.data(), N);
    std::vector<float> ref2(size_t(M) * N);
    cpu->norm_gemm(M, N, D, true, 1e-5f, x.data(), g.data(), nullptr, W2.data(), ref2.data());
    EXPECT_LE(rel_l2(dC.host(), ref), kBf16) << "mode " << mode;
    EXPECT_LE(rel_l2(dout.host(), ref2), kBf16) << "mode " << mode;
  }
}
