// Every CUDA kernel against the CPU backend on random data:
// ||out - ref|| / ||ref|| <= 1e-5 for fp32 arithmetic, 2e-3 for the TF32 GEMM.
// "=" outputs are poisoned with NaN on the GPU first, so an unwritten element fails.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "cuda_test_util.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

constexpr double kTol = 1e-5;
const float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> nans(size_t n) { return std::vector<float>(n, kNaN); }

// Every (ta, tb) and beta on strided operands offset by one float (the GEMM must not
// assume 16-byte alignment), against the CPU: ||gpu - cpu|| / ||cpu|| <= tol.
void check_gemm_all_transposes(Backend& gpu, int M, int N, int K, double tol, std::mt19937& rng) {
  auto cpu = make_cpu_backend();
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (float beta : {0.0f, 1.0f, 0.5f}) {
        const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 5;
        auto A = randn(size_t(ta ? K : M) * lda + 1, rng);
        auto Bv = randn(size_t(tb ? N : K) * ldb + 1, rng);
        auto C = randn(size_t(M) * ldc, rng);
        DevBuf dA(gpu, A), dB(gpu, Bv), dC(gpu, C);
        gpu.gemm(ta, tb, M, N, K, dA.p + 1, lda, dB.p + 1, ldb, beta, dC.p, ldc);
        std::vector<float> ref = C;
        cpu->gemm(ta, tb, M, N, K, A.data() + 1, lda, Bv.data() + 1, ldb, beta, ref.data(), ldc);
        EXPECT_LE(rel_l2(dC.host(), ref), tol) << gpu.name() << " ta=" << ta << " tb=" << tb << " beta=" << beta;
      }
}

// C = A @ B^T on dense, aligned operands (C poisoned with NaN first): the relative
// error against the CPU.
double dense_gemm_error(Backend& gpu, int M, int N, int K, std::mt19937& rng) {
  auto cpu = make_cpu_backend();
  auto A = randn(size_t(M) * K, rng), Bv = randn(size_t(N) * K, rng);
  DevBuf dA(gpu, A), dB(gpu, Bv), dC(gpu, nans(size_t(M) * N));
  gpu.gemm(false, true, M, N, K, dA.p, K, dB.p, K, 0.0f, dC.p, N);
  std::vector<float> ref(size_t(M) * N);
  cpu->gemm(false, true, M, N, K, A.data(), K, Bv.data(), K, 0.0f, ref.data(), N);
  return rel_l2(dC.host(), ref);
}

TEST(CudaKernels, GemmAllTransposesTf32) {
  BHASA_REQUIRE_GPU(gpu);
  std::mt19937 rng(1);
  check_gemm_all_transposes(*gpu, 67, 45, 131, 2e-3, rng);
}

// bf16 operands (a dense bf16 copy of each, then bf16 tensor cores) and cuBLASLt's
// FAST_16BF: within the bf16 band, on strided, unaligned operands, every transpose.
TEST(CudaKernels, GemmAllTransposesBf16) {
  for (GemmMath math : {GemmMath::bf16, GemmMath::bf16_fast}) {
    BHASA_REQUIRE_GPU(gpu, math);
    std::mt19937 rng(11);
    // min(M, N) >= 128: the bf16 path, not the thin-GEMM TF32 one
    check_gemm_all_transposes(*gpu, 131, 129, 67, 1e-2, rng);
    // The aligned, dense case takes the 4-wide conversion path.
    const double err = dense_gemm_error(*gpu, 128, 160, 256, rng);
    std::printf("[%s] dense GEMM rel err %.3g\n", gemm_math_name(math), err);
    EXPECT_LE(err, 1e-2);
    // bf16 rounding of the operands shows (~2e-3): the products really were bf16.
    if (math == GemmMath::bf16) {
      EXPECT_GE(err, 3e-4);
    }
  }
}

// A linear layer's backward (dX and dW from one dY): against the CPU in each GEMM
// math, twice on the same buffers with new contents, so a bf16 copy of dY kept from
// the first call would show.
TEST(CudaKernels, LinearBackward) {
  for (GemmMath math : {GemmMath::fp32, GemmMath::bf16}) {
    BHASA_REQUIRE_GPU(gpu, math);
    auto cpu = make_cpu_backend();
    std::mt19937 rng(12);
    const int T = 300, O = 160, I = 136, ldy = O + 4, ldx = I + 8, lddx = I;
    DevBuf dY(*gpu, size_t(T) * ldy), W(*gpu, size_t(O) * I), X(*gpu, size_t(T) * ldx),
        dX(*gpu, size_t(T) * lddx), dW(*gpu, size_t(O) * I);
    for (int round = 0; round < 2; ++round) {
      auto hY = randn(dY.n, rng), hW = randn(W.n, rng), hX = randn(X.n, rng), hdX = randn(dX.n, rng),
           hdW = randn(dW.n, rng);
      gpu->upload(dY.p, hY.data(), dY.n), gpu->upload(W.p, hW.data(), W.n), gpu->upload(X.p, hX.data(), X.n);
      gpu->upload(dX.p, hdX.data(), dX.n), gpu->upload(dW.p, hdW.data(), dW.n);
      const float beta = round ? 1.0f : 0.0f;
      gpu->linear_backward(T, O, I, dY.p, ldy, W.p, I, X.p, ldx, beta, dX.p, lddx, dW.p);
      cpu->gemm(false, false, T, I, O, hY.data(), ldy, hW.data(), I, beta, hdX.data(), lddx);
      cpu->gemm(true, false, O, I, T, hY.data(), ldy, hX.data(), ldx, 1.0f, hdW.data(), I);
      const double tol = math == GemmMath::fp32 ? kTol : 1e-2;
      EXPECT_LE(rel_l2(dX.host(), hdX), tol) << gemm_math_name(math) << " round " << round;
      EXPECT_LE(rel_l2(dW.host(), hdW), tol) << gemm_math_name(math) << " round " << round;
    }
  }
}

