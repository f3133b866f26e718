// Each op of a decode step on the m130 shape, timed alone: 24 calls captured in one
// CUDA graph (as in the decode graph: no launch gaps from the host), weights rotated
// over copies so that they come from DRAM (8 copies of a layer's 15 MB, 2 of the
// 154 MB head), median of 15 replays, per call. Floor: weight bytes / 4.29 TB/s.
// The weights live in one arena that is frozen (Backend::freeze_weights), so in bf16
// mode the decode GEMMs read its bf16 copy; a tf32 backend is main's path.
// Usage: cuda_decode_ops [all | bf16]: all adds bf16 weights with cuBLASLt's first algorithm (no
// autotune); bf16 runs the bf16 backend only. BHASA_CUDA_Y16 sets its option.
// The "step + out_proj" rows compare the decode step's y in fp32 (then rounded for
// out_proj's cuBLASLt by rows_to_bf16) with y in decode_dtype(B) (bf16 at 8 < B <= 64).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/kernels.h"
#include "graph_timer.h"

using namespace bhasa;

namespace {

constexpr int D = 768, E = 1536, N = 16, R = 48, K = 4, P = R + 2 * N, V = 50280;
constexpr int kCopies = 8, kCalls = 24;

struct Layer {  // one copy of a layer's weights
  float *norm_w, *in_proj, *conv_w, *conv_b, *x_proj, *dt_w, *dt_b, *A_log, *Dp, *out_proj;
};

// Weights come out of one arena (so that one freeze covers them), 64-float aligned.
struct Arena {
  float* base = nullptr;
  size_t used = 0, cap = 0;
};
Arena* arena = nullptr;

float* rnd(Backend& be, size_t n, std::mt19937& rng, float scale, float mean = 0.f) {
  std::normal_distribution<float> d(mean, scale);
  std::vector<float> h(n);
  for (auto& x : h) x = d(rng);
  float* p = nullptr;
  if (arena) {
    if (arena->used + n > arena->cap) throw std::runtime_error("arena too small");
    p = arena->base + arena->used;
    arena->used += (n + 63) / 64 * 64;
  } else {
    p = be.alloc(n);
  }
  be.upload(p, h.data(), n);
  return p;
}

double time_op(Backend& be, const std::function<void(int)>& op) { return time_in_graph(be, kCalls, op); }

void run(const char* label, const CudaOptions& opt) {
  auto be = make_cuda_backend(opt);
  std::mt19937 rng(1);
  Arena ar;
  ar.cap = size_t(kCopies) * (64 * 12 + D + 2 * E * D + E * K + 3 * E + P * E + E * R + E * N + D * E) +
           2 * (size_t(V) * D + 64);
  ar.base = be->alloc(ar.cap);
  arena = &ar;
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
  arena = nullptr;
  be->freeze_weights(ar.base, ar.used);
  for (int B : {1, 16, 64}) {
    // inputs random, not zeros (a product of zeros can run faster than one of data)
    float *x = rnd(*be, size_t(B) * D, rng, 1.f), *h = rnd(*be, size_t(B) * D, rng, 1.f),
          *xz = rnd(*be, size_t(B) * 2 * E, rng, 1.f), *xs = rnd(*be, size_t(B) * E, rng, 1.f),
          *dbc = rnd(*be, size_t(B) * P, rng, 0.5f), *dt = be->alloc(size_t(B) * E), *y = rnd(*be, size_t(B) * E, rng, 1.f),
          *stats = be->alloc(2 * B), *logits = rnd(*be, size_t(B) * V, rng, 1.f),
          *conv = rnd(*be, size_t(kCopies) * B * (K - 1) * E, rng, 1.f),
          *ssm = rnd(*be, size_t(kCopies) * B * E * N, rng, 0.1f);
    // y in the dtype the decode step writes at this batch (bf16 for 8 < B <= 64 in bf16 mode)
    const Operand y16 = be->alloc_operand(size_t(B) * E, be->decode_dtype(B));
    int32_t *counter = be->alloc_i32(1), *ids = be->alloc_i32(B), *hist = be->alloc_i32(size_t(B) * 256);
    auto cs = [&](int i) { return conv + size_t(i % kCopies) * B * (K - 1) * E; };
    auto hs = [&](int i) { return ssm + size_t(i % kCopies) * B * E * N; };
    struct Row { const char* name; double floor_bytes; std::function<void(int)> op; };
    const double lw = 4.0 * (2.0 * E * D + P * E + E * R + D * E);
    std::vector<Row> rows = {
        {"in_proj gemm (B,3072,768)", 4.0 * 2 * E * D, [&](int i) { be->gemm(false, true, B, 2 * E, D, h, D, L[i % kCopies].in_proj, D, 0.f, xz, 2 * E); }},
        {"x_proj gemm (B,80,1536)", 4.0 * P * E, [&](int i) { be->gemm(false, true, B, P, E, xs, E, L[i % kCopies].x_proj, E, 0.f, dbc, P); }},
        {"out_proj gemm (B,768,1536) beta 1", 4.0 * D * E, [&](int i) { be->gemm(false, true, B, D, E, y, E, L[i % kCopies].out_proj, E, 1.f, x, D); }},
        {"norm_gemm in_proj", 4.0 * 2 * E * D, [&](int i) { be->norm_gemm(B, 2 * E, D, true, 1e-5f, x, L[i % kCopies].norm_w, nullptr, L[i % kCopies].in_proj, xz); }},
        {"ssm_decode_in (conv + x_proj)", 4.0 * P * E, [&](int i) { be->ssm_decode_in(B, E, K, P, xz, 2 * E, cs(i), L[i % kCopies].conv_w, L[i % kCopies].conv_b, L[i % kCopies].x_proj, dbc); }},
        {"ssm_decode_step", 4.0 * E * R, [&](int i) { be->ssm_decode_step(B, E, N, R, K, xz, xz + E, 2 * E, cs(i), L[i % kCopies].conv_w, L[i % kCopies].conv_b, dbc, L[i % kCopies].dt_w, L[i % kCopies].dt_b, L[i % kCopies].A_log, L[i % kCopies].Dp, hs(i), y); }},
        {"step + out_proj, y fp32 (main)", 4.0 * (E * R + D * E), [&](int i) {
           const Layer& l = L[i % kCopies];
           be->ssm_decode_step(B, E, N, R, K, xz, xz + E, 2 * E, cs(i), l.conv_w, l.conv_b, dbc, l.dt_w, l.dt_b, l.A_log, l.Dp, hs(i), y);
           be->gemm(false, true, B, D, E, y, E, l.out_proj, E, 1.f, x, D); }},
        {"step + out_proj, y decode_dtype (new)", 4.0 * (E * R + D * E), [&](int i) {
           const Layer& l = L[i % kCopies];
           be->ssm_decode_step(B, E, N, R, K, xz, xz + E, 2 * E, cs(i), l.conv_w, l.conv_b, dbc, l.dt_w, l.dt_b, l.A_log, l.Dp, hs(i), y16);
           be->gemm(false, true, B, D, E, y16, E, l.out_proj, E, 1.f, x, D); }},
        {"lm_head gemm (B,50280,768)", 4.0 * V * D, [&](int i) { be->gemm(false, true, B, V, D, h, D, head[i % 2], D, 0.f, logits, V); }},
        {"norm_gemm lm_head", 4.0 * V * D, [&](int i) { be->norm_gemm(B, V, D, true, 1e-5f, x, L[0].norm_w, nullptr, head[i % 2], logits); }},
        {"sample_tokens greedy", 0, [&](int i) { be->sample_tokens(B, V, logits, 0.f, 1, counter, ids, hist, 256); }},
    };
    std::printf("\n%s, B=%d (layer weights %.1f MB: floor %.2f us fp32, %.2f bf16)\n"
                "| op | us/call | weight floor us fp32 / bf16 |\n|---|---|---|\n",
                label, B, lw / 1e6, lw / 4.29e6, lw / 8.58e6);
    for (auto& r : rows) {
      const int32_t zero = 0;
      be->upload_i32(counter, &zero, 1);
      std::printf("| %s | %.2f | %.2f / %.2f |\n", r.name, time_op(*be, r.op), r.floor_bytes / 4.29e6,
                  r.floor_bytes / 8.58e6);
      std::fflush(stdout);
    }
    for (float* p : {x, h, xz, xs, dbc, dt, y, stats, logits, conv, ssm}) be->free(p);
    be->free(y16.p);
    be->free(counter), be->free(ids), be->free(hist);
  }
  be->free(ar.base);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const bool bf16_only = argc > 1 && std::string(argv[1]) == "bf16";
    CudaOptions tf32;
    tf32.gemm = GemmMath::tf32;
    if (!bf16_only) run("tf32: fp32 weights (main's decode path)", tf32);
    CudaOptions opt;
    if (const char* v = std::getenv("BHASA_CUDA_Y16")) opt.y_bf16 = std::string(v) != "0";
    run("bf16 weights (frozen), decode GEMMs autotuned", opt);
    if (argc > 1 && !bf16_only) {  // the comparisons
      CudaOptions o = opt;
      o.tune_decode = false;
      run("bf16 weights, cuBLASLt heuristic's first algorithm", o);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "decode_ops failed: %s\n", e.what());
    return 1;
  }
  return 0;
}
