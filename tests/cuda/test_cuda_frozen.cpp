// Frozen weights (Backend::freeze_weights): in bf16 mode the CUDA backend's decode
// GEMMs read a bf16 copy of the weights. Checked against the CPU twice: with the
// weights rounded to bf16 on the host (ref16: the GEMV must agree to fp32 accuracy, so
// it really read bf16 weights and nothing else changed) and with the fp32 weights
// (ref: within the bf16 band, and measurably off it, so the copy is really used).
// Any write into the frozen range must drop the copy; tf32 / fp32 modes never make one.
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <limits>

#include "cuda_test_util.h"
#include "kernels/sampling.h"
#include "model/mamba.h"
#include "model/presets.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

constexpr double kFp32 = 1e-5;   // fp32 arithmetic on the same (rounded) weights
constexpr double kBf16 = 1e-2;   // bf16 weights (and activations, through cuBLASLt) vs fp32
constexpr double kUsed = 1e-4;   // at least this far from the fp32 result: bf16 was read
constexpr double kTf32 = 2e-3;   // TF32 cuBLASLt on fp32 weights
const float kNaN = std::numeric_limits<float>::quiet_NaN();


std::unique_ptr<Backend> bf16_gpu() { return gpu_or_null(GemmMath::bf16); }

// The (M, N) block of a (M, ld) matrix.
std::vector<float> block(const std::vector<float>& c, int M, int N, int ld) {
  std::vector<float> out;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) out.push_back(c[size_t(m) * ld + n]);
  return out;
}

// Which path a decode product takes (cuda_backend.cu): the GEMV up to 8 rows, cuBLASLt
// bf16 above when N >= 128, else cuBLASLt TF32 on the fp32 weights (thin outputs, where
// rounding A costs more than bf16 saves), except ssm_decode_in, whose conv writes bf16.
enum class Path { gemv16, lt16, tf32 };
Path path_of(int M, int N) { return M <= 8 ? Path::gemv16 : N >= 128 ? Path::lt16 : Path::tf32; }

// Checks got against ref (fp32 weights) and ref16 (bf16-rounded weights) for a path.
void expect_path(const std::vector<float>& got, const std::vector<float>& ref, const std::vector<float>& ref16,
                 Path path, const std::string& what) {
  switch (path) {
    case Path::gemv16:
      EXPECT_LE(rel_l2(got, ref16), kFp32) << what;
      EXPECT_GE(rel_l2(got, ref), kUsed) << what;
      EXPECT_LE(rel_l2(got, ref), kBf16) << what;
      break;
    case Path::lt16:
      EXPECT_LE(rel_l2(got, ref16), kBf16) << what;
      EXPECT_GE(rel_l2(got, ref), kUsed) << what;
      EXPECT_LE(rel_l2(got, ref), kBf16) << what;
      break;
    case Path::tf32:
      EXPECT_LE(rel_l2(got, ref), kTf32) << what;
      break;
  }
}

}  // namespace

// gemm(x @ W^T) with W frozen: every M up to 64, strided A and C, beta 0 (NaN-poisoned
// C) / 1 / 0.5; W sits at an offset inside the frozen range.
TEST(FrozenWeights, GemmReadsBf16Copy) {
  auto gpu = bf16_gpu();
  if (!gpu) GTEST_SKIP() << "no CUDA GPU on this machine";
  auto cpu = make_cpu_backend();
  std::mt19937 rng(11);
  struct Shape { int N, K; };
  for (Shape s : {Shape{3072, 768}, Shape{768, 1536}, Shape{80, 1536}, Shape{200, 64}}) {
    const size_t off = 1024;  // W starts inside the arena, 16-byte aligned
    auto W = randn(size_t(s.N) * s.K, rng, 0.05f);
    std::vector<float> arena = randn(off + W.size() + 512, rng);
    std::copy(W.begin(), W.end(), arena.begin() + off);
    DevBuf dArena(*gpu, arena);
    gpu->freeze_weights(dArena.p, arena.size());
    const float* dW = dArena.p + off;
    const auto W16 = round_bf16(W);
    for (int M : {1, 2, 3, 5, 8, 9, 16, 33, 64})
      for (float beta : {0.0f, 1.0f, 0.5f}) {
        const int lda = s.K + 8, ldc = s.N + 3;
        auto A = randn(size_t(M) * lda, rng);
        auto C = beta == 0.0f ? std::vector<float>(size_t(M) * ldc, kNaN) : randn(size_t(M) * ldc, rng);
        DevBuf dA(*gpu, A), dC(*gpu, C);
        gpu->gemm(false, true, M, s.N, s.K, dA.p, lda, dW, s.K, beta, dC.p, ldc);
        auto ref = C, ref16 = C;
        if (beta == 0.0f) std::fill(ref.begin(), ref.end(), 0.0f), std::fill(ref16.begin(), ref16.end(), 0.0f);
        cpu->gemm(false, true, M, s.N, s.K, A.data(), lda, W.data(), s.K, beta, ref.data(), ldc);
        cpu->gemm(false, true, M, s.N, s.K, A.data(), lda, W16.data(), s.K, beta, ref16.data(), ldc);
        const auto got = block(dC.host(), M, s.N, ldc);
        expect_path(got, block(ref, M, s.N, ldc), block(ref16, M, s.N, ldc), path_of(M, s.N),
                    "N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) + " M=" + std::to_string(M) +
                        " beta=" + std::to_string(beta));
      }
  }
}

