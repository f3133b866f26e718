// The decode GEMMs at batch M (default 64) on the m130 shape through cuBLASLt with bf16
// weights: every candidate of cuBLASLt's heuristic (up to 16), each timed two ways:
//   cold: 24 calls captured in a CUDA graph, the weight rotated over copies that do not
//         fit in L2 (as in a decode step, where each weight is read once from DRAM),
//         median of 9 replays, per call;
//   tune: as the backend's autotune (Gemm::fastest) times it on one weight: queued calls,
//         L2 flushed before each, events around each, median of 5.
// Against the TF32 GEMM on fp32 weights (heuristic's first; main's decode path today).
// Floor: weight bytes / 4.29 TB/s. Usage: cuda_decode_gemm [M ...]; build (no libbhasa needed):
//   g++ -O2 -std=c++20 -I../../src -I$CUDA/include decode_gemm.cpp -L$CUDA/lib64 -lcublasLt -lcudart
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "lab_util.h"  // CK, LT, graph_us

namespace {

cublasLtHandle_t lt;
cudaStream_t stream;
void* workspace;
constexpr size_t kWs = 32u << 20;

struct Shape {
  const char* name;
  int N, K;
  float beta;
};

// Row-major C (M, N) = A (M, K) @ W^T: column-major C^T (N, M) = W (K, N)^T... i.e.
// first operand W with op T (stored (K, N) col-major = (N, K) row-major), second A op N.
struct Problem {
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t lw, la, lc;
};

Problem make_problem(bool bf16, int M, int N, int K) {
  Problem p;
  const cublasComputeType_t ct = bf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
  const cudaDataType_t dt = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  LT(cublasLtMatmulDescCreate(&p.desc, ct, CUDA_R_32F));
  const cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
  LT(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
  LT(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof(n)));
  LT(cublasLtMatrixLayoutCreate(&p.lw, dt, K, N, K));
  LT(cublasLtMatrixLayoutCreate(&p.la, dt, K, M, K));
  LT(cublasLtMatrixLayoutCreate(&p.lc, CUDA_R_32F, N, M, N));
  return p;
}

int candidates(const Problem& p, cublasLtMatmulHeuristicResult_t* out, int want) {
  cublasLtMatmulPreference_t pref;
  LT(cublasLtMatmulPreferenceCreate(&pref));
  LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kWs, sizeof(kWs)));
  int found = 0;
  LT(cublasLtMatmulAlgoGetHeuristic(lt, p.desc, p.lw, p.la, p.lc, p.lc, pref, want, out, &found));
  cublasLtMatmulPreferenceDestroy(pref);
  return found;
}

std::string describe(const cublasLtMatmulAlgo_t& a) {
  int id = 0, tile = 0, split = 0, red = 0, swz = 0, stages = 0, custom = 0;
  uint16_t cluster = 0;
  size_t w = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof(split), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof(red), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swz, sizeof(swz), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &custom, sizeof(custom), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof(cluster), &w);
  char buf[160];
  std::snprintf(buf, sizeof buf, "id %d tile %d split %d red %d swz %d stages %d custom %d cluster %d", id, tile,
                split, red, swz, stages, custom, int(cluster));
  return buf;
}

