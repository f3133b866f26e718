// The training head at the mamba-130m shape (T = 16 x 2048 rows, V = 50280, D = 768):
// the separate ops the model ran before (gemm into (T, V) fp32 logits, cross_entropy in
// place, linear_backward with its bf16 copy of dlogits) against Backend::head_loss at a
// sweep of chunk sizes, with the op profile's parts; cuBLASLt's candidate algorithms for
// the three GEMMs; the logits GEMM alone with bf16 or fp32 output (cuda::Gemm::run_bf16).
// CUDA events, median of 15 after 3 warm-ups, random data (logits heavier than at init:
// the GEMMs here run ~10% slower than inside bench train).
// Floors: 3 GEMMs of 2 T V D = 7.59 TFLOP; the fused path's bytes are 10 per logit
// (bf16 written, read and rewritten by the cross-entropy, read by each backward GEMM).
// Run by bench/cuda_lab/run.sh; argv[1] (optional): a comma-separated list of chunks.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/gemm.cuh"
#include "kernels/kernels.h"
#include "lab_util.h"

using namespace bhasa;

namespace {

constexpr int T = 16 * 2048, V = 50280, D = 768;
constexpr double kFlops = 3 * 2.0 * T * double(V) * D;
constexpr double kCopyBytesPerMs = 4.29e9;  // the H200's measured device-copy rate

std::vector<float> uniform(size_t n, uint64_t s, float scale) {  // uniform on [-scale, scale)
  std::vector<float> v(n);
  s |= 1;
  for (auto& x : v) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    x = scale * (float(int32_t(s >> 40) & 0xffffff) / 8388608.0f - 1.0f);
  }
  return v;
}

// The inputs of one backend: X (T, D), W (V, D), targets (T), dX, dW.
struct Head {
  Backend& be;
  float *X, *W, *dX, *dW;
  int32_t* tg;
  Head(Backend& b, const std::vector<float>& x, const std::vector<float>& w, const std::vector<int32_t>& t) : be(b) {
    X = be.alloc(x.size()), W = be.alloc(w.size()), dX = be.alloc(x.size()), dW = be.alloc(w.size());
    tg = be.alloc_i32(t.size());
    be.upload(X, x.data(), x.size()), be.upload(W, w.data(), w.size()), be.upload_i32(tg, t.data(), t.size());
  }
  ~Head() {
    for (float* p : {X, W, dX, dW}) be.free(p);
    be.free(tg);
  }
  std::vector<float> host(const float* p, size_t n) {
    std::vector<float> v(n);
    be.download(v.data(), p, n);
    return v;
  }
};

void row(const char* name, double ms, double flops, double bytes) {
  std::printf("| %s | %.3f | %s | %s |\n", name, ms, flops > 0 ? std::to_string(flops / ms / 1e9).substr(0, 5).c_str() : "-",
              bytes > 0 ? (std::to_string(bytes / kCopyBytesPerMs).substr(0, 5) + " ms bytes floor").c_str() : "");
}

// cuBLASLt's heuristic candidates for one bf16 GEMM (row-major, as gemm.cu calls it),
// each timed (median of 5 after one warm-up): is the heuristic's first choice the fastest?
void probe_algos(cudaStream_t st, const char* name, bool ta, bool tb, int M, int N, int K, const void* A, int lda,
                 const void* B, int ldb, float beta, void* C, int ldc, bool c_bf16) {
  cublasLtHandle_t h;
  cublasLtCreate(&h);
  size_t ws_bytes = 32u << 20;
  void* ws = nullptr;
  cudaMalloc(&ws, ws_bytes);
  cublasLtMatmulDesc_t desc;
  cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  const cublasOperation_t op1 = tb ? CUBLAS_OP_T : CUBLAS_OP_N, op2 = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op1, sizeof(op1));
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op2, sizeof(op2));
  cublasLtMatrixLayout_t lb, la, lc;
  cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, tb ? K : N, tb ? N : K, ldb);
  cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, ta ? M : K, ta ? K : M, lda);
  cublasLtMatrixLayoutCreate(&lc, c_bf16 ? CUDA_R_16BF : CUDA_R_32F, N, M, ldc);
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes));
  cublasLtMatmulHeuristicResult_t res[16];
  int found = 0;
  cublasLtMatmulAlgoGetHeuristic(h, desc, lb, la, lc, lc, pref, 16, res, &found);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  const float alpha = 1.0f;
  std::printf("%s: %d candidates, ms:", name, found);
  for (int i = 0; i < found; ++i) {
    std::vector<float> ts;
    for (int r = 0; r < 6; ++r) {
      cudaEventRecord(e0, st);
      const cublasStatus_t stat = cublasLtMatmul(h, desc, &alpha, B, lb, A, la, &beta, C, lc, C, lc, &res[i].algo,
                                                 ws, ws_bytes, st);
      cudaEventRecord(e1, st);
      cudaEventSynchronize(e1);
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      if (stat != CUBLAS_STATUS_SUCCESS) ms = -1;
      if (r > 0) ts.push_back(ms);
    }
    std::sort(ts.begin(), ts.end());
    std::printf(" %.3f", ts[ts.size() / 2]);
  }
  std::printf("\n");
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(desc);
  cudaFree(ws);
  cublasLtDestroy(h);
}

}  // namespace