// C = R + A @ W^T into another buffer (the forward's residual add): R untouched, C (NaN
// before) as the CPU's, in each GEMM math; M <= 64 and R == C take the copy / in-place path.
TEST(CudaKernels, GemmResidual) {
  for (GemmMath math : {GemmMath::fp32, GemmMath::bf16}) {
    BHASA_REQUIRE_GPU(gpu, math);
    auto cpu = make_cpu_backend();
    std::mt19937 rng(13);
    for (int M : {300, 40}) {
      const int N = 136, K = 160, ld = N + 4;
      auto A = randn(size_t(M) * K, rng), W = randn(size_t(N) * K, rng), R = randn(size_t(M) * ld, rng);
      DevBuf dA(*gpu, A), dW(*gpu, W), dR(*gpu, R), dC(*gpu, nans(size_t(M) * ld));
      gpu->gemm_residual(false, true, M, N, K, dA.p, K, dW.p, K, dR.p, dC.p, ld);
      std::vector<float> ref = R;
      cpu->gemm(false, true, M, N, K, A.data(), K, W.data(), K, 1.0f, ref.data(), ld);
      const double tol = math == GemmMath::fp32 ? kTol : 1e-2;
      auto c_only = [&](std::vector<float> v) {  // the padding columns are not C's
        for (int m = 0; m < M; ++m)
          for (int n = N; n < ld; ++n) v[size_t(m) * ld + n] = 0.0f;
        return v;
      };
      const std::vector<float> got = c_only(dC.host());
      EXPECT_LE(rel_l2(got, c_only(ref)), tol) << gemm_math_name(math) << " M=" << M;
      EXPECT_EQ(dR.host(), R) << gemm_math_name(math) << " M=" << M;
      gpu->gemm_residual(false, true, M, N, K, dA.p, K, dW.p, K, dR.p, dR.p, ld);  // in place
      EXPECT_EQ(c_only(dR.host()), got) << gemm_math_name(math) << " M=" << M;
    }
  }
}

// The autotune (CudaOptions::tune_all here; by default the large training products and the
// decode ones) times cuBLASLt's candidates and may take another than the heuristic's first,
// but only one whose product has the same bits: every shape, tuned or not, gives exactly
// what BHASA_CUDA_TUNE=0 gives (so a run's results do not follow the timing noise).
TEST(CudaKernels, TunedGemmIsBitwiseUntuned) {
  if (!cuda_gpu_available()) GTEST_SKIP() << "no CUDA GPU on this machine";
  CudaOptions tuned, untuned;
  tuned.tune_all = true;
  untuned.tune_decode = false;
  auto a = make_cuda_backend(tuned), b = make_cuda_backend(untuned);
  std::mt19937 rng(21);
  for (auto [M, N, K] : {std::tuple{2048, 1536, 768}, std::tuple{64, 3072, 768}, std::tuple{4096, 80, 1536}}) {
    auto A = randn(size_t(M) * K, rng), W = randn(size_t(N) * K, rng, 0.05f);
    std::vector<float> out[2];
    int i = 0;
    for (Backend* gpu : {a.get(), b.get()}) {
      DevBuf dA(*gpu, A), dW(*gpu, W), dC(*gpu, nans(size_t(M) * N));
      gpu->gemm(false, true, M, N, K, dA.p, K, dW.p, K, 0.0f, dC.p, N);
      out[i++] = dC.host();
    }
    EXPECT_EQ(0, std::memcmp(out[0].data(), out[1].data(), out[0].size() * sizeof(float))) << M << "x" << N << "x" << K;
    EXPECT_LE(rel_l2(out[0], out[1]), 0.0);  // and no NaN (rel_l2 is infinite then)
  }
}

TEST(CudaKernels, GemmFp32IsTight) {
  BHASA_REQUIRE_GPU(gpu, false);
  std::mt19937 rng(2);
  EXPECT_LE(dense_gemm_error(*gpu, 64, 96, 200, rng), kTol);
}