// uniform in [-0.05, 0.05) from a 64-bit LCG (fast enough for the 100s of MB here)
template <typename T>
T* device_random(size_t n, std::mt19937& rng) {
  uint64_t z = rng() | 1;
  std::vector<T> h(n);
  for (auto& x : h) {
    z = z * 6364136223846793005ull + 1442695040888963407ull;
    x = T(float(z >> 40) * (0.1f / 16777216.f) - 0.05f);
  }
  T* p;
  CK(cudaMalloc(&p, n * sizeof(T)));
  CK(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// us per call; -1 when the algorithm fails on this problem
float time_cold(const Problem& p, const cublasLtMatmulAlgo_t* algo, const void* A, const std::vector<void*>& W,
                float* C, float beta) {
  const float alpha = 1.f;
  constexpr int kCalls = 24;
  auto call = [&](int i) {
    return cublasLtMatmul(lt, p.desc, &alpha, W[i % W.size()], p.lw, A, p.la, &beta, C, p.lc, C, p.lc, algo,
                          workspace, kWs, stream);
  };
  for (int i = 0; i < kCalls; ++i)
    if (call(i) != CUBLAS_STATUS_SUCCESS) return -1.f;
  CK(cudaStreamSynchronize(stream));
  return float(graph_us(stream, kCalls, [&](int i) { call(i); }, 9));
}

// As Gemm::fastest times a candidate: the stream held (here by a host function that
// sleeps) while 5 calls are queued, each after a memset that flushes L2 and between
// two events; median. This times the GPU, not the host's enqueueing.
void* flush_buf = nullptr;
size_t flush_bytes = 0;
float time_tune(const Problem& p, const cublasLtMatmulAlgo_t* algo, const void* A, const void* W, float* C,
                float beta) {
  const float alpha = 1.f;
  auto call = [&] {
    return cublasLtMatmul(lt, p.desc, &alpha, W, p.lw, A, p.la, &beta, C, p.lc, C, p.lc, algo, workspace, kWs, stream);
  };
  if (call() != CUBLAS_STATUS_SUCCESS || call() != CUBLAS_STATUS_SUCCESS) return -1.f;
  cudaEvent_t ev[10];
  for (auto& e : ev) CK(cudaEventCreate(&e));
  CK(cudaLaunchHostFunc(stream, [](void*) { usleep(1000); }, nullptr));
  for (int r = 0; r < 5; ++r) {
    CK(cudaMemsetAsync(flush_buf, r, flush_bytes, stream));
    CK(cudaEventRecord(ev[2 * r], stream));
    call();
    CK(cudaEventRecord(ev[2 * r + 1], stream));
  }
  CK(cudaEventSynchronize(ev[9]));
  std::vector<float> ms;
  for (int r = 0; r < 5; ++r) {
    float t;
    CK(cudaEventElapsedTime(&t, ev[2 * r], ev[2 * r + 1]));
    ms.push_back(t);
  }
  for (auto& e : ev) cudaEventDestroy(e);
  return 1e3f * median(ms);
}

void run_shape(int M, const Shape& s, std::mt19937& rng) {
  const size_t wn = size_t(s.N) * s.K;
  // enough copies that the rotation does not fit in the 50 MB L2 (fp32 sizes: 2 copies of the head)
  const int copies = int(std::clamp<size_t>((160u << 20) / (wn * 2) + 1, 2, 24));
  std::vector<void*> w32, w16;
  for (int i = 0; i < copies; ++i) {
    w32.push_back(device_random<float>(wn, rng));
    w16.push_back(device_random<__nv_bfloat16>(wn, rng));
  }
  float* a32 = device_random<float>(size_t(M) * s.K, rng);
  __nv_bfloat16* a16 = device_random<__nv_bfloat16>(size_t(M) * s.K, rng);
  float* C = device_random<float>(size_t(M) * s.N, rng);
  std::printf("\n### %s (M %d, N %d, K %d, beta %g): bf16 weight %.2f MB, floor %.2f us (fp32 %.2f us); %d copies\n",
              s.name, M, s.N, s.K, s.beta, wn * 2 / 1e6, wn * 2 / 4.29e6, wn * 4 / 4.29e6, copies);
  std::printf("| candidate | cold us (graph) | tune us (as Gemm::fastest) | algo |\n|---|---|---|---|\n");
  Problem pt = make_problem(false, M, s.N, s.K);
  cublasLtMatmulHeuristicResult_t r[16];
  if (candidates(pt, r, 1) > 0)
    std::printf("| tf32 fp32 weights, heuristic 0 | %.2f | %.2f | %s |\n", time_cold(pt, &r[0].algo, a32, w32, C, s.beta),
                time_tune(pt, &r[0].algo, a32, w32[0], C, s.beta), describe(r[0].algo).c_str());
  Problem pb = make_problem(true, M, s.N, s.K);
  const int found = candidates(pb, r, 16);
  float best = 1e30f, best_hot_cold = 0, best_hot = 1e30f;
  int best_i = -1, hot_i = -1;
  for (int i = 0; i < found; ++i) {
    const float cold = time_cold(pb, &r[i].algo, a16, w16, C, s.beta);
    const float hot = time_tune(pb, &r[i].algo, a16, w16[0], C, s.beta);
    std::printf("| bf16 heuristic %d | %.2f | %.2f | %s, waves %.2f, ws %zu |\n", i, cold, hot,
                describe(r[i].algo).c_str(), r[i].wavesCount, r[i].workspaceSize);
    if (cold > 0 && cold < best) best = cold, best_i = i;
    if (hot > 0 && hot < best_hot) best_hot = hot, hot_i = i, best_hot_cold = cold;
  }
  std::printf("best cold: heuristic %d, %.2f us; the autotune's pick: heuristic %d, %.2f us cold\n",
              best_i, best, hot_i, best_hot_cold);
  std::fflush(stdout);
  for (void* p : w32) cudaFree(p);
  for (void* p : w16) cudaFree(p);
  cudaFree(a32), cudaFree(a16), cudaFree(C);
}

}  // namespace

int main(int argc, char** argv) {
  CK(cudaSetDevice(0));
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  LT(cublasLtCreate(&lt));
  CK(cudaMalloc(&workspace, kWs));
  int l2 = 0;
  CK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
  flush_bytes = 2 * size_t(l2);
  CK(cudaMalloc(&flush_buf, flush_bytes));
  std::vector<int> ms;
  for (int i = 1; i < argc; ++i) ms.push_back(std::atoi(argv[i]));
  if (ms.empty()) ms = {64};
  const Shape shapes[] = {{"in_proj", 3072, 768, 0.f},
                          {"x_proj", 80, 1536, 0.f},
                          {"out_proj", 768, 1536, 1.f},
                          {"lm_head", 50280, 768, 0.f}};
  std::mt19937 rng(1);
  for (int M : ms)
    for (const Shape& s : shapes) run_shape(M, s, rng);
  return 0;
}
