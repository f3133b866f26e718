// GEMM through OpenBLAS. The model's matmuls (in_proj, x_proj, dt_proj, out_proj,
// lm_head and their backward) are all this one call.
#include <cblas.h>

#include "kernels/cpu/cpu_kernels.h"

namespace bhasa::cpu {

namespace {

// Rows of A up to which a weight (N, K) is streamed once rather than through sgemm, which
// packs it into a buffer on every call. m130 decode step, 2 threads (bhasa bench decode),
// ms, sgemm -> streamed: batch 2 46.2 -> 28.3, 4 66.0 -> 32.7, 8 80.8 -> 62.1; at 16 sgemm
// is faster (96.5 against 116). Batch 1 is sgemv's (22 ms).
constexpr int kSmallM = 8;

// torch: C = beta * C + A @ W.T   A (M, K), W (N, K) row stride ldw, M <= kSmallM: each thread
// takes rows of W and dots every row of A with them while the row is in L1, so W is read
// from memory once.
void gemm_small_m(int M, int N, int K, const float* A, int lda, const float* W, int ldw, float beta, float* C,
                  int ldc) {
  auto store = [&](int m, int n, float s) {
    float& c = C[size_t(m) * ldc + n];
    c = beta == 0.0f ? s : s + beta * c;  // beta 0: C is not read (it may hold anything)
  };
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* w = W + size_t(n) * ldw;
    int m = 0;
    for (; m + 4 <= M; m += 4) {  // 4 rows of A at once: 4 independent FMA chains a lane
      const float *a0 = A + size_t(m) * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
      float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int k = 0; k < K; ++k) {
        const float wk = w[k];
        s0 += a0[k] * wk, s1 += a1[k] * wk, s2 += a2[k] * wk, s3 += a3[k] * wk;
      }
      store(m, n, s0), store(m + 1, n, s1), store(m + 2, n, s2), store(m + 3, n, s3);
    }
    for (; m < M; ++m) {
      const float* a = A + size_t(m) * lda;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int k = 0; k < K; ++k) s += a[k] * w[k];
      store(m, n, s);
    }
  }
}

}  // namespace

// torch: C = beta * C + (A.T if ta else A) @ (B.T if tb else B)
template <>
void gemm<float>(bool ta, bool tb, int M, int N, int K, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  // One row (a decode step at batch 1): OpenBLAS's sgemv reads B 2-4x faster than
  // its sgemm does for M = 1, and decoding is bound by reading the weights.
  if (M == 1 && !ta) {
    if (tb)  // C (1, N) = A (1, K) @ B(N, K)^T  =  B @ a
      cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, B, ldb, A, 1, beta, C, 1);
    else     // C (1, N) = A (1, K) @ B(K, N)  =  B^T @ a
      cblas_sgemv(CblasRowMajor, CblasTrans, K, N, 1.0f, B, ldb, A, 1, beta, C, 1);
    return;
  }
  if (M <= kSmallM && !ta && tb) return gemm_small_m(M, N, K, A, lda, B, ldb, beta, C, ldc);  // decoding a batch
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm<double>(bool ta, bool tb, int M, int N, int K, const double* A, int lda,
                  const double* B, int ldb, double beta, double* C, int ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              M, N, K, 1.0, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace bhasa::cpu