// (T, D, V): many repeated ids (runs across the backward's chunks of 16 sorted
// positions), a few ids (runs over many chunks; D % 4 != 0: the scalar forward),
// and mostly distinct ids.
TEST(CudaKernels, Embedding) {
  BHASA_REQUIRE_GPU(gpu);
  auto cpu = make_cpu_backend();
  std::mt19937 rng(3);
  for (auto [T, D, V] : {std::tuple{500, 72, 37}, std::tuple{1000, 70, 3}, std::tuple{67, 8, 1000}}) {
    std::vector<int32_t> ids(T);
    for (auto& i : ids) i = int32_t(rng() % V);
    auto table = randn(size_t(V) * D, rng), dout = randn(size_t(T) * D, rng);
    DevIds dids(*gpu, ids);
    DevBuf dtab(*gpu, table), dout_d(*gpu, dout), out(*gpu, nans(size_t(T) * D));
    gpu->embedding_forward(T, D, dids.p, dtab.p, out.p);
    std::vector<float> ref(size_t(T) * D);
    cpu->embedding_forward(T, D, ids.data(), table.data(), ref.data());
    EXPECT_EQ(rel_l2(out.host(), ref), 0.0) << "T=" << T << " D=" << D << " V=" << V;
    // backward accumulates onto what is there
    std::vector<float> dref = table;
    gpu->embedding_backward(T, D, V, dids.p, dout_d.p, dtab.p);
    cpu->embedding_backward(T, D, V, ids.data(), dout.data(), dref.data());
    EXPECT_LE(rel_l2(dtab.host(), dref), kTol) << "T=" << T << " D=" << D << " V=" << V;
    // bitwise repeatable
    DevBuf dtab2(*gpu, table);
    gpu->embedding_backward(T, D, V, dids.p, dout_d.p, dtab2.p);
    EXPECT_EQ(dtab2.host(), dtab.host());
  }
}

class CudaNorm : public ::testing::TestWithParam<std::tuple<bool, int>> {};

TEST_P(CudaNorm, ForwardBackward) {
  BHASA_REQUIRE_GPU(gpu);
  auto cpu = make_cpu_backend();
  const auto [rms, D] = GetParam();
  std::mt19937 rng(4 + D);
  const int T = 333;
  auto x = randn(size_t(T) * D, rng, 2.0f, 0.5f), w = randn(D, rng, 0.5f, 1.0f),
       b = randn(D, rng), dout = randn(size_t(T) * D, rng), dx0 = randn(size_t(T) * D, rng),
       dw0 = randn(D, rng), db0 = randn(D, rng);
  DevBuf dX(*gpu, x), dW(*gpu, w), dBias(*gpu, b), dOut(*gpu, nans(size_t(T) * D)),
      dMean(*gpu, nans(T)), dRstd(*gpu, nans(T));
  const float* bptr = rms ? nullptr : dBias.p;
  gpu->norm_forward(T, D, rms, 1e-5f, dX.p, dW.p, bptr, dOut.p, rms ? nullptr : dMean.p, dRstd.p);
  std::vector<float> out(size_t(T) * D), mean(T), rstd(T);
  cpu->norm_forward(T, D, rms, 1e-5f, x.data(), w.data(), rms ? nullptr : b.data(), out.data(),
                    rms ? nullptr : mean.data(), rstd.data());
  EXPECT_LE(rel_l2(dOut.host(), out), kTol);
  EXPECT_LE(rel_l2(dRstd.host(), rstd), kTol);
  if (!rms) {
    EXPECT_LE(rel_l2(dMean.host(), mean), kTol);
  }

  DevBuf dDout(*gpu, dout), dDx(*gpu, dx0), dDw(*gpu, dw0), dDb(*gpu, db0), dDxCopy(*gpu, nans(size_t(T) * D));
  gpu->norm_backward(T, D, rms, dDout.p, dX.p, dW.p, rms ? nullptr : dMean.p, dRstd.p, dDx.p, dDw.p,
                     rms ? nullptr : dDb.p, dDxCopy.p);
  EXPECT_EQ(dDxCopy.host(), dDx.host());  // dx_copy: the updated dx, bit for bit
  std::vector<float> dx = dx0, dw = dw0, db = db0;
  cpu->norm_backward(T, D, rms, dout.data(), x.data(), w.data(), rms ? nullptr : mean.data(),
                     rstd.data(), dx.data(), dw.data(), rms ? nullptr : db.data());
  EXPECT_LE(rel_l2(dDx.host(), dx), kTol);
  EXPECT_LE(rel_l2(dDw.host(), dw), kTol);
  EXPECT_LE(rel_l2(dDb.host(), db), kTol);  // untouched for rms: db0 on both sides
  // bitwise repeatable
  DevBuf dDx2(*gpu, dx0), dDw2(*gpu, dw0), dDb2(*gpu, db0);
  gpu->norm_backward(T, D, rms, dDout.p, dX.p, dW.p, rms ? nullptr : dMean.p, dRstd.p, dDx2.p, dDw2.p,
                     rms ? nullptr : dDb2.p);
  EXPECT_EQ(dDx2.host(), dDx.host());
  EXPECT_EQ(dDw2.host(), dDw.host());
  EXPECT_EQ(dDb2.host(), dDb.host());
  // main's kernel (BHASA_NORM_BWD_V=old, norm_backward_vec): the same arithmetic in the
  // source; ptxas fuses other multiply-adds into FMAs, so dx may differ in the last bits
  DevBuf dDx3(*gpu, dx0), dDw3(*gpu, dw0), dDb3(*gpu, db0), dDxCopy3(*gpu, nans(size_t(T) * D));
  {
    ScopedEnv old("BHASA_NORM_BWD_V", "old");
    gpu->norm_backward(T, D, rms, dDout.p, dX.p, dW.p, rms ? nullptr : dMean.p, dRstd.p, dDx3.p, dDw3.p,
                       rms ? nullptr : dDb3.p, dDxCopy3.p);
  }
  EXPECT_LE(rel_l2(dDx3.host(), dDx.host()), 1e-6);
  EXPECT_EQ(dDxCopy3.host(), dDx3.host());
  EXPECT_LE(rel_l2(dDw3.host(), dDw.host()), 1e-6);
  EXPECT_LE(rel_l2(dDb3.host(), dDb.host()), 1e-6);
}
// D = 50 takes the plain kernels, 96 / 768 / 1024 the register-resident fast path
INSTANTIATE_TEST_SUITE_P(RmsAndLayer, CudaNorm,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(50, 96, 768, 1024)));