int main(int argc, char** argv) {
  if (!cuda_gpu_available()) {
    std::printf("no CUDA GPU: nothing to measure\n");
    return 0;
  }
  std::vector<int> chunks = {8192, 16384, 32768};
  if (argc > 1) {
    chunks.clear();
    for (std::string s = argv[1]; !s.empty();) {
      const size_t k = s.find(',');
      chunks.push_back(std::atoi(s.substr(0, k).c_str()));
      s = k == std::string::npos ? "" : s.substr(k + 1);
    }
  }
  // logits with std ~4.6 (x uniform on [-1, 1), w on [-0.5, 0.5), sums of D = 768)
  const auto x = uniform(size_t(T) * D, 11, 1.0f), w = uniform(size_t(V) * D, 12, 0.5f);
  std::vector<int32_t> targets(T);
  uint64_t s = 99;
  for (int t = 0; t < T; ++t) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    targets[t] = (t + 1) % 2048 ? int32_t((s >> 33) % V) : -1;  // the bench's layout: last position ignored
  }
  const float scale = 1.0f / float(T - T / 2048);
  const double logit_n = double(T) * V;

  auto old_be = make_cuda_backend();
  std::printf("training head (T, V, D) = (%d, %d, %d) on %s\n", T, V, D, old_be->name().c_str());
  std::printf("\n| variant | ms (median of 15) | TFLOP/s (7.59 TFLOP) | note |\n|---|---|---|---|\n");
  std::vector<float> ref_dX, ref_dW;
  double ref_loss = 0;
  {
    Head h(*old_be, x, w, targets);
    float* logits = old_be->alloc(size_t(T) * V);  // (T, V) fp32
    auto fwd = [&] { old_be->gemm(false, true, T, V, D, h.X, D, h.W, D, 0.f, logits, V); };
    auto xent = [&] { return old_be->cross_entropy(T, V, logits, V, h.tg, scale); };
    auto lb = [&] { old_be->linear_backward(T, V, D, logits, V, h.W, D, h.X, D, 0.f, h.dX, D, h.dW); };
    const double t_fwd = median_ms(*old_be, fwd);
    const double t_fx = median_ms(*old_be, [&] { fwd(), xent(); });
    const double t_lb = median_ms(*old_be, lb);
    const double t_all = median_ms(*old_be, [&] { fwd(), xent(), lb(); });
    row("old: gemm fwd, fp32 logits", t_fwd, kFlops / 3, 4.0 * logit_n);
    row("old: cross_entropy (fwd+xent - fwd)", t_fx - t_fwd, 0, 8.0 * logit_n);
    row("old: linear_backward (bf16 copy + dX + dW)", t_lb, 2 * kFlops / 3, 0);
    row("**old: gemm + cross_entropy + linear_backward**", t_all, kFlops, 14.0 * logit_n);
    old_be->zero(h.dW, size_t(V) * D);
    fwd();
    ref_loss = xent();
    lb();
    ref_dX = h.host(h.dX, size_t(T) * D);
    ref_dW = h.host(h.dW, size_t(V) * D);
    // logits now holds real dlogits: their bf16 copy feeds the candidates of the backward GEMMs
    auto st = static_cast<cudaStream_t>(cuda_stream_of(*old_be));
    cuda::Gemm g(st, GemmMath::bf16);
    const __nv_bfloat16* dlb = g.to_bf16(logits, T, V, V, 0);
    const __nv_bfloat16* Xb = g.to_bf16(h.X, T, D, D, 1);
    cuda::Gemm g2(st, GemmMath::bf16);
    const __nv_bfloat16* Wb = g2.to_bf16(h.W, V, D, D, 0);
    float* out = old_be->alloc(size_t(8192) * V / 2);  // (8192, V) bf16
    old_be->synchronize();
    std::printf("\ncuBLASLt candidates (heuristic order) for the chunk-8192 GEMMs:\n");
    probe_algos(st, "logits (8192, V, D) bf16 out", false, true, 8192, V, D, Xb, D, Wb, D, 0.f, out, V, true);
    probe_algos(st, "dX (8192, D, V)", false, false, 8192, D, V, dlb, V, Wb, D, 0.f, h.dX, D, false);
    probe_algos(st, "dW += (V, D, 8192)", true, false, V, D, 8192, dlb, V, Xb, D, 1.f, h.dW, D, false);
    std::printf("\n| variant | ms (median of 15) | TFLOP/s (7.59 TFLOP) | note |\n|---|---|---|---|\n");
    old_be->free(out);
    old_be->free(logits);
  }
  old_be.reset();

  // head_loss at each chunk, then once more with the op profile (its parts, printed at exit)
  struct Variant {
    int chunk;
    bool profile;
  };
  std::vector<Variant> variants;
  for (int chunk : chunks) variants.push_back({chunk, false});
  variants.push_back({16384, true});
  for (const Variant& v : variants) {
    CudaOptions o;
    o.head_chunk = v.chunk;
    if (v.profile) setenv("BHASA_CUDA_PROFILE", "1", 1);
    auto be = make_cuda_backend(o);
    unsetenv("BHASA_CUDA_PROFILE");
    Head h(*be, x, w, targets);
    double loss = 0;
    const double ms = median_ms(*be, [&] { loss = be->head_loss(T, V, D, h.X, h.W, h.tg, scale, h.dX, h.dW); });
    be->zero(h.dW, size_t(V) * D);
    loss = be->head_loss(T, V, D, h.X, h.W, h.tg, scale, h.dX, h.dW);
    const double e_loss = std::fabs(loss - ref_loss) / ref_loss;
    const double e_dx = rel_l2(h.host(h.dX, size_t(T) * D), ref_dX), e_dw = rel_l2(h.host(h.dW, size_t(V) * D), ref_dW);
    const std::string name = "**head_loss, chunk " + std::to_string(v.chunk) + (v.profile ? ", profiled" : "") + "**";
    row(name.c_str(), ms, kFlops, 10.0 * logit_n);
    std::printf("|   vs old: loss rel %.2e, dX %.2e, dW %.2e | | | bf16 logits: %.0f MB |\n", e_loss, e_dx, e_dw,
                2.0 * std::min(v.chunk, T) * V / 1e6);
    std::fflush(stdout);
  }

  // The logits GEMM alone: bf16 or fp32 output (the other two GEMMs: the profile's parts).
  {
    auto be = make_cuda_backend();
    auto stream = static_cast<cudaStream_t>(cuda_stream_of(*be));
    cuda::Gemm g(stream, GemmMath::bf16);
    Head h(*be, x, w, targets);
    for (int rows : {8192, 16384, 32768}) {
      float* out = be->alloc(size_t(rows) * V);  // fp32 C, or bf16 C in its first half
      const __nv_bfloat16* Xb = g.to_bf16(h.X, T, D, D, 0);
      const __nv_bfloat16* Wb = g.to_bf16(h.W, V, D, D, 1);
      const double n = T / rows;  // chunks per batch
      const double f1 = 2.0 * rows * double(V) * D;
      const double fb = median_ms(*be, [&] { g.run_bf16(false, true, rows, V, D, Xb, D, Wb, D, 0.f, out, V, true); });
      const double ff = median_ms(*be, [&] { g.run_bf16(false, true, rows, V, D, Xb, D, Wb, D, 0.f, out, V, false); });
      const std::string r = std::to_string(rows) + ", V, D) x " + std::to_string(int(n));
      row(("  gemm logits, bf16 out (" + r).c_str(), fb * n, f1 * n, 2.0 * logit_n);
      row(("  gemm logits, fp32 out (" + r).c_str(), ff * n, f1 * n, 4.0 * logit_n);
      be->free(out);
    }
  }
  std::printf("\nfloors: GEMMs 7.59 TFLOP / 790 TFLOP/s = 9.6 ms; the fused path's logit bytes 10 x T x V = "
              "16.5 GB / 4.29 TB/s = 3.84 ms (of which the cross-entropy's 4 x T x V: 1.54 ms)\n");
  return 0;
}