// norm_gemm (pre-norm staged, or norm_rows writing bf16 for cuBLASLt) and ssm_decode_in
// (conv staged into the GEMV, or conv_decode then x_proj) with their weights frozen.
TEST(FrozenWeights, NormGemmAndSsmDecodeIn) {
  auto gpu = bf16_gpu();
  if (!gpu) GTEST_SKIP() << "no CUDA GPU on this machine";
  auto cpu = make_cpu_backend();
  std::mt19937 rng(12);
  {
    const int N = 1000, K = 768;
    auto W = randn(size_t(N) * K, rng, 0.05f);
    DevBuf dW(*gpu, W);
    gpu->freeze_weights(dW.p, W.size());
    for (int M : {1, 3, 8, 20, 64})
      for (bool rms : {true, false}) {
        auto x = randn(size_t(M) * K, rng, 2.0f, 0.5f), w = randn(K, rng, 0.3f, 1.0f), b = randn(K, rng);
        DevBuf dx(*gpu, x), dw(*gpu, w), db(*gpu, b), dout(*gpu, std::vector<float>(size_t(M) * N, kNaN));
        gpu->norm_gemm(M, N, K, rms, 1e-5f, dx.p, dw.p, rms ? nullptr : db.p, dW.p, dout.p);
        std::vector<float> ref(size_t(M) * N), ref16(size_t(M) * N);
        const auto W16 = round_bf16(W);
        cpu->norm_gemm(M, N, K, rms, 1e-5f, x.data(), w.data(), rms ? nullptr : b.data(), W.data(), ref.data());
        cpu->norm_gemm(M, N, K, rms, 1e-5f, x.data(), w.data(), rms ? nullptr : b.data(), W16.data(), ref16.data());
        expect_path(dout.host(), ref, ref16, path_of(M, N), "norm_gemm M=" + std::to_string(M) + " rms=" + std::to_string(rms));
      }
  }
  const int E = 1536, P = 80, K = 4;
  auto Wx = randn(size_t(P) * E, rng, 1.0f / std::sqrt(float(E)));
  const auto Wx16 = round_bf16(Wx);
  DevBuf dWx(*gpu, Wx);
  gpu->freeze_weights(dWx.p, Wx.size());
  for (int B : {1, 5, 8, 20, 64}) {
    auto xz = randn(size_t(B) * 2 * E, rng), st = randn(size_t(B) * (K - 1) * E, rng),
         cw = randn(size_t(E) * K, rng, 0.5f), cb = randn(E, rng, 0.2f);
    DevBuf dxz(*gpu, xz), dst(*gpu, st), dcw(*gpu, cw), dcb(*gpu, cb), dbc(*gpu, std::vector<float>(size_t(B) * P, kNaN));
    gpu->ssm_decode_in(B, E, K, P, dxz.p, 2 * E, dst.p, dcw.p, dcb.p, dWx.p, dbc.p);
    std::vector<float> ref(size_t(B) * P), ref16(size_t(B) * P);
    cpu->ssm_decode_in(B, E, K, P, xz.data(), 2 * E, st.data(), cw.data(), cb.data(), Wx.data(), ref.data());
    cpu->ssm_decode_in(B, E, K, P, xz.data(), 2 * E, st.data(), cw.data(), cb.data(), Wx16.data(), ref16.data());
    expect_path(dbc.host(), ref, ref16, B <= 8 ? Path::gemv16 : Path::lt16, "ssm_decode_in B=" + std::to_string(B));
    EXPECT_EQ(dst.host(), st);  // states untouched
  }
}

