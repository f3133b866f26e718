// Shared by the kernel labs: error checks that end the lab, event-timed medians through the
// backend's marks or of a CUDA graph on a stream, the relative L2 error, bf16 rounding on the host (round to nearest even,
// as the GPU), random inputs and a hash of outputs (variants compared bit for bit).
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "kernels/kernels.h"

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));   \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)
#define LT(x)                                                                                   \
  do {                                                                                          \
    cublasStatus_t s_ = (x);                                                                    \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                          \
      std::fprintf(stderr, "%s:%d %s: status %d\n", __FILE__, __LINE__, #x, int(s_));           \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

// Median of `iters` runs of f after `warmup`, timed with the backend's marks (CUDA events
// on its stream), in ms.
inline double median_ms(bhasa::Backend& be, const std::function<void()>& f, int warmup = 3, int iters = 15) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> ts;
  for (int i = 0; i < iters; ++i) {
    be.mark(0);
    f();
    be.mark(1);
    ts.push_back(be.seconds(0, 1) * 1e3);
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

// A device copy of h (cudaMalloc; the caller frees it).
template <typename T>
T* upload(const std::vector<T>& h) {
  T* p;
  CK(cudaMalloc(&p, h.size() * sizeof(T)));
  CK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

// Microseconds per call of op, captured `calls` times (op(i): the i-th call, e.g. on its own
// weight copy) in one CUDA graph on `stream`, replayed `reps` times after one warm-up
// replay; CUDA events, median. The caller has run op once outside the graph (errors).
inline double graph_us(cudaStream_t stream, int calls, const std::function<void(int)>& op, int reps = 15) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) op(i);
  CK(cudaStreamEndCapture(stream, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  CK(cudaGraphLaunch(ge, stream));
  std::vector<float> ms;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(a, stream));
    CK(cudaGraphLaunch(ge, stream));
    CK(cudaEventRecord(b, stream));
    CK(cudaEventSynchronize(b));
    float t;
    CK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  cudaGraphExecDestroy(ge), cudaGraphDestroy(g);
  std::sort(ms.begin(), ms.end());
  return 1e3 * ms[ms.size() / 2] / calls;
}

// cuBLASLt's decode product C (M, N) fp32 = A (M, K) bf16 @ W (N, K)^T bf16 + beta C, as the
// column-major C^T (N, M) = W (K, N)^T A (K, M): the heuristic's candidates (up to 8), each run
// by its index, so that a lab can time them all and keep the best.
struct LtDecodeGemm {
  cublasLtHandle_t lt;
  void* ws;
  size_t ws_bytes;
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t lw, la, lc;
  cublasLtMatmulHeuristicResult_t r[8];
  int found = 0;
  LtDecodeGemm(cublasLtHandle_t handle, void* workspace, size_t workspace_bytes, int M, int N, int K)
      : lt(handle), ws(workspace), ws_bytes(workspace_bytes) {
    LT(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
    LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
    LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof(n)));
    LT(cublasLtMatrixLayoutCreate(&lw, CUDA_R_16BF, K, N, K));
    LT(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, K, M, K));
    LT(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, N, M, N));
    cublasLtMatmulPreference_t pref;
    LT(cublasLtMatmulPreferenceCreate(&pref));
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                            sizeof(ws_bytes)));
    LT(cublasLtMatmulAlgoGetHeuristic(lt, desc, lw, la, lc, lc, pref, 8, r, &found));
    cublasLtMatmulPreferenceDestroy(pref);
  }
  ~LtDecodeGemm() {
    cublasLtMatrixLayoutDestroy(lw), cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(desc);
  }
  LtDecodeGemm(const LtDecodeGemm&) = delete;
  LtDecodeGemm& operator=(const LtDecodeGemm&) = delete;
  void run(int i, const void* W, const void* A, float beta, float* C, cudaStream_t stream) const {
    const float alpha = 1.f;
    LT(cublasLtMatmul(lt, desc, &alpha, W, lw, A, la, &beta, C, lc, C, lc, &r[i].algo, ws, ws_bytes, stream));
  }
};

// ||a - b|| / ||b||; infinite when a holds a NaN or an infinity.
inline double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-60));
}

inline uint16_t bf16_bits(float f) {  // torch: x.to(torch.bfloat16) (finite x)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float from_bf16_bits(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Uniform on [-sqrt(3), sqrt(3)] (unit variance), one xorshift stream for the whole lab.
inline float urand() {
  static uint64_t state = 88172645463325252ull;
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return 1.7320508f * (float(int32_t(state >> 40) & 0xffffff) / 8388608.0f - 1.0f);
}

// FNV-1a over 8-byte words, then a 4-byte tail: n a multiple of 4.
inline uint64_t fnv(const void* p, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* c = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, c + i, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  if (n % 8 >= 4) {
    uint32_t w;
    std::memcpy(&w, c + n / 8 * 8, 4);
    h = (h ^ w) * 1099511628211ull;
  }
  return h;
}