// (with bias, B, L, E, K, ldx - 2E, x offset in floats): an even E and ldx take the
// forward's 2-channel (8-byte) path, an odd E or offset the scalar one; L = 300 spans
// two blocks of time (256 each); K from 1 to 6.
class CudaConv : public ::testing::TestWithParam<std::tuple<bool, int, int, int, int, int, int>> {};

TEST_P(CudaConv, ForwardBackwardAndWithState) {
  BHASA_REQUIRE_GPU(gpu);
  auto cpu = make_cpu_backend();
  const auto [with_bias, B, L, E, K, pad, off] = GetParam();
  std::mt19937 rng(5 + E + L + K);
  const int ldx = 2 * E + pad;
  auto x = randn(size_t(B) * L * ldx + off, rng), w = randn(size_t(E) * K, rng, 0.5f),
       bias = randn(E, rng), dout = randn(size_t(B) * L * E, rng), dw0 = randn(size_t(E) * K, rng),
       db0 = randn(E, rng), dx0 = randn(size_t(B) * L * ldx + off, rng);
  DevBuf dX(*gpu, x), dW(*gpu, w), dBias(*gpu, bias), out(*gpu, nans(size_t(B) * L * E));
  const float* bp = with_bias ? dBias.p : nullptr;
  const float* bh = with_bias ? bias.data() : nullptr;
  gpu->conv1d_silu_forward(B, L, E, K, dX.p + off, ldx, dW.p, bp, out.p);
  std::vector<float> ref(size_t(B) * L * E);
  cpu->conv1d_silu_forward(B, L, E, K, x.data() + off, ldx, w.data(), bh, ref.data());
  EXPECT_LE(rel_l2(out.host(), ref), kTol);

  // dx is "=" on its columns (stride ldx); the other columns keep dx0 on both sides.
  DevBuf dDout(*gpu, dout), dDx(*gpu, dx0), dDw(*gpu, dw0), dDb(*gpu, db0);
  for (int r = 0; r < B * L; ++r)  // poison the columns the kernel must write
    gpu->upload(dDx.p + off + size_t(r) * ldx, nans(E).data(), E);
  gpu->conv1d_silu_backward(B, L, E, K, dX.p + off, ldx, dW.p, bp, dDout.p, dDx.p + off, dDw.p,
                            with_bias ? dDb.p : nullptr);
  std::vector<float> dx = dx0, dw = dw0, db = db0;
  cpu->conv1d_silu_backward(B, L, E, K, x.data() + off, ldx, w.data(), bh, dout.data(), dx.data() + off,
                            dw.data(), with_bias ? db.data() : nullptr);
  EXPECT_LE(rel_l2(dDx.host(), dx), kTol);
  EXPECT_LE(rel_l2(dDw.host(), dw), kTol);
  EXPECT_LE(rel_l2(dDb.host(), db), kTol);
  // bitwise repeatable: a second backward onto fresh copies gives the same bits
  {
    DevBuf dDx2(*gpu, dx0), dDw2(*gpu, dw0), dDb2(*gpu, db0);
    gpu->conv1d_silu_backward(B, L, E, K, dX.p + off, ldx, dW.p, bp, dDout.p, dDx2.p + off, dDw2.p,
                              with_bias ? dDb2.p : nullptr);
    EXPECT_EQ(dDx2.host(), dDx.host());
    EXPECT_EQ(dDw2.host(), dDw.host());
    EXPECT_EQ(dDb2.host(), dDb.host());
  }

  // with state: two pieces (L1 then L - L1) continue exactly like the CPU
  const int L1 = 5, L2 = L - L1;
  std::vector<float> state(size_t(B) * (K - 1) * E, 0.0f);
  DevBuf dState(*gpu, state), o1(*gpu, nans(size_t(B) * L1 * E)), o2(*gpu, nans(size_t(B) * L2 * E));
  std::vector<float> x1(size_t(B) * L1 * ldx), x2(size_t(B) * L2 * ldx);
  for (int b = 0; b < B; ++b) {
    std::copy_n(x.begin() + off + size_t(b) * L * ldx, size_t(L1) * ldx, x1.begin() + size_t(b) * L1 * ldx);
    std::copy_n(x.begin() + off + (size_t(b) * L + L1) * ldx, size_t(L2) * ldx, x2.begin() + size_t(b) * L2 * ldx);
  }
  DevBuf dX1(*gpu, x1), dX2(*gpu, x2);
  gpu->conv1d_silu_with_state(B, L1, E, K, dX1.p, ldx, dW.p, bp, dState.p, o1.p);
  gpu->conv1d_silu_with_state(B, L2, E, K, dX2.p, ldx, dW.p, bp, dState.p, o2.p);
  std::vector<float> r1(size_t(B) * L1 * E), r2(size_t(B) * L2 * E);
  cpu->conv1d_silu_with_state(B, L1, E, K, x1.data(), ldx, w.data(), bh, state.data(), r1.data());
  cpu->conv1d_silu_with_state(B, L2, E, K, x2.data(), ldx, w.data(), bh, state.data(), r2.data());
  EXPECT_LE(rel_l2(o1.host(), r1), kTol);
  EXPECT_LE(rel_l2(o2.host(), r2), kTol);
  EXPECT_LE(rel_l2(dState.host(), state), kTol);
}
INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaConv,
    ::testing::Values(std::make_tuple(true, 3, 37, 80, 4, 0, 0), std::make_tuple(false, 3, 37, 80, 4, 0, 0),
                      std::make_tuple(true, 2, 300, 200, 4, 0, 0), std::make_tuple(true, 2, 300, 66, 4, 0, 0),
                      std::make_tuple(true, 2, 70, 33, 3, 1, 0), std::make_tuple(true, 2, 70, 80, 4, 0, 1),
                      std::make_tuple(false, 2, 41, 40, 2, 0, 0), std::make_tuple(true, 2, 41, 24, 6, 0, 0),
                      std::make_tuple(true, 1, 8, 16, 1, 0, 0)));