// A write into the frozen range (upload, copy into part of it, adamw) drops the copy:
// the next product reads the new fp32 weights; freezing again makes a new copy. A write
// elsewhere keeps it.
TEST(FrozenWeights, WriteDropsCopy) {
  auto gpu = bf16_gpu();
  if (!gpu) GTEST_SKIP() << "no CUDA GPU on this machine";
  auto cpu = make_cpu_backend();
  std::mt19937 rng(13);
  const int M = 2, N = 512, K = 768;
  auto A = randn(size_t(M) * K, rng);
  DevBuf dA(*gpu, A), dC(*gpu, size_t(M) * N), other(*gpu, randn(1000, rng));
  auto product = [&](const float* W) {
    gpu->gemm(false, true, M, N, K, dA.p, K, W, K, 0.0f, dC.p, N);
    return dC.host();
  };
  auto cpu_product = [&](const std::vector<float>& W) {
    std::vector<float> c(size_t(M) * N);
    cpu->gemm(false, true, M, N, K, A.data(), K, W.data(), K, 0.0f, c.data(), N);
    return c;
  };
  auto W1 = randn(size_t(N) * K, rng, 0.05f), W2 = randn(size_t(N) * K, rng, 0.05f);
  DevBuf dW(*gpu, W1);
  gpu->freeze_weights(dW.p, W1.size());
  EXPECT_LE(rel_l2(product(dW.p), cpu_product(round_bf16(W1))), kFp32) << "frozen W1";
  gpu->upload(other.p, randn(1000, rng).data(), 1000);  // elsewhere: the copy stays
  EXPECT_LE(rel_l2(product(dW.p), cpu_product(round_bf16(W1))), kFp32) << "after a write elsewhere";

  gpu->upload(dW.p, W2.data(), W2.size());
  EXPECT_LE(rel_l2(product(dW.p), cpu_product(W2)), kFp32) << "after upload: fp32 W2";
  gpu->freeze_weights(dW.p, W2.size());
  auto got = product(dW.p);
  EXPECT_LE(rel_l2(got, cpu_product(round_bf16(W2))), kFp32) << "frozen W2";
  EXPECT_GE(rel_l2(got, cpu_product(W2)), kUsed) << "frozen W2 reads bf16";

  // copy into the last rows only
  DevBuf src(*gpu, W1);
  gpu->copy(dW.p + size_t(N - 4) * K, src.p, 4 * K);
  auto W3 = W2;
  std::copy(W1.begin(), W1.begin() + 4 * K, W3.begin() + size_t(N - 4) * K);
  EXPECT_LE(rel_l2(product(dW.p), cpu_product(W3)), kFp32) << "after a partial copy";

  // adamw, as an optimizer step after sampling does
  gpu->freeze_weights(dW.p, W3.size());
  DevBuf g(*gpu, randn(W3.size(), rng)), m(*gpu, W3.size()), v(*gpu, W3.size());
  gpu->adamw(W3.size(), dW.p, g.p, m.p, v.p, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, 1.0f);
  const auto W4 = dW.host();
  EXPECT_GT(rel_l2(W4, W3), 1e-3);
  EXPECT_LE(rel_l2(product(dW.p), cpu_product(W4)), kFp32) << "after adamw";
}

// adamw on a mirrored range writes the mirror in the same pass (cuda_backend.cu;
// BHASA_ADAMW_V=old: dropped and converted again by the next freeze): until the next
// freeze the products read the new fp32 weights, as after any write; after it, the mirror
// holds bf16 of the new weights bit for bit (the same product as a fresh conversion).
// Two adamw calls on the halves, as AdamW::step's segments; n odd for the tail kernel.
TEST(FrozenWeights, AdamwRewritesTheMirror) {
  auto gpu = bf16_gpu();
  if (!gpu) GTEST_SKIP() << "no CUDA GPU on this machine";
  auto cpu = make_cpu_backend();
  std::mt19937 rng(17);
  const int M = 2, N = 512, K = 768;
  const size_t n = size_t(N) * K + 3, half = n / 2 + 2;  // half % 4 == 3: the second call takes the scalar kernel
  auto A = randn(size_t(M) * K, rng);
  DevBuf dA(*gpu, A), dC(*gpu, size_t(M) * N);
  auto product = [&](const float* W) {
    gpu->gemm(false, true, M, N, K, dA.p, K, W, K, 0.0f, dC.p, N);
    return dC.host();
  };
  auto cpu_product = [&](const std::vector<float>& W) {
    std::vector<float> c(size_t(M) * N);
    cpu->gemm(false, true, M, N, K, A.data(), K, W.data(), K, 0.0f, c.data(), N);
    return c;
  };
  for (const char* variant : {"new", "old"}) {
    ScopedEnv env("BHASA_ADAMW_V", variant);
    auto W = randn(n, rng, 0.05f);
    DevBuf dW(*gpu, W), g(*gpu, randn(n, rng)), m(*gpu, n), v(*gpu, n);
    gpu->freeze_weights(dW.p, n);
    for (int step = 1; step <= 2; ++step) {
      gpu->adamw(half, dW.p, g.p, m.p, v.p, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, step, 1.0f);
      gpu->adamw(n - half, dW.p + half, g.p + half, m.p + half, v.p + half, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.0f, step,
                 1.0f);
      const auto Wn = dW.host();
      EXPECT_GT(rel_l2(Wn, W), 1e-3) << variant;
      W = Wn;
      const std::vector<float> Wk(W.begin(), W.begin() + size_t(N) * K);
      EXPECT_LE(rel_l2(product(dW.p), cpu_product(Wk)), kFp32) << variant << ": before freezing again, fp32";
      gpu->freeze_weights(dW.p, n);
      const auto got = product(dW.p);
      EXPECT_LE(rel_l2(got, cpu_product(round_bf16(Wk))), kFp32) << variant << ": the mirror of the new weights";
      EXPECT_GE(rel_l2(got, cpu_product(Wk)), kUsed) << variant << ": reads bf16";
      gpu->upload(dW.p, W.data(), n);  // the same values: a fresh conversion at the next freeze
      gpu->freeze_weights(dW.p, n);
      EXPECT_EQ(product(dW.p), got) << variant << ": the same bits as a fresh conversion";
    }
  }
}

