// GEMM: cuBLASLt on the tensor cores, fp32 storage and fp32 accumulation; the products
// are TF32 or bf16 (GemmMath, cuda_backend.h). In bf16 mode each operand is first
// rounded into a dense bf16 copy (one elementwise pass), then multiplied by a bf16 x bf16
// -> fp32 cuBLASLt kernel at about twice TF32's rate. Operands already in bf16 (the
// activations the model stores in operand_dtype(), kernels.h) are read with no copy.
//
// Row-major to cuBLAS's column-major: a row-major (R, C) matrix with row stride ld
// is a column-major (C, R) matrix with the same ld, so
//   C (M, N) = op(A) @ op(B)  row-major   <=>   C^T (N, M) = op(B)^T @ op(A)^T  column-major,
// i.e. one column-major GEMM with the operands swapped: m = N, n = M, first operand B.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
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
  return v % 16 == 0 ? 16 : v % 8 == 0 ? 8 : v % 4 == 0 ? 4 : 2;  // 2: a bf16 operand's slice
}

// torch: dst = src[:rows, :cols].to(torch.bfloat16).contiguous()
// src (rows, ld) fp32 with cols <= ld; dst (rows, cols) bf16. Four elements per
// thread when rows are 16-byte aligned, so the pass runs at copy bandwidth.
__global__ void to_bf16_kernel(const float* __restrict__ src, int rows, int cols, int ld,
                               __nv_bfloat16* __restrict__ dst, bool vec4) {
  const size_t n = size_t(rows) * cols;
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  if (vec4) {
    const int cols4 = cols / 4;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n / 4; i += stride) {
      const size_t r = i / cols4, c = (i % cols4) * 4;
      const float4 v = *reinterpret_cast<const float4*>(src + r * ld + c);
      __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(dst + r * cols + c);
      out[0] = __floats2bfloat162_rn(v.x, v.y);
      out[1] = __floats2bfloat162_rn(v.z, v.w);
    }
  } else {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
      const size_t r = i / cols, c = i % cols;
      dst[i] = __float2bfloat16_rn(src[r * ld + c]);
    }
  }
}
}  // namespace

const __nv_bfloat16* Gemm::to_bf16(const float* src, int rows, int cols, int ld, int slot) {
  const Source source{src, rows, cols, ld};
  if (pinned_ && src == pinned_ && bf16_source_[slot] == source) return static_cast<__nv_bfloat16*>(bf16_[slot]);
  bf16_source_[slot] = Source{};
  const size_t bytes = size_t(rows) * cols * sizeof(__nv_bfloat16);
  if (bytes > bf16_bytes_[slot]) {  // grows during warm-up only; steady state allocates nothing
    if (bf16_[slot]) BHASA_CUDA_CHECK(cudaFree(bf16_[slot]));
    bf16_[slot] = nullptr;
    if (cudaMalloc(&bf16_[slot], bytes) != cudaSuccess) {
      cudaGetLastError();
      bf16_bytes_[slot] = 0;
      throw Error("out of GPU memory for a " + std::to_string(bytes >> 20) +
                  " MiB bf16 GEMM operand; use a smaller batch or --precision tf32");
    }
    bf16_bytes_[slot] = bytes;
  }
  auto* dst = static_cast<__nv_bfloat16*>(bf16_[slot]);
  OpProfile* prof = profile_ && profile_->enabled() ? profile_ : nullptr;
  OpProfile::Scope scope(prof, prof ? prof->begin("  (bf16 operand copies, inside the GEMMs)") : -1);
  const bool vec4 = cols % 4 == 0 && ld % 4 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0;
  const size_t work = vec4 ? size_t(rows) * cols / 4 : size_t(rows) * cols;
  const int threads = 256;
  const int blocks = int(std::min<size_t>((work + threads - 1) / threads, 132 * 16));
  to_bf16_kernel<<<blocks, threads, 0, stream_>>>(src, rows, cols, ld, dst, vec4);
  BHASA_CUDA_CHECK(cudaGetLastError());
  bf16_source_[slot] = source;
  return dst;
}