// (B, L, E, N, chunk, with h0)
class CudaScan : public ::testing::TestWithParam<std::tuple<int, int, int, int, int, bool>> {};

TEST_P(CudaScan, ForwardBackward) {
  BHASA_REQUIRE_GPU(gpu);
  auto cpu = make_cpu_backend();
  const auto [B, L, E, N, chunk, with_h0] = GetParam();
  std::mt19937 rng(6 + L + N);
  // R = 4 (even L): B, C rows 16-byte aligned when N % 4 == 0 (the chunk-8 backward's
  // 16-byte copies); R = 3: 4-byte copies
  const int R = L % 2 == 0 ? 4 : 3, P = R + 2 * N, ldz = 2 * E;
  const int n_chunks = (L + chunk - 1) / chunk;
  auto u = randn(size_t(B) * L * E, rng), dt = randn(size_t(B) * L * E, rng, 1.0f, -1.0f),
       dt_bias = randn(E, rng, 0.5f), A_log = randn(size_t(E) * N, rng, 0.5f, 0.5f),
       bc = randn(size_t(B) * L * P, rng), D = randn(E, rng), z = randn(size_t(B) * L * ldz, rng),
       h0 = randn(size_t(B) * E * N, rng), dout = randn(size_t(B) * L * E, rng);
  DevBuf du_(*gpu, u), ddt_(*gpu, dt), dbias_(*gpu, dt_bias), dAlog(*gpu, A_log), dbc(*gpu, bc),
      dD(*gpu, D), dz_(*gpu, z), dh0(*gpu, h0), out(*gpu, nans(size_t(B) * L * E)),
      states(*gpu, nans(size_t(B) * n_chunks * E * N)), hlast(*gpu, nans(size_t(B) * E * N));
  gpu->scan_forward(B, L, E, N, chunk, du_.p, ddt_.p, dbias_.p, dAlog.p, dbc.p + R, dbc.p + R + N, P,
                    dD.p, dz_.p + E, ldz, out.p, states.p, with_h0 ? dh0.p : nullptr, hlast.p);
  std::vector<float> rout(size_t(B) * L * E), rstates(size_t(B) * n_chunks * E * N), rlast(size_t(B) * E * N);
  cpu->scan_forward(B, L, E, N, chunk, u.data(), dt.data(), dt_bias.data(), A_log.data(), bc.data() + R,
                    bc.data() + R + N, P, D.data(), z.data() + E, ldz, rout.data(), rstates.data(),
                    with_h0 ? h0.data() : nullptr, rlast.data());
  EXPECT_LE(rel_l2(out.host(), rout), kTol);
  EXPECT_LE(rel_l2(states.host(), rstates), kTol);
  EXPECT_LE(rel_l2(hlast.host(), rlast), kTol);

  // backward: "=" outputs poisoned (dB, dC columns of a (T, P) buffer; dz the second half)
  auto dbc0 = randn(size_t(B) * L * P, rng), dz0 = randn(size_t(B) * L * ldz, rng),
       dA0 = randn(size_t(E) * N, rng), dD0 = randn(E, rng), dbias0 = randn(E, rng);
  DevBuf gout(*gpu, dout), gdu(*gpu, nans(size_t(B) * L * E)), gddt(*gpu, nans(size_t(B) * L * E)),
      gdbc(*gpu, dbc0), gdz(*gpu, dz0), gdA(*gpu, dA0), gdD(*gpu, dD0), gdbias(*gpu, dbias0);
  gpu->scan_backward(B, L, E, N, chunk, du_.p, ddt_.p, dbias_.p, dAlog.p, dbc.p + R, dbc.p + R + N, P,
                     dD.p, dz_.p + E, ldz, states.p, gout.p, gdu.p, gddt.p, gdbc.p + R, gdbc.p + R + N,
                     gdz.p + E, gdA.p, gdD.p, gdbias.p);
  std::vector<float> rdu(size_t(B) * L * E), rddt(size_t(B) * L * E), rdbc = dbc0, rdz = dz0,
                     rdA = dA0, rdD = dD0, rdbias = dbias0;
  cpu->scan_backward(B, L, E, N, chunk, u.data(), dt.data(), dt_bias.data(), A_log.data(), bc.data() + R,
                     bc.data() + R + N, P, D.data(), z.data() + E, ldz, rstates.data(), dout.data(),
                     rdu.data(), rddt.data(), rdbc.data() + R, rdbc.data() + R + N, rdz.data() + E,
                     rdA.data(), rdD.data(), rdbias.data());
  EXPECT_LE(rel_l2(gdu.host(), rdu), kTol) << "du";
  EXPECT_LE(rel_l2(gddt.host(), rddt), kTol) << "ddt";
  EXPECT_LE(rel_l2(gdbc.host(), rdbc), kTol) << "dB, dC";
  EXPECT_LE(rel_l2(gdz.host(), rdz), kTol) << "dz";
  EXPECT_LE(rel_l2(gdA.host(), rdA), kTol) << "dA_log";
  EXPECT_LE(rel_l2(gdD.host(), rdD), kTol) << "dD";
  EXPECT_LE(rel_l2(gdbias.host(), rdbias), kTol) << "ddt_bias";
}
INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaScan,
    ::testing::Values(std::make_tuple(2, 100, 48, 16, 64, false),   // L not a multiple of chunk, E not of 32
                      std::make_tuple(2, 128, 64, 8, 64, true),
                      std::make_tuple(1, 77, 96, 16, 16, true),
                      std::make_tuple(3, 50, 40, 5, 64, false),    // N padded to 8
                      std::make_tuple(1, 33, 32, 32, 8, true),
                      std::make_tuple(2, 1, 64, 4, 64, true),      // one step, as in decoding
                      // chunk not a multiple of the backward's 8-step sub-chunk: each chunk
                      // ends in a 4-step sub-chunk; L ends mid forward tile (32 steps)
                      std::make_tuple(2, 70, 40, 16, 12, true),
                      // many chunks: the backward's copy pipeline (3 sub-chunks ahead) wraps
                      std::make_tuple(1, 300, 64, 16, 64, false),
                      // chunk 8 (the CUDA backend's): the chunk-8 forward and backward kernels
                      std::make_tuple(2, 100, 48, 16, 8, false),  // L ends mid chunk, E not of 32
                      std::make_tuple(1, 300, 64, 16, 8, true),   // many chunks: the copy pipeline wraps
                      std::make_tuple(3, 50, 40, 5, 8, true),     // N padded to 8
                      std::make_tuple(2, 64, 96, 8, 8, false), std::make_tuple(2, 37, 64, 3, 8, true),
                      std::make_tuple(2, 1, 64, 16, 8, true),     // one step
                      // 2-lane chunk-8 backward with N padded (12 of 16), E % 4 != 0: 4-byte
                      // copies and one-float output stores
                      std::make_tuple(2, 45, 70, 12, 8, true)));