// Training-size products (the optimizer freezes the weights after each update): the
// forward GEMM, linear_backward's dX and head_loss read the bf16 mirror instead of
// rounding the weight per call: the same bits as without it (both round to nearest even),
// and after a write into the weights the new values, not the stale mirror.
TEST(FrozenWeights, TrainingProductsReadTheMirror) {
  auto gpu = bf16_gpu();
  if (!gpu) GTEST_SKIP() << "no CUDA GPU on this machine";
  auto cpu = make_cpu_backend();
  std::mt19937 rng(15);
  const int T = 300, N = 256, K = 192, V = 160;
  auto A = randn(size_t(T) * K, rng), dY = randn(size_t(T) * N, rng);
  auto params = randn(size_t(N) * K + size_t(V) * K, rng, 0.05f);  // [W (N, K) | embedding (V, D = K)]
  std::vector<int32_t> targets(T);
  for (int t = 0; t < T; ++t) targets[t] = (t * 7) % V;
  DevBuf dA(*gpu, A), ddY(*gpu, dY), dP(*gpu, params), dC(*gpu, size_t(T) * N), dX(*gpu, size_t(T) * K),
      dW(*gpu, size_t(N) * K), dE(*gpu, size_t(V) * K);
  int32_t* dT = gpu->alloc_i32(T);
  gpu->upload_i32(dT, targets.data(), T);
  const float* W = dP.p;
  const float* emb = dP.p + size_t(N) * K;
  struct Out { std::vector<float> c, dx, hx; double loss; };
  auto run = [&] {
    Out o;
    gpu->gemm(false, true, T, N, K, dA.p, K, W, K, 0.0f, dC.p, N);
    o.c = dC.host();
    gpu->linear_backward(T, N, K, ddY.p, N, W, K, dA.p, K, 0.0f, dX.p, K, dW.p);
    o.dx = dX.host();
    gpu->zero(dE.p, size_t(V) * K);
    o.loss = gpu->head_loss(T, V, K, dA.p, emb, dT, 1.0f / T, dX.p, dE.p);
    o.hx = dX.host();
    return o;
  };
  const Out copies = run();  // not frozen: each product rounds its own copy of W
  gpu->freeze_weights(dP.p, params.size());
  const Out mirror = run();
  EXPECT_EQ(mirror.c, copies.c);
  EXPECT_EQ(mirror.dx, copies.dx);
  EXPECT_EQ(mirror.hx, copies.hx);
  EXPECT_EQ(mirror.loss, copies.loss);
  // a write into the weights: the products see it (against the CPU on the new weights)
  auto params2 = randn(params.size(), rng, 0.05f);
  gpu->upload(dP.p, params2.data(), params2.size());
  const Out fresh = run();
  std::vector<float> ref(size_t(T) * N);
  cpu->gemm(false, true, T, N, K, A.data(), K, params2.data(), K, 0.0f, ref.data(), N);
  EXPECT_LE(rel_l2(fresh.c, ref), kBf16);
  EXPECT_GE(rel_l2(fresh.c, copies.c), 0.5);  // not the old weights' product
  gpu->free(dT);
}

