// Row-major GEMM through cuBLASLt, with the matmul descriptor, the three layouts
// and the chosen algorithm cached per shape: after warm-up a call creates nothing.
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <map>
#include <tuple>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/op_profile.h"

namespace bhasa::cuda {

class Gemm {
 public:
  Gemm(cudaStream_t stream, GemmMath math);
  ~Gemm();
  // C (M, N) = op(A) (M, K) @ op(B) (K, N) + beta * C   (row-major, as kernels.h)
  // A bf16 operand is multiplied as it is (bf16 math, the other operand copied if fp32).
  // A bf16 C is written from the fp32 accumulators (bf16 math: both operands bf16).
  // With R (fp32, C's layout): C = op(A) @ op(B) + beta * R, C not read.
  void run(bool ta, bool tb, int M, int N, int K, ConstOperand A, int lda, ConstOperand B,
           int ldb, float beta, Operand C, int ldc, const float* R = nullptr);
  // Decoding with a frozen weight: C (M, N) = A (M, K) @ W^T + beta * C with W (N, K)
  // row stride ldw in bf16 (its mirror, weight_mirror.cuh) and A fp32 row stride lda
  // (rounded into a bf16 copy first) or, when a16 is given, A already bf16 (dense, row
  // stride K). bf16 x bf16 -> fp32 on cuBLASLt. With tune, the first call of a shape
  // times cuBLASLt's candidate algorithms on it and keeps the fastest (outside captures).
  void run_w16(int M, int N, int K, const float* A, int lda, const void* a16, const void* W16,
               int ldw, float beta, float* C, int ldc);
  void set_tune(bool tune) { tune_ = tune; }
  // run / run_bf16 (training and prefill): time the candidates of each large shape
  // (M N K >= kTuneMinMacs) at its first call, or of every shape (tune_all, comparisons).
  void set_tune_products(bool large, bool all) { tune_large_ = large, tune_all_ = all; }
  static constexpr double kTuneMinMacs = 2147483648.0;  // 2^31: the m130 step's products, not tests'
  // The same on bf16 operands as they are (bf16 x bf16 products, fp32 accumulation);
  // C is fp32, or bf16 when c_bf16 (rounded once from the fp32 accumulators).
  void run_bf16(bool ta, bool tb, int M, int N, int K, const __nv_bfloat16* A, int lda,
                const __nv_bfloat16* B, int ldb, float beta, void* C, int ldc, bool c_bf16);
  // A dense bf16 copy of a strided fp32 (rows, cols) operand in grow-once scratch slot 0
  // or 1 (the slots run() uses for its own copies: valid until the next run()).
  const __nv_bfloat16* to_bf16(const float* src, int rows, int cols, int ld, int slot);
  GemmMath math() const { return math_; }
  // Times the bf16 copies on their own (nested inside the calling op's scope).
  void set_profile(OpProfile* profile) { profile_ = profile; }
  OpProfile* profile() const { return profile_ && profile_->enabled() ? profile_ : nullptr; }  // null when off
  // While an operand is pinned, its bf16 copy is made once and reused by the following
  // run() calls that read the same matrix (a linear layer's dX and dW products share
  // dY). The caller guarantees the matrix does not change until unpin().
  void pin(const void* operand) {
    pinned_ = operand;
    bf16_source_[0] = bf16_source_[1] = Source{};  // a copy made before the pin may be stale
  }
  void unpin() { pinned_ = nullptr; }

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // (math, ta, tb, M, N, K, lda, ldb, ldc, align A, align B, align C, C is bf16)
  using Key = std::tuple<GemmMath, bool, bool, int, int, int, int, int, int, int, int, int, bool>;
  // tune (optional): the operands of the call, to time the candidates on (C is not written)
  struct Tune {
    const void* a;
    const void* b;
  };
  const Plan& plan(const Key& key, const Tune* tune = nullptr);
  // the fastest of cuBLASLt's candidates for p on these operands (events, median of 5)
  cublasLtMatmulAlgo_t fastest(const Plan& p, const cublasLtMatmulHeuristicResult_t* cand, int n,
                               const Tune& t, int M, int ldc);
  // The cuBLASLt call on operands of the key's math (bf16: bf16 operands).
  void multiply(GemmMath math, bool ta, bool tb, int M, int N, int K, const void* A, int lda,
                const void* B, int ldb, float beta, void* C, int ldc, bool c_bf16, const void* R = nullptr);

  cudaStream_t stream_;
  GemmMath math_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;  // allocated once
  size_t workspace_bytes_ = 32u << 20;
  void* bf16_[2] = {nullptr, nullptr};  // operand copies (bf16 mode), grown on demand
  size_t bf16_bytes_[2] = {0, 0};
  struct Source {  // what a slot's bf16 copy was made from
    const float* p = nullptr;
    int rows = 0, cols = 0, ld = 0;
    bool operator==(const Source&) const = default;
  };
  Source bf16_source_[2];
  const void* pinned_ = nullptr;
  OpProfile* profile_ = nullptr;
  bool tune_ = false;
  bool tune_large_ = false;
  bool tune_all_ = false;
  std::map<Key, Plan> plans_;
};

}  // namespace bhasa::cuda