// chunk_states and u replaced after the GPU forward (as if they came from elsewhere, here
// the CPU): the backward must use only what it is given. (A backend that keeps more of
// the forward's states on the side, as scan v8 did, must notice they no longer match.)
TEST(CudaKernels, ScanBackwardAfterForeignChunkStates) {
  BHASA_REQUIRE_GPU(gpu);
  auto cpu = make_cpu_backend();
  std::mt19937 rng(12);
  const int B = 2, L = 100, E = 48, N = 16, P = 2 * N, chunk = 64, n_chunks = 2;
  const size_t ble = size_t(B) * L * E;
  auto u1 = randn(ble, rng), u2 = randn(ble, rng), dt = randn(ble, rng, 1.0f, -1.0f), bias = randn(E, rng, 0.5f),
       A_log = randn(size_t(E) * N, rng, 0.5f, 0.5f), bc = randn(size_t(B) * L * P, rng), D = randn(E, rng),
       z = randn(ble, rng), dout = randn(ble, rng);
  DevBuf du(*gpu, u1), ddt(*gpu, dt), dbias(*gpu, bias), dA(*gpu, A_log), dbc(*gpu, bc), dD(*gpu, D), dz(*gpu, z),
      dout_d(*gpu, dout), out(*gpu, ble), st(*gpu, size_t(B) * n_chunks * E * N);
  gpu->scan_forward(B, L, E, N, chunk, du.p, ddt.p, dbias.p, dA.p, dbc.p, dbc.p + N, P, dD.p, dz.p, E, out.p, st.p,
                    nullptr, nullptr);
  std::vector<float> rout(ble), rst(size_t(B) * n_chunks * E * N);
  cpu->scan_forward(B, L, E, N, chunk, u2.data(), dt.data(), bias.data(), A_log.data(), bc.data(), bc.data() + N, P,
                    D.data(), z.data(), E, rout.data(), rst.data(), nullptr, nullptr);
  gpu->upload(du.p, u2.data(), ble);
  gpu->upload(st.p, rst.data(), rst.size());
  DevBuf g1(*gpu, nans(ble)), g2(*gpu, nans(ble)), g3(*gpu, nans(size_t(B) * L * P)), g4(*gpu, nans(ble)),
      gA(*gpu, size_t(E) * N), gD(*gpu, E), gb(*gpu, E);
  gpu->scan_backward(B, L, E, N, chunk, du.p, ddt.p, dbias.p, dA.p, dbc.p, dbc.p + N, P, dD.p, dz.p, E, st.p,
                     dout_d.p, g1.p, g2.p, g3.p, g3.p + N, g4.p, gA.p, gD.p, gb.p);
  std::vector<float> r1(ble), r2(ble), r3(size_t(B) * L * P), r4(ble), rA(size_t(E) * N, 0.0f), rD(E, 0.0f),
      rb(E, 0.0f);
  cpu->scan_backward(B, L, E, N, chunk, u2.data(), dt.data(), bias.data(), A_log.data(), bc.data(), bc.data() + N, P,
                     D.data(), z.data(), E, rst.data(), dout.data(), r1.data(), r2.data(), r3.data(),
                     r3.data() + N, r4.data(), rA.data(), rD.data(), rb.data());
  EXPECT_LE(rel_l2(g1.host(), r1), kTol) << "du";
  EXPECT_LE(rel_l2(g2.host(), r2), kTol) << "ddt";
  EXPECT_LE(rel_l2(g3.host(), r3), kTol) << "dB, dC";
  EXPECT_LE(rel_l2(g4.host(), r4), kTol) << "dz";
  EXPECT_LE(rel_l2(gA.host(), rA), kTol) << "dA_log";
}

