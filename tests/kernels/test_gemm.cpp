// GEMM against a naive float64 triple loop, all four transpose combinations,
// leading dimensions wider than the matrices, and beta accumulation.
#include <gtest/gtest.h>

#include "kernel_test_util.h"
#include "kernels/kernels.h"

using namespace bhasa;
using namespace bhasa::test;

TEST(Gemm, AllTransposesWithPaddedStridesAndBeta) {
  // M = 1 takes the sgemv path (decoding one sequence); with B transposed (a weight) M = 7
  // and 8 the streaming one (decoding a batch: 4 rows at once, then the rest one by one),
  // M = 9 and the rest sgemm.
  for (const int M : {7, 1, 8, 9}) {
  const int N = 9, K = 37;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      // op(A) (M, K): stored (M, K) or (K, M); each with 3 extra columns.
      const int a_rows = ta ? K : M, a_cols = ta ? M : K, lda = a_cols + 3;
      const int b_rows = tb ? N : K, b_cols = tb ? K : N, ldb = b_cols + 2;
      const int ldc = N + 4;
      const Vec A = randn(static_cast<size_t>(a_rows) * lda, 1 + ta);
      const Vec B = randn(static_cast<size_t>(b_rows) * ldb, 3 + tb);
      const Vec C0 = randn(static_cast<size_t>(M) * ldc, 5);
      const double beta = 0.5;
      Vec ref = C0;
      for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
          double s = 0;
          for (int k = 0; k < K; ++k)
            s += (ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
          ref[i * ldc + j] = beta * C0[i * ldc + j] + s;
        }
      auto Af = to_float(A), Bf = to_float(B), Cf = to_float(C0);
      cpu::gemm<float>(ta, tb, M, N, K, Af.data(), lda, Bf.data(), ldb, float(beta), Cf.data(), ldc);
      EXPECT_LT(rel_err(Cf, ref), 1e-6) << "ta " << ta << " tb " << tb;
      Vec Cd = C0;
      cpu::gemm<double>(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, beta, Cd.data(), ldc);
      EXPECT_LT(rel_err(Cd, ref), 1e-14);
      // Columns past N are untouched.
      for (int i = 0; i < M; ++i)
        for (int j = N; j < ldc; ++j) EXPECT_EQ(Cf[i * ldc + j], float(C0[i * ldc + j]));
      // Through the backend.
      auto be = make_cpu_backend();
      auto Cb = to_float(C0);
      be->gemm(ta, tb, M, N, K, Af.data(), lda, Bf.data(), ldb, float(beta), Cb.data(), ldc);
      EXPECT_EQ(Cb, Cf);
    }
  }
}