// tf32 and fp32 modes, and bf16 with the option off: freezing changes nothing (exact fp32 GEMV).
TEST(FrozenWeights, OtherModesKeepFp32) {
  if (!cuda_gpu_available()) GTEST_SKIP() << "no CUDA GPU on this machine";
  auto cpu = make_cpu_backend();
  std::mt19937 rng(14);
  const int M = 3, N = 384, K = 768;
  auto A = randn(size_t(M) * K, rng), W = randn(size_t(N) * K, rng, 0.05f);
  std::vector<float> ref(size_t(M) * N);
  cpu->gemm(false, true, M, N, K, A.data(), K, W.data(), K, 0.0f, ref.data(), N);
  CudaOptions off;
  off.bf16_weights = false;
  std::vector<std::unique_ptr<Backend>> gpus;
  gpus.push_back(gpu_or_null(GemmMath::tf32));
  gpus.push_back(gpu_or_null(GemmMath::fp32));
  gpus.push_back(make_cuda_backend(off));
  for (auto& gpu : gpus) {
    DevBuf dA(*gpu, A), dW(*gpu, W), dC(*gpu, std::vector<float>(size_t(M) * N, kNaN));
    gpu->freeze_weights(dW.p, W.size());
    gpu->gemm(false, true, M, N, K, dA.p, K, dW.p, K, 0.0f, dC.p, N);
    EXPECT_LE(rel_l2(dC.host(), ref), kFp32) << gpu->name();
  }
}

// A model decoding on a bf16 backend: logits within the bf16 band of the CPU's (and off
// the fp32 ones); the graph path gives the step loop's tokens at B = 3 (GEMV) and 16
// and 64 (cuBLASLt; y in bf16, decode_dtype); after load_params / an adamw step the next
// decode uses the new weights.
TEST(FrozenWeights, ModelDecode) {
  auto gpu = bf16_gpu();
  if (!gpu) GTEST_SKIP() << "no CUDA GPU on this machine";
  auto cpu = make_cpu_backend();
  ModelConfig cfg = preset_config("tiny", 300);  // head N >= 128: bf16 through cuBLASLt at B 16
  const int V = cfg.vocab_size;
  MambaLM mg(cfg, *gpu), mc(cfg, *cpu);
  mg.init_params(7);
  mc.init_params(7);
  for (int B : {3, 16, 64}) {
    std::mt19937 rng(B);
    const int L = 5;
    std::vector<int32_t> prompt(size_t(B) * L), ids(B);
    for (auto& t : prompt) t = int32_t(rng() % V);
    for (auto& t : ids) t = int32_t(rng() % V);
    std::vector<float> lg(size_t(B) * V), lc(size_t(B) * V);
    // step logits against the CPU
    DecodeState sg = mg.new_state(B), sc = mc.new_state(B);
    mg.prefill(sg, prompt.data(), L, lg.data());
    mc.prefill(sc, prompt.data(), L, lc.data());
    for (int i = 0; i < 3; ++i) {
      mg.step(sg, ids.data(), lg.data());
      mc.step(sc, ids.data(), lc.data());
      EXPECT_LE(rel_l2(lg, lc), kBf16) << "step " << i << " B=" << B;
      EXPECT_GE(rel_l2(lg, lc), kUsed) << "step " << i << " B=" << B;
    }
    // graph tokens == step-loop tokens (greedy; the same kernels and algorithms)
    const int n_new = 12;
    std::vector<int32_t> got(size_t(B) * n_new);
    mg.reset_state(sg);
    mg.prefill(sg, prompt.data(), L, lg.data());
    mg.generate_tokens(sg, ids.data(), n_new, got.data(), 0.0f, 1);
    mg.reset_state(sg);  // the step loop's greedy tokens from the same start
    mg.prefill(sg, prompt.data(), L, lg.data());
    EXPECT_EQ(got, reference_tokens(mg, sg, ids, n_new, 0.0f, 1)) << "B=" << B;
    mg.free_state(sg);
    mc.free_state(sc);
  }
  // new weights after decoding: load_params, then an adamw step on the device
  const int B = 16;
  std::vector<int32_t> ids(B);
  for (int b = 0; b < B; ++b) ids[b] = (b * 37) % V;
  std::vector<float> lg(size_t(B) * V), lc(size_t(B) * V), params(mg.num_params());
  MambaLM other(cfg, *cpu);
  other.init_params(8);
  other.store_params(params.data());
  mg.load_params(params.data());
  mc.load_params(params.data());
  std::vector<float> before;
  for (int round = 0; round < 2; ++round) {
    DecodeState sg = mg.new_state(B), sc = mc.new_state(B);
    mg.step(sg, ids.data(), lg.data());
    mc.step(sc, ids.data(), lc.data());
    EXPECT_LE(rel_l2(lg, lc), kBf16) << "round " << round;
    if (round == 1) {
      EXPECT_GT(rel_l2(lg, before), 10 * kBf16) << "the adamw step moved the logits";
    }
    before = lg;
    mg.free_state(sg);
    mc.free_state(sc);
    // an optimizer step on the device, mirrored on the CPU
    std::mt19937 rng(round);
    const auto grad = randn(mg.num_params(), rng);
    DevBuf g(*gpu, grad), m(*gpu, mg.num_params()), v(*gpu, mg.num_params());
    gpu->adamw(mg.num_params(), mg.params(), g.p, m.p, v.p, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.0f, 1, 1.0f);
    mg.store_params(params.data());
    mc.load_params(params.data());
  }
}

