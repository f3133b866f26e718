// Row-major GEMM through cuBLASLt, with the matmul descriptor, the three layouts
// and the chosen algorithm cached per shape: after warm-up a call creates nothing.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <map>
#include <tuple>

namespace bhasa::cuda {

class Gemm {
 public:
  Gemm(cudaStream_t stream, bool tf32);
  ~Gemm();
  // C (M, N) = op(A) (M, K) @ op(B) (K, N) + beta * C   (row-major, as kernels.h)
  void run(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B,
           int ldb, float beta, float* C, int ldc);

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // (ta, tb, M, N, K, lda, ldb, ldc, align A, align B, align C)
  using Key = std::tuple<bool, bool, int, int, int, int, int, int, int, int, int>;
  const Plan& plan(const Key& key);

  cudaStream_t stream_;
  bool tf32_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;  // allocated once
  size_t workspace_bytes_ = 32u << 20;
  std::map<Key, Plan> plans_;
};

}  // namespace bhasa::cuda