TEST(CudaKernels, ScanDecodeInPlaceState) {
  BHASA_REQUIRE_GPU(gpu);
  auto cpu = make_cpu_backend();
  std::mt19937 rng(7);
  const int B = 4, E = 64, N = 16, P = 2 * N, steps = 5;
  auto dt_bias = randn(E, rng, 0.5f), A_log = randn(size_t(E) * N, rng, 0.5f, 0.5f), D = randn(E, rng);
  std::vector<float> h(size_t(B) * E * N, 0.0f);
  DevBuf dbias(*gpu, dt_bias), dA(*gpu, A_log), dD(*gpu, D), dh(*gpu, h);
  for (int s = 0; s < steps; ++s) {
    auto u = randn(size_t(B) * E, rng), dt = randn(size_t(B) * E, rng), bc = randn(size_t(B) * P, rng),
         z = randn(size_t(B) * E, rng);
    DevBuf du(*gpu, u), ddt(*gpu, dt), dbc(*gpu, bc), dz(*gpu, z), out(*gpu, nans(size_t(B) * E));
    gpu->scan_forward(B, 1, E, N, 64, du.p, ddt.p, dbias.p, dA.p, dbc.p, dbc.p + N, P, dD.p, dz.p, E, out.p,
                      nullptr, dh.p, dh.p);
    std::vector<float> ref(size_t(B) * E);
    cpu->scan_forward(B, 1, E, N, 64, u.data(), dt.data(), dt_bias.data(), A_log.data(), bc.data(),
                      bc.data() + N, P, D.data(), z.data(), E, ref.data(), nullptr, h.data(), h.data());
    EXPECT_LE(rel_l2(out.host(), ref), kTol) << "step " << s;
  }
  EXPECT_LE(rel_l2(dh.host(), h), kTol);
}

TEST(CudaKernels, Swiglu) {
  BHASA_REQUIRE_GPU(gpu);
  auto cpu = make_cpu_backend();
  std::mt19937 rng(8);
  const int T = 77, I = 130;
  auto f = randn(size_t(T) * 2 * I, rng, 2.0f), dout = randn(size_t(T) * I, rng);
  DevBuf df_(*gpu, f), dd(*gpu, dout), out(*gpu, nans(size_t(T) * I)), gdf(*gpu, nans(size_t(T) * 2 * I));
  gpu->swiglu_forward(T, I, df_.p, out.p);
  gpu->swiglu_backward(T, I, df_.p, dd.p, gdf.p);
  std::vector<float> ref(size_t(T) * I), rdf(size_t(T) * 2 * I);
  cpu->swiglu_forward(T, I, f.data(), ref.data());
  cpu->swiglu_backward(T, I, f.data(), dout.data(), rdf.data());
  EXPECT_LE(rel_l2(out.host(), ref), kTol);
  EXPECT_LE(rel_l2(gdf.host(), rdf), kTol);
}

TEST(CudaKernels, CrossEntropy) {
  BHASA_REQUIRE_GPU(gpu);
  auto cpu = make_cpu_backend();
  std::mt19937 rng(9);
  // ldl = V + 3: the two-pass kernel; ldl = V (V % 4 == 0): the gradient through shared memory
  for (int pad : {3, 0})
  for (int V : {72, 1000, 50280}) {
    const int T = 37, ldl = V + pad;
    auto logits = randn(size_t(T) * ldl, rng, 3.0f);
    std::vector<int32_t> targets(T);
    for (int t = 0; t < T; ++t) targets[t] = t % 7 == 3 ? -100 : int32_t(rng() % V);
    DevIds dt(*gpu, targets);
    // loss only
    DevBuf dl(*gpu, logits);
    const double loss = gpu->cross_entropy(T, V, dl.p, ldl, dt.p, 0.0f);
    std::vector<float> ref = logits;
    const double rloss = cpu->cross_entropy(T, V, ref.data(), ldl, targets.data(), 0.0f);
    EXPECT_LE(std::fabs(loss - rloss) / rloss, kTol) << "V=" << V;
    EXPECT_LE(rel_l2(dl.host(), logits), 0.0) << "logits must be untouched when scale is 0";
    // loss and in-place gradient
    const double loss2 = gpu->cross_entropy(T, V, dl.p, ldl, dt.p, 0.25f);
    const double rloss2 = cpu->cross_entropy(T, V, ref.data(), ldl, targets.data(), 0.25f);
    EXPECT_LE(std::fabs(loss2 - rloss2) / rloss2, kTol);
    EXPECT_LE(rel_l2(dl.host(), ref), kTol) << "V=" << V << " ldl=" << ldl;
  }
}