namespace {

// One mixer layer's weights in one host vector (a frozen range on a device), each 16-float
// aligned, and the MixerStep of a batch over given weights, states and scratch.
struct MixerLayer {
  int D, E, N, R, K = 4;
  std::vector<float> W;
  size_t norm_w, in_proj, conv_w, conv_b, x_proj, dt_w, dt_b, A_log, D_skip, out_proj;
  MixerLayer(int d, int e, int n, int r, std::mt19937& rng) : D(d), E(e), N(n), R(r) {
    const int P = R + 2 * N;
    auto put = [&](std::vector<float> v) {
      const size_t off = W.size();
      W.insert(W.end(), v.begin(), v.end());
      W.resize((W.size() + 15) / 16 * 16, 0.f);
      return off;
    };
    norm_w = put(randn(D, rng, 0.2f, 1.0f)), in_proj = put(randn(size_t(2) * E * D, rng, 1 / std::sqrt(float(D))));
    conv_w = put(randn(size_t(E) * K, rng, 0.5f)), conv_b = put(randn(E, rng, 0.2f));
    x_proj = put(randn(size_t(P) * E, rng, 1 / std::sqrt(float(E))));
    dt_w = put(randn(size_t(E) * R, rng, 1 / std::sqrt(float(R)))), dt_b = put(randn(E, rng, 0.5f, -3.0f));
    A_log = put(randn(size_t(E) * N, rng, 0.5f, 1.0f)), D_skip = put(randn(E, rng, 0.2f, 1.0f));
    out_proj = put(randn(size_t(D) * E, rng, 1 / std::sqrt(float(E))));
  }
  Backend::MixerStep step(int B, const float* Wp, float* x, float* st, float* h, float* xz, float* dbc, Operand y) const {
    return Backend::MixerStep{B, D, E, N, R, K, true, 1e-5f, x, Wp + norm_w, nullptr, Wp + in_proj, Wp + conv_w,
                              Wp + conv_b, Wp + x_proj, Wp + dt_w, Wp + dt_b, Wp + A_log, Wp + D_skip, Wp + out_proj,
                              st, h, xz, dbc, y};
  }
  // x (B, D) with rows of different scales (rstd per row matters), conv and SSM states
  std::vector<float> x0(int B, std::mt19937& rng) const {
    auto x = randn(size_t(B) * D, rng);
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < D; ++i) x[size_t(b) * D + i] *= 0.25f + float(b % 7);
    return x;
  }
  // `steps` fused steps on a bf16 backend from x, conv state st and SSM state h, each preparing
  // the next one's norm (this layer stands in for the next): x and h after them.
  void run_prepared(Backend& be, int B, const std::vector<float>& x, const std::vector<float>& st,
                    const std::vector<float>& h, int steps, std::vector<float>& x_out, std::vector<float>& h_out) const {
    DevBuf dW(be, W), dx(be, x), dst(be, st), dh(be, h), dxz(be, size_t(B) * 2 * E), ddbc(be, size_t(B) * (R + 2 * N)),
        dy(be, size_t(B) * E);
    be.freeze_weights(dW.p, W.size());
    auto g = step(B, dW.p, dx.p, dst.p, dh.p, dxz.p, ddbc.p, Operand(dy.p, be.decode_dtype(B)));
    g.next_norm_w = dW.p + norm_w;
    for (int i = 0; i < steps; ++i) ASSERT_TRUE(be.mixer_decode_step(g));
    x_out = dx.host(), h_out = dh.host();
  }
};

}  // namespace

