// GEMM: cuBLASLt with TF32 tensor-core math (fp32 storage and accumulation).
// bf16 operand storage is the next milestone (issue 6).
//
// Row-major to cuBLAS's column-major: a row-major (R, C) matrix with row stride ld
// is a column-major (C, R) matrix with the same ld, so
//   C (M, N) = op(A) @ op(B)  row-major   <=>   C^T (N, M) = op(B)^T @ op(A)^T  column-major,
// i.e. one column-major GEMM with the operands swapped: m = N, n = M, first operand B.
#include <string>

#include "core/error.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/gemm.cuh"

namespace bhasa::cuda {

namespace {
void check_lt(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLASLt error in ") + what + ": status " + std::to_string(int(st)) +
                "; check the CUDA installation matches the driver");
}
int alignment_of(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  return v % 16 == 0 ? 16 : v % 8 == 0 ? 8 : 4;
}
}  // namespace

Gemm::Gemm(cudaStream_t stream, bool tf32) : stream_(stream), tf32_(tf32) {
  check_lt(cublasLtCreate(&handle_), "cublasLtCreate");
  if (cudaMalloc(&workspace_, workspace_bytes_) != cudaSuccess)
    throw Error("out of GPU memory allocating the 32 MiB GEMM workspace");
}

Gemm::~Gemm() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

const Gemm::Plan& Gemm::plan(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const auto [ta, tb, M, N, K, lda, ldb, ldc, align_a, align_b, align_c] = key;
  Plan p;
  const cublasComputeType_t compute = tf32_ ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  check_lt(cublasLtMatmulDescCreate(&p.desc, compute, CUDA_R_32F), "MatmulDescCreate");
  // Column-major view: first operand is B (op = tb), second is A (op = ta).
  const cublasOperation_t op1 = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op2 = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op1, sizeof(op1)), "TRANSA");
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op2, sizeof(op2)), "TRANSB");
  // Stored shapes (column-major rows x cols) of the two operands and of C^T.
  const uint64_t r1 = tb ? K : N, c1 = tb ? N : K;  // B
  const uint64_t r2 = ta ? M : K, c2 = ta ? K : M;  // A
  check_lt(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_32F, r1, c1, ldb), "layout B");
  check_lt(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_32F, r2, c2, lda), "layout A");
  check_lt(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, N, M, ldc), "layout C");

  cublasLtMatmulPreference_t pref;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate");
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &workspace_bytes_, sizeof(workspace_bytes_)), "pref ws");
  const uint32_t al1 = align_b, al2 = align_a, alc = align_c;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al1, sizeof(al1));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al2, sizeof(al2));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alc, sizeof(alc));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alc, sizeof(alc));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.b, p.a, p.c, p.c, pref, 1,
                                                           &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0)
    throw Error("cuBLASLt found no GEMM algorithm for M=" + std::to_string(M) + " N=" +
                std::to_string(N) + " K=" + std::to_string(K));
  p.algo = result.algo;
  return plans_.emplace(key, p).first->second;
}

// torch: C = beta * C + (A.T if ta else A) @ (B.T if tb else B)
void Gemm::run(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B,
               int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // C = beta * C: nothing to multiply
    if (beta == 0.0f) {
      for (int r = 0; r < M; ++r)
        BHASA_CUDA_CHECK(cudaMemsetAsync(C + static_cast<size_t>(r) * ldc, 0, N * sizeof(float), stream_));
      return;
    }
    if (beta == 1.0f) return;
  }
  const Plan& p = plan(Key{ta, tb, M, N, K, lda, ldb, ldc, alignment_of(A), alignment_of(B), alignment_of(C)});
  const float alpha = 1.0f;
  check_lt(cublasLtMatmul(handle_, p.desc, &alpha, B, p.b, A, p.a, &beta, C, p.c, C, p.c, &p.algo,
                          workspace_, workspace_bytes_, stream_),
           "cublasLtMatmul");
}

}  // namespace bhasa::cuda