TEST(CudaKernels, CrossEntropyRejectsTargetOutsideVocab) {
  BHASA_REQUIRE_GPU(gpu);
  const int T = 4, V = 10;
  std::vector<float> logits(size_t(T) * V, 0.5f);
  std::vector<int32_t> targets = {1, 2, 10, 3};
  DevBuf dl(*gpu, logits);
  DevIds dt(*gpu, targets);
  EXPECT_THROW(gpu->cross_entropy(T, V, dl.p, V, dt.p, 1.0f), Error);
}

TEST(CudaKernels, AdamwSumSquaresAxpy) {
  BHASA_REQUIRE_GPU(gpu);
  auto cpu = make_cpu_backend();
  std::mt19937 rng(10);
  const size_t n = 100003;
  auto p = randn(n, rng), g = randn(n, rng), m = randn(n, rng, 0.1f), v = randn(n, rng, 0.1f);
  for (auto& x : v) x = std::fabs(x);
  DevBuf dp(*gpu, p), dg(*gpu, g), dm(*gpu, m), dv(*gpu, v);
  // n % 4 == 3: the 16-byte kernel and its scalar tail; step 3 starts one float in
  // (unaligned: the scalar kernel)
  for (int step = 1; step <= 3; ++step) {
    const size_t o = step == 3 ? 1 : 0;
    gpu->adamw(n - o, dp.p + o, dg.p + o, dm.p + o, dv.p + o, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step, 0.7f);
    cpu->adamw(n - o, p.data() + o, g.data() + o, m.data() + o, v.data() + o, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f,
               step, 0.7f);
  }
  EXPECT_LE(rel_l2(dp.host(), p), kTol);
  EXPECT_LE(rel_l2(dm.host(), m), kTol);
  EXPECT_LE(rel_l2(dv.host(), v), kTol);

  const double ss = gpu->sum_squares(n, dg.p), rss = cpu->sum_squares(n, g.data());
  // The GPU sums each square in double; the CPU adds float blocks of 1024 into a
  // double, so the two differ by float rounding of the blocks (seen: 4e-9).
  EXPECT_LE(std::fabs(ss - rss) / rss, 1e-6);
  EXPECT_EQ(ss, gpu->sum_squares(n, dg.p)) << "sum_squares must be deterministic";

  gpu->axpy(n, -0.3f, dg.p, dp.p);
  cpu->axpy(n, -0.3f, g.data(), p.data());
  EXPECT_LE(rel_l2(dp.host(), p), kTol);
}

// chunk 64 (the general backward) and 8 (the chunk-8 backward)
class CudaScanDeterministic : public ::testing::TestWithParam<int> {};
TEST_P(CudaScanDeterministic, NormAndScanBackwardAreDeterministic) {
  BHASA_REQUIRE_GPU(gpu);
  std::mt19937 rng(11);
  const int B = 2, L = 130, E = 64, N = 16, P = 2 * N, chunk = GetParam(), n_chunks = (L + chunk - 1) / chunk;
  auto u = randn(size_t(B) * L * E, rng), dt = randn(size_t(B) * L * E, rng), bias = randn(E, rng),
       A_log = randn(size_t(E) * N, rng, 0.5f), bc = randn(size_t(B) * L * P, rng), D = randn(E, rng),
       z = randn(size_t(B) * L * E, rng), dout = randn(size_t(B) * L * E, rng);
  DevBuf du(*gpu, u), ddt(*gpu, dt), dbias(*gpu, bias), dA(*gpu, A_log), dbc(*gpu, bc), dD(*gpu, D),
      dz(*gpu, z), dout_d(*gpu, dout), out(*gpu, size_t(B) * L * E), st(*gpu, size_t(B) * n_chunks * E * N);
  gpu->scan_forward(B, L, E, N, chunk, du.p, ddt.p, dbias.p, dA.p, dbc.p, dbc.p + N, P, dD.p, dz.p, E, out.p,
                    st.p, nullptr, nullptr);
  std::vector<float> first;
  for (int rep = 0; rep < 2; ++rep) {
    DevBuf g1(*gpu, size_t(B) * L * E), g2(*gpu, size_t(B) * L * E), g3(*gpu, size_t(B) * L * P),
        g4(*gpu, size_t(B) * L * E), gA(*gpu, size_t(E) * N), gD(*gpu, E), gb(*gpu, E);
    gpu->scan_backward(B, L, E, N, chunk, du.p, ddt.p, dbias.p, dA.p, dbc.p, dbc.p + N, P, dD.p, dz.p, E, st.p,
                       dout_d.p, g1.p, g2.p, g3.p, g3.p + N, g4.p, gA.p, gD.p, gb.p);
    auto h = g3.host();
    for (const DevBuf* d : {&gA, &gD, &gb, &g1, &g2, &g4}) {
      auto a = d->host();
      h.insert(h.end(), a.begin(), a.end());
    }
    if (rep == 0) first = h;
    else EXPECT_EQ(h, first);
  }
}
INSTANTIATE_TEST_SUITE_P(Chunks, CudaScanDeterministic, ::testing::Values(64, 8));

}  // namespace