// mixer_decode_step's own path (2 <= B <= 64: in_proj with the norm and the conv folded
// into decode_mma, x_proj, the scan step on u, out_proj) against the CPU's four ops, two
// steps in a row (the states it advanced feed the second): the residual stream's update and
// both states within the bf16 band of the fp32 result, and off it (bf16 was read). At the tiny
// and the m130 widths (different tiles) and at B = 2, 5, 8, 16, 24, 32, 40, 64 (mixer_tiles' picks
// differ; below 4 the scan step's blocks have rows missing);
// the second step's norm comes prepared by the first's out_proj (next_norm_w: the same layer
// stands in for the next, same x and norm weight), except at B = 40; at B = 1 it declines
// (the GEMV path's ops run).
TEST(FrozenWeights, FusedMixerStepMatchesFourOps) {
  auto gpu = bf16_gpu();
  if (!gpu) GTEST_SKIP() << "no CUDA GPU on this machine";
  auto cpu = make_cpu_backend();
  std::mt19937 rng(21);
  for (auto [D, E, N, R] : {std::array<int, 4>{192, 384, 16, 12}, std::array<int, 4>{768, 1536, 16, 48}}) {
    const MixerLayer layer(D, E, N, R, rng);
    const int K = layer.K, P = R + 2 * N;
    DevBuf dW(*gpu, layer.W);
    gpu->freeze_weights(dW.p, layer.W.size());
    for (int B : {1, 2, 5, 8, 16, 24, 32, 40, 64}) {
      const std::string what = "D=" + std::to_string(D) + " B=" + std::to_string(B);
      auto x = layer.x0(B, rng), st = randn(size_t(B) * (K - 1) * E, rng), h = randn(size_t(B) * E * N, rng);
      DevBuf dx(*gpu, x), dst(*gpu, st), dh(*gpu, h), dxz(*gpu, size_t(B) * 2 * E), ddbc(*gpu, size_t(B) * P),
          dy(*gpu, size_t(B) * E);
      auto g = layer.step(B, dW.p, dx.p, dst.p, dh.p, dxz.p, ddbc.p, Operand(dy.p, gpu->decode_dtype(B)));
      if (B != 40) g.next_norm_w = dW.p + layer.norm_w;
      if (B < 2) {
        EXPECT_FALSE(gpu->mixer_decode_step(g)) << what;
        continue;
      }
      std::vector<float> xz(size_t(B) * 2 * E), dbc(size_t(B) * P), y(size_t(B) * E);
      const auto c = layer.step(B, layer.W.data(), x.data(), st.data(), h.data(), xz.data(), dbc.data(), y.data());
      EXPECT_FALSE(cpu->mixer_decode_step(c));
      for (int step = 0; step < 2; ++step) {
        const auto gx0 = dx.host(), cx0 = x;  // the update x += out_proj(y) is what is compared
        ASSERT_TRUE(gpu->mixer_decode_step(g)) << what;
        cpu->norm_gemm(B, 2 * E, D, true, c.eps, c.x, c.norm_w, nullptr, c.in_proj, c.xz);
        cpu->ssm_decode_in(B, E, K, P, c.xz, 2 * E, c.conv_state, c.conv_w, c.conv_b, c.x_proj, c.dbc);
        cpu->ssm_decode_step(B, E, N, R, K, c.xz, c.xz + E, 2 * E, c.conv_state, c.conv_w, c.conv_b, c.dbc,
                             c.dt_proj_w, c.dt_proj_b, c.A_log, c.D_skip, c.h_state, c.y);
        cpu->gemm(false, true, B, D, E, c.y, E, c.out_proj, E, 1.f, c.x, D);
        const std::string at = what + " step " + std::to_string(step);
        auto gx = dx.host(), cx = x;
        for (size_t i = 0; i < gx.size(); ++i) gx[i] -= gx0[i], cx[i] -= cx0[i];
        const auto gst = dst.host(), gh = dh.host();
        EXPECT_LE(rel_l2(gx, cx), kBf16) << at;
        EXPECT_GE(rel_l2(gx, cx), kUsed) << at;
        EXPECT_LE(rel_l2(gst, st), kBf16) << at;
        EXPECT_LE(rel_l2(gh, h), kBf16) << at;
      }
    }
  }
}

// x_proj folded into in_proj is really what runs: the same three steps with the fold on and
// off (x_proj as its own product) agree closely but not bit for bit, at both widths (24 and
// 12 tiles) and at B = 16, 32 and 64 (mixer_tiles' picks differ). (The same bf16 operands,
// summed by column tile instead of by K slice: dbc differs by fp32 rounding, which flips some
// of y's bf16 roundings, 2^-8 each, so x's update differs by ~1e-4; FusedMixerStepMatchesFourOps
// holds the fold to the CPU's four ops.)
TEST(FrozenWeights, XProjFoldIsRead) {
  if (!bf16_gpu()) GTEST_SKIP() << "no CUDA GPU on this machine";
  CudaOptions off;
  off.xproj_fold = false;
  std::unique_ptr<Backend> gpus[2] = {bf16_gpu(), make_cuda_backend(off)};
  std::mt19937 rng(23);
  for (auto [D, E, N, R] : {std::array<int, 4>{192, 384, 16, 12}, std::array<int, 4>{768, 1536, 16, 48}}) {
    const MixerLayer layer(D, E, N, R, rng);
    for (int B : {16, 32, 64}) {
      const auto x = layer.x0(B, rng), st = randn(size_t(B) * 3 * layer.E, rng),
                 h = randn(size_t(B) * layer.E * layer.N, rng);
      std::vector<float> out[2], hs[2];
      for (int i = 0; i < 2; ++i) ASSERT_NO_FATAL_FAILURE(layer.run_prepared(*gpus[i], B, x, st, h, 3, out[i], hs[i]));
      const std::string what = "D=" + std::to_string(D) + " B=" + std::to_string(B);
      EXPECT_LE(rel_l2(out[0], out[1]), 1e-3) << what;
      EXPECT_LE(rel_l2(hs[0], hs[1]), 1e-3) << what;
      EXPECT_NE(hs[0], hs[1]) << what << ": the fold was not used";
    }
  }
}

