// Each op of a decode step on the m130 shape, timed alone: 24 calls captured in one
// CUDA graph (as in the decode graph: no launch gaps from the host), weights rotated
// over copies so that they come from DRAM (8 copies of a layer's 15 MB, 2 of the
// 154 MB head), median of 15 replays, per call. Floor: weight bytes / 4.29 TB/s.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/kernels.h"

using namespace bhasa;

namespace {

constexpr int D = 768, E = 1536, N = 16, R = 48, K = 4, P = R + 2 * N, V = 50280;
constexpr int kCopies = 8, kCalls = 24;

struct Layer {  // one copy of a layer's weights
  float *norm_w, *in_proj, *conv_w, *conv_b, *x_proj, *dt_w, *dt_b, *A_log, *Dp, *out_proj;
};

float* rnd(Backend& be, size_t n, std::mt19937& rng, float scale, float mean = 0.f) {
  std::normal_distribution<float> d(mean, scale);
  std::vector<float> h(n);
  for (auto& x : h) x = d(rng);
  float* p = be.alloc(n);
  be.upload(p, h.data(), n);
  return p;
}

double time_op(Backend& be, const std::function<void(int)>& op) {
  cudaStream_t s = static_cast<cudaStream_t>(cuda_stream_of(be));
  for (int i = 0; i < kCalls; ++i) op(i);  // warm-up: sizes scratch, picks algorithms
  be.synchronize();
  be.graph_begin_capture();
  for (int i = 0; i < kCalls; ++i) op(i);
  const int g = be.graph_end_capture();
  be.graph_replay(g);
  be.synchronize();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> ms;
  for (int r = 0; r < 15; ++r) {
    cudaEventRecord(a, s);
    be.graph_replay(g);
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  be.graph_destroy(g);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return 1e3 * ms[ms.size() / 2] / kCalls;  // us per call
}

void run(const char* label, const CudaOptions& opt) {
  auto be = make_cuda_backend(opt);
  std::mt19937 rng(1);
  std::vector<Layer> L(kCopies);
  for (auto& l : L) {
    l.norm_w = rnd(*be, D, rng, 0.1f, 1.f);
    l.in_proj = rnd(*be, size_t(2 * E) * D, rng, 0.03f);
    l.conv_w = rnd(*be, size_t(E) * K, rng, 0.3f);
    l.conv_b = rnd(*be, E, rng, 0.1f);
    l.x_proj = rnd(*be, size_t(P) * E, rng, 0.02f);
    l.dt_w = rnd(*be, size_t(E) * R, rng, 0.1f);
    l.dt_b = rnd(*be, E, rng, 0.3f, -2.f);
    l.A_log = rnd(*be, size_t(E) * N, rng, 0.3f, 1.f);
    l.Dp = rnd(*be, E, rng, 1.f);
    l.out_proj = rnd(*be, size_t(D) * E, rng, 0.02f);
  }
  float* head[2] = {rnd(*be, size_t(V) * D, rng, 0.02f), rnd(*be, size_t(V) * D, rng, 0.02f)};
  for (int B : {1, 64}) {
    float *x = rnd(*be, size_t(B) * D, rng, 1.f), *h = be->alloc(size_t(B) * D),
          *xz = rnd(*be, size_t(B) * 2 * E, rng, 1.f), *xs = be->alloc(size_t(B) * E),
          *dbc = rnd(*be, size_t(B) * P, rng, 0.5f), *dt = be->alloc(size_t(B) * E), *y = be->alloc(size_t(B) * E),
          *stats = be->alloc(2 * B), *logits = rnd(*be, size_t(B) * V, rng, 1.f),
          *conv = rnd(*be, size_t(kCopies) * B * (K - 1) * E, rng, 1.f),
          *ssm = rnd(*be, size_t(kCopies) * B * E * N, rng, 0.1f);
    int32_t *counter = be->alloc_i32(1), *ids = be->alloc_i32(B), *hist = be->alloc_i32(size_t(B) * 256);
    auto cs = [&](int i) { return conv + size_t(i % kCopies) * B * (K - 1) * E; };
    auto hs = [&](int i) { return ssm + size_t(i % kCopies) * B * E * N; };
    struct Row { const char* name; double floor_bytes; std::function<void(int)> op; };
    const double lw = 4.0 * (2.0 * E * D + P * E + E * R + D * E);
    std::vector<Row> rows = {
        {"norm", 0, [&](int i) { be->norm_forward(B, D, true, 1e-5f, x, L[i % kCopies].norm_w, nullptr, h, stats, stats + B); }},
        {"in_proj gemm (B,3072,768)", 4.0 * 2 * E * D, [&](int i) { be->gemm(false, true, B, 2 * E, D, h, D, L[i % kCopies].in_proj, D, 0.f, xz, 2 * E); }},
        {"conv with state", 0, [&](int i) { be->conv1d_silu_with_state(B, 1, E, K, xz, 2 * E, L[i % kCopies].conv_w, L[i % kCopies].conv_b, cs(i), xs); }},
        {"x_proj gemm (B,80,1536)", 4.0 * P * E, [&](int i) { be->gemm(false, true, B, P, E, xs, E, L[i % kCopies].x_proj, E, 0.f, dbc, P); }},
        {"dt_proj gemm (B,1536,48)", 4.0 * E * R, [&](int i) { be->gemm(false, true, B, E, R, dbc, P, L[i % kCopies].dt_w, R, 0.f, dt, E); }},
        {"scan L=1", 0, [&](int i) { be->scan_forward(B, 1, E, N, 64, xs, dt, L[i % kCopies].dt_b, L[i % kCopies].A_log, dbc + R, dbc + R + N, P, L[i % kCopies].Dp, xz + E, 2 * E, y, nullptr, hs(i), hs(i)); }},
        {"out_proj gemm (B,768,1536) beta 1", 4.0 * D * E, [&](int i) { be->gemm(false, true, B, D, E, y, E, L[i % kCopies].out_proj, E, 1.f, x, D); }},
        {"NEW norm_gemm in_proj", 4.0 * 2 * E * D, [&](int i) { be->norm_gemm(B, 2 * E, D, true, 1e-5f, x, L[i % kCopies].norm_w, nullptr, L[i % kCopies].in_proj, xz); }},
        {"NEW ssm_decode_in (conv + x_proj)", 4.0 * P * E, [&](int i) { be->ssm_decode_in(B, E, K, P, xz, 2 * E, cs(i), L[i % kCopies].conv_w, L[i % kCopies].conv_b, L[i % kCopies].x_proj, dbc); }},
        {"NEW ssm_decode_step", 4.0 * E * R, [&](int i) { be->ssm_decode_step(B, E, N, R, K, xz, xz + E, 2 * E, cs(i), L[i % kCopies].conv_w, L[i % kCopies].conv_b, dbc, L[i % kCopies].dt_w, L[i % kCopies].dt_b, L[i % kCopies].A_log, L[i % kCopies].Dp, hs(i), y); }},
        {"lm_head gemm (B,50280,768)", 4.0 * V * D, [&](int i) { be->gemm(false, true, B, V, D, h, D, head[i % 2], D, 0.f, logits, V); }},
        {"NEW norm_gemm lm_head", 4.0 * V * D, [&](int i) { be->norm_gemm(B, V, D, true, 1e-5f, x, L[0].norm_w, nullptr, head[i % 2], logits); }},
        {"sample_tokens greedy", 0, [&](int i) { be->sample_tokens(B, V, logits, 0.f, 1, counter, ids, hist, 256); }},
    };
    std::printf("\n%s, B=%d (layer weights %.1f MB: floor %.2f us)\n| op | us/call | weight floor us |\n|---|---|---|\n",
                label, B, lw / 1e6, lw / 4.29e6);
    for (auto& r : rows) {
      const int32_t zero = 0;
      be->upload_i32(counter, &zero, 1);
      std::printf("| %s | %.2f | %.2f |\n", r.name, time_op(*be, r.op), r.floor_bytes / 4.29e6);
      std::fflush(stdout);
    }
    for (float* p : {x, h, xz, xs, dbc, dt, y, stats, logits, conv, ssm}) be->free(p);
    be->free(counter), be->free(ids), be->free(hist);
  }
}

}  // namespace

int main(int argc, char**) {
  try {
    CudaOptions opt;
    run("gemv + pdl", opt);
    if (argc > 1) {  // the comparisons
      opt.pdl = false;
      run("gemv, no pdl", opt);
      opt.gemv = false;
      run("cuBLASLt (no gemv), no pdl", opt);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "decode_ops failed: %s\n", e.what());
    return 1;
  }
  return 0;
}