Gemm::Gemm(cudaStream_t stream, GemmMath math) : stream_(stream), math_(math) {
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
  for (void* p : bf16_)
    if (p) cudaFree(p);
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

const Gemm::Plan& Gemm::plan(const Key& key, const Tune* tune) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const auto [math, ta, tb, M, N, K, lda, ldb, ldc, align_a, align_b, align_c, c_bf16] = key;
  Plan p;
  const cublasComputeType_t compute = math == GemmMath::tf32        ? CUBLAS_COMPUTE_32F_FAST_TF32
                                      : math == GemmMath::bf16_fast ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                                    : CUBLAS_COMPUTE_32F;
  // bf16 mode multiplies the dense bf16 copies (the key's lda/ldb are theirs); C stays fp32.
  const cudaDataType_t operand = math == GemmMath::bf16 ? CUDA_R_16BF : CUDA_R_32F;
  check_lt(cublasLtMatmulDescCreate(&p.desc, compute, CUDA_R_32F), "MatmulDescCreate");
  // Column-major view: first operand is B (op = tb), second is A (op = ta).
  const cublasOperation_t op1 = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op2 = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op1, sizeof(op1)), "TRANSA");
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op2, sizeof(op2)), "TRANSB");
  // Stored shapes (column-major rows x cols) of the two operands and of C^T.
  const uint64_t r1 = tb ? K : N, c1 = tb ? N : K;  // B
  const uint64_t r2 = ta ? M : K, c2 = ta ? K : M;  // A
  check_lt(cublasLtMatrixLayoutCreate(&p.b, operand, r1, c1, ldb), "layout B");
  check_lt(cublasLtMatrixLayoutCreate(&p.a, operand, r2, c2, lda), "layout A");
  check_lt(cublasLtMatrixLayoutCreate(&p.c, c_bf16 ? CUDA_R_16BF : CUDA_R_32F, N, M, ldc), "layout C");

  cublasLtMatmulPreference_t pref;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate");
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &workspace_bytes_, sizeof(workspace_bytes_)), "pref ws");
  const uint32_t al1 = align_b, al2 = align_a, alc = align_c;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al1, sizeof(al1));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al2, sizeof(al2));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alc, sizeof(alc));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alc, sizeof(alc));
  constexpr int kCandidates = 16;
  cublasLtMatmulHeuristicResult_t result[kCandidates] = {};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.b, p.a, p.c, p.c, pref,
                                                           tune ? kCandidates : 1, result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0)
    throw Error("cuBLASLt found no GEMM algorithm for M=" + std::to_string(M) + " N=" +
                std::to_string(N) + " K=" + std::to_string(K));
  p.algo = result[0].algo;
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  BHASA_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capturing));
  if (tune && found > 1 && capturing == cudaStreamCaptureStatusNone)
    p.algo = fastest(p, result, found, *tune, M, ldc);
  return plans_.emplace(key, p).first->second;
}

namespace {
// Holds the stream for about `cycles` clocks, so that the calls queued behind it run
// back to back, timed by the GPU alone (not by how fast the host can enqueue them).
__global__ void hold_kernel(long long cycles) {
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
}

// torch: *differs |= (a != b).any()   over n 16-bit words (bitwise, so a NaN equals itself)
__global__ void differs_kernel(size_t n, const uint16_t* __restrict__ a, const uint16_t* __restrict__ b,
                               int* differs) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    if (a[i] != b[i]) {
      *differs = 1;
      return;
    }
}
}  // namespace