// A decode step's embedding prepares the first mixer's norm (embedding_decode): x = the
// table's rows exactly, and the mixer step after it, which reads the prepared bf16 x * g and
// sums of squares, agrees with one that stages the norm itself (norm split off:
// embedding_decode declines). (Unlike the out_proj's preparation, the results came out bit for
// bit the same here, even with a wide range of magnitudes; that this path runs in a decode
// shows in the kernel trace: layer 0's in_proj is the prepared kind.)
TEST(FrozenWeights, EmbeddingPreparesFirstNorm) {
  if (!bf16_gpu()) GTEST_SKIP() << "no CUDA GPU on this machine";
  CudaOptions off;
  off.norm_split = false;
  std::unique_ptr<Backend> gpus[2] = {bf16_gpu(), make_cuda_backend(off)};
  std::mt19937 rng(24);
  const MixerLayer layer(768, 1536, 16, 48, rng);
  const int B = 32, V = 40, P = layer.R + 2 * layer.N;
  auto table = randn(size_t(V) * layer.D, rng);
  const auto st = randn(size_t(B) * 3 * layer.E, rng), h = randn(size_t(B) * layer.E * layer.N, rng);
  // a wide range of magnitudes, so that the rows' sums of squares in another order round
  // differently (with plain randn the two rstd were often the same float)
  for (size_t i = 0; i < table.size(); ++i) table[i] *= std::ldexp(1.0f, int(i * 7 % 13) - 6);
  std::vector<int32_t> ids(B);
  for (auto& t : ids) t = int32_t(rng() % V);
  std::vector<float> want(size_t(B) * layer.D), out[2];
  for (int b = 0; b < B; ++b)
    std::copy_n(table.begin() + size_t(ids[b]) * layer.D, layer.D, want.begin() + size_t(b) * layer.D);
  for (int i = 0; i < 2; ++i) {
    Backend& be = *gpus[i];
    DevBuf dW(be, layer.W), dt(be, table), dx(be, size_t(B) * layer.D), dst(be, st), dh(be, h),
        dxz(be, size_t(B) * 2 * layer.E), ddbc(be, size_t(B) * P), dy(be, size_t(B) * layer.E);
    int32_t* did = be.alloc_i32(B);
    be.upload_i32(did, ids.data(), B);
    be.freeze_weights(dW.p, layer.W.size());
    const bool prepared = be.embedding_decode(B, layer.D, did, dt.p, dx.p, dW.p + layer.norm_w);
    EXPECT_EQ(prepared, i == 0);
    if (!prepared) be.embedding_forward(B, layer.D, did, dt.p, dx.p);
    EXPECT_EQ(dx.host(), want) << "backend " << i;
    auto g = layer.step(B, dW.p, dx.p, dst.p, dh.p, dxz.p, ddbc.p, Operand(dy.p, be.decode_dtype(B)));
    ASSERT_TRUE(be.mixer_decode_step(g));
    out[i] = dx.host();
    be.free(did);
  }
  EXPECT_LE(rel_l2(out[0], out[1]), 1e-5);
}

// The prepared norm is really read: the same three steps with next_norm_w on a backend with
// the norm split and one without agree to fp32 rounding (the rows' rstd summed in another
// order) but not bit for bit (with the split off every step stages and sums x itself).
TEST(FrozenWeights, PreparedNormIsRead) {
  if (!bf16_gpu()) GTEST_SKIP() << "no CUDA GPU on this machine";
  CudaOptions off;
  off.norm_split = false;
  std::unique_ptr<Backend> gpus[2] = {bf16_gpu(), make_cuda_backend(off)};
  std::mt19937 rng(22);
  const MixerLayer layer(768, 1536, 16, 48, rng);
  const int B = 64;
  const auto x = layer.x0(B, rng), st = randn(size_t(B) * 3 * layer.E, rng), h = randn(size_t(B) * layer.E * layer.N, rng);
  std::vector<float> out[2], hs[2];
  for (int i = 0; i < 2; ++i) ASSERT_NO_FATAL_FAILURE(layer.run_prepared(*gpus[i], B, x, st, h, 3, out[i], hs[i]));
  EXPECT_LE(rel_l2(out[0], out[1]), 1e-4);
  EXPECT_NE(out[0], out[1]) << "the prepared norm was not read";
}
