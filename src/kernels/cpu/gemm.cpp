// GEMM through OpenBLAS. The model's matmuls (in_proj, x_proj, dt_proj, out_proj,
// lm_head and their backward) are all this one call.
#include <cblas.h>

#include "kernels/cpu/cpu_kernels.h"

namespace bhasa::cpu {

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