// The heuristic's first pick for a skinny decode GEMM (M <= 64) is not its fastest
// (bench/cuda_lab/decode_gemm.cpp, M = 64: in_proj 4.56 us against 4.25 for its 4th,
// lm_head 26.6 against 24.8 for its 3rd). Times each candidate on the call's own
// operands into a scratch C as a decode step runs it: the weight from DRAM (L2 flushed
// by a memset before each call), calls queued behind hold_kernel so that the events
// time the GPU and not the host's enqueueing; median of 5, fastest kept.
// Only candidates whose product is bit for bit the first's are eligible: which one wins
// follows the timing noise, so otherwise a run's results (and a resumed training run's
// whole trajectory) would depend on it.
cublasLtMatmulAlgo_t Gemm::fastest(const Plan& p, const cublasLtMatmulHeuristicResult_t* cand, int n,
                                   const Tune& t, int M, int ldc) {
  constexpr int kReps = 5;
  float* c = nullptr;
  const size_t bytes = size_t(M) * ldc * sizeof(float);
  if (cudaMalloc(&c, bytes) != cudaSuccess) {  // no room to time them: the heuristic's first
    cudaGetLastError();
    return cand[0].algo;
  }
  BHASA_CUDA_CHECK(cudaMemsetAsync(c, 0, bytes, stream_));
  // the first candidate's product, and a flag: the others must reproduce it exactly
  float* c0 = nullptr;
  int* differs = nullptr;
  if (cudaMalloc(&c0, bytes + sizeof(int)) != cudaSuccess) {
    cudaGetLastError();
    BHASA_CUDA_CHECK(cudaFree(c));
    return cand[0].algo;
  }
  differs = reinterpret_cast<int*>(reinterpret_cast<char*>(c0) + bytes);
  BHASA_CUDA_CHECK(cudaMemsetAsync(c0, 0, bytes, stream_));
  int device = 0, l2 = 0;
  BHASA_CUDA_CHECK(cudaGetDevice(&device));
  BHASA_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
  const size_t flush_bytes = 2 * size_t(l2);
  void* flush = nullptr;
  if (cudaMalloc(&flush, flush_bytes) != cudaSuccess) cudaGetLastError(), flush = nullptr;  // then L2-warm
  cudaEvent_t ev[2 * kReps];
  for (cudaEvent_t& e : ev) BHASA_CUDA_CHECK(cudaEventCreate(&e));
  const float alpha = 1.0f, beta = 0.0f;
  int best = 0;
  int ref = -1;  // the first candidate that ran: its product is the reference
  int other_bits = 0;  // candidates left out for a product with other bits
  float best_ms = 1e30f, first_ms = 1e30f;
  for (int i = 0; i < n; ++i) {
    if (cand[i].state != CUBLAS_STATUS_SUCCESS) continue;
    auto call = [&] {
      return cublasLtMatmul(handle_, p.desc, &alpha, t.b, p.b, t.a, p.a, &beta, c, p.c, c, p.c, &cand[i].algo,
                            workspace_, workspace_bytes_, stream_);
    };
    if (call() != CUBLAS_STATUS_SUCCESS || call() != CUBLAS_STATUS_SUCCESS) continue;
    if (ref < 0) {
      BHASA_CUDA_CHECK(cudaMemcpyAsync(c0, c, bytes, cudaMemcpyDeviceToDevice, stream_));
    } else {
      int host_differs = 0;
      BHASA_CUDA_CHECK(cudaMemsetAsync(differs, 0, sizeof(int), stream_));
      differs_kernel<<<264, 256, 0, stream_>>>(bytes / 2, reinterpret_cast<const uint16_t*>(c0),
                                               reinterpret_cast<const uint16_t*>(c), differs);
      BHASA_CUDA_CHECK(cudaGetLastError());
      BHASA_CUDA_CHECK(cudaMemcpyAsync(&host_differs, differs, sizeof(int), cudaMemcpyDeviceToHost, stream_));
      BHASA_CUDA_CHECK(cudaStreamSynchronize(stream_));
      if (host_differs) {
        ++other_bits;
        continue;
      }
    }
    hold_kernel<<<1, 1, 0, stream_>>>(1000000);  // ~0.5 ms: longer than enqueueing what follows
    BHASA_CUDA_CHECK(cudaGetLastError());
    for (int r = 0; r < kReps; ++r) {
      if (flush) BHASA_CUDA_CHECK(cudaMemsetAsync(flush, r, flush_bytes, stream_));
      BHASA_CUDA_CHECK(cudaEventRecord(ev[2 * r], stream_));
      call();
      BHASA_CUDA_CHECK(cudaEventRecord(ev[2 * r + 1], stream_));
    }
    BHASA_CUDA_CHECK(cudaEventSynchronize(ev[2 * kReps - 1]));
    float ms[kReps];
    for (int r = 0; r < kReps; ++r) BHASA_CUDA_CHECK(cudaEventElapsedTime(&ms[r], ev[2 * r], ev[2 * r + 1]));
    std::sort(ms, ms + kReps);
    if (ref < 0) ref = i, first_ms = ms[kReps / 2];
    if (ms[kReps / 2] < best_ms) best_ms = ms[kReps / 2], best = i;
  }
  // Another algorithm only when clearly faster, so that the pick does not churn with the noise.
  if (best_ms > 0.98f * first_ms) best = std::max(ref, 0);
  if (std::getenv("BHASA_CUDA_TUNE_LOG"))
    std::fprintf(stderr, "[gemm tune] M %d ldc %d: %d candidates, %d with other bits; pick %d (%.4f ms, first %.4f)\n",
                 M, ldc, n, other_bits, best, best_ms, first_ms);
  for (cudaEvent_t e : ev) cudaEventDestroy(e);
  if (flush) BHASA_CUDA_CHECK(cudaFree(flush));
  BHASA_CUDA_CHECK(cudaFree(c0));
  BHASA_CUDA_CHECK(cudaFree(c));
  return cand[best].algo;
}

// torch: C = beta * C + (A.T if ta else A) @ (B.T if tb else B)
void Gemm::run(bool ta, bool tb, int M, int N, int K, ConstOperand A, int lda, ConstOperand B,
               int ldb, float beta, Operand C, int ldc, const float* R) {
  if (M == 0 || N == 0) return;
  const bool c_bf16 = C.dtype == Dtype::bf16;
  check(!R || (K > 0 && C.dtype == Dtype::f32), "Gemm::run: R needs K > 0 and an fp32 C");
  if (K == 0) {  // C = beta * C: nothing to multiply
    if (beta == 0.0f) {
      for (int r = 0; r < M; ++r)
        BHASA_CUDA_CHECK(cudaMemsetAsync((C + static_cast<size_t>(r) * ldc).p, 0, N * dtype_bytes(C.dtype), stream_));
      return;
    }
    if (beta == 1.0f) return;
  }
  const void* a = A.p;
  const void* b = B.p;
  // A thin output (x_proj's 80 columns, dt_proj's 48, their weight gradients) is
  // bound by reading the operands, not by the products: there the bf16 copies cost
  // more than bf16 saves (measured in bench/cuda_lab/gemm_math.cpp), so TF32 it is,
  // unless an operand is bf16 already.
  const bool has_bf16 = A.dtype == Dtype::bf16 || B.dtype == Dtype::bf16 || c_bf16;
  const GemmMath math = has_bf16                                            ? GemmMath::bf16
                        : math_ == GemmMath::bf16 && std::min(M, N) < 128 ? GemmMath::tf32
                                                                           : math_;
  if (math == GemmMath::bf16) {
    // Row-major stored shapes: A is (M, K), or (K, M) when ta; B is (K, N), or (N, K) when tb.
    if (A.dtype == Dtype::f32) a = to_bf16(A.f32(), ta ? K : M, ta ? M : K, lda, 0), lda = ta ? M : K;
    if (B.dtype == Dtype::f32) b = to_bf16(B.f32(), tb ? N : K, tb ? K : N, ldb, 1), ldb = tb ? K : N;
  }
  multiply(math, ta, tb, M, N, K, a, lda, b, ldb, beta, C.p, ldc, c_bf16, R);
}

void Gemm::run_bf16(bool ta, bool tb, int M, int N, int K, const __nv_bfloat16* A, int lda,
                    const __nv_bfloat16* B, int ldb, float beta, void* C, int ldc, bool c_bf16) {
  if (M == 0 || N == 0) return;
  check(K > 0, "Gemm::run_bf16: K must be positive");
  multiply(GemmMath::bf16, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, c_bf16);
}

void Gemm::multiply(GemmMath math, bool ta, bool tb, int M, int N, int K, const void* A, int lda,
                    const void* B, int ldb, float beta, void* C, int ldc, bool c_bf16, const void* R) {
  const Tune tune{A, B};
  const Plan& p = plan(Key{math, ta, tb, M, N, K, lda, ldb, ldc, alignment_of(A), alignment_of(B),
                           std::min(alignment_of(C), R ? alignment_of(R) : 16), c_bf16},
                       tune_all_ || (tune_large_ && double(M) * N * K >= kTuneMinMacs) ? &tune : nullptr);
  const float alpha = 1.0f;
  // cuBLASLt's C (read) and D (written) share a layout: R is read where given
  check_lt(cublasLtMatmul(handle_, p.desc, &alpha, B, p.b, A, p.a, &beta, R ? R : C, p.c, C, p.c, &p.algo,
                          workspace_, workspace_bytes_, stream_),
           "cublasLtMatmul");
}

// torch: C = beta * C + A @ W16.T  (W16 bf16; A rounded to bf16 unless a16 holds it already)
void Gemm::run_w16(int M, int N, int K, const float* A, int lda, const void* a16, const void* W16, int ldw,
                   float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  check(K > 0, "run_w16: K must be positive");
  const void* a = a16 ? a16 : to_bf16(A, M, K, lda, 0);
  const Key key{GemmMath::bf16, false, true, M, N, K, K, ldw, ldc, alignment_of(a), alignment_of(W16),
                alignment_of(C), false};
  const Tune tune{a, W16};
  const Plan& p = plan(key, tune_ ? &tune : nullptr);
  const float alpha = 1.0f;
  check_lt(cublasLtMatmul(handle_, p.desc, &alpha, W16, p.b, a, p.a, &beta, C, p.c, C, p.c, &p.algo,
                          workspace_, workspace_bytes_, stream_),
           "cublasLtMatmul");
}

}  // namespace bhasa::cuda

namespace bhasa {

const char* gemm_math_name(GemmMath m) {
  switch (m) {
    case GemmMath::fp32: return "fp32";
    case GemmMath::tf32: return "tf32";
    case GemmMath::bf16: return "bf16";
    case GemmMath::bf16_fast: return "bf16_fast";
  }
  return "?";
}

GemmMath parse_gemm_math(const std::string& s) {
  for (GemmMath m : {GemmMath::fp32, GemmMath::tf32, GemmMath::bf16, GemmMath::bf16_fast})
    if (s == gemm_math_name(m)) return m;
  throw Error("unknown GEMM precision '" + s + "': use fp32, tf32, bf16 or bf16_fast");
}

}  // namespace bhasa
