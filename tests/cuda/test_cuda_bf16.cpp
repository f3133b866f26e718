// bf16 activations (kernels.h Operand): every kernel that writes one, against the CPU.
// A bf16 output must (1) be written everywhere it should (NaN-poisoned first) and nowhere
// else, (2) be the CPU's fp32 result rounded to bf16 (expect_bf16_of), 5e-4 .. 1e-2 away
// from the unrounded CPU result (so the rounding really happened). The fp32
// outputs of the same calls keep the fp32 tolerance (1e-5). GEMMs that read a bf16
// operand give what the copying path gives on the same values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "cuda_test_util.h"
#include "fixture_util.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "model/mamba.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

constexpr double kTol = 1e-5;

// A device buffer of n bf16 elements, poisoned with NaN (0x7fc0) or holding host values rounded.
struct DevBf16 {
  Backend* be;
  Operand op;
  size_t n;
  DevBf16(Backend& b, size_t count) : be(&b), op(b.alloc_operand(count, Dtype::bf16)), n(count) {
    set(std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()));
  }
  DevBf16(Backend& b, const std::vector<float>& host) : DevBf16(b, host.size()) { set(host); }
  ~DevBf16() { be->free(op.p); }
  DevBf16(const DevBf16&) = delete;
  DevBf16& operator=(const DevBf16&) = delete;
  void set(const std::vector<float>& host) {
    std::vector<uint16_t> h((n + 1) & ~size_t(1), 0);
    for (size_t i = 0; i < n; ++i) h[i] = std::isnan(host[i]) ? 0x7fc0 : float_to_bf16_bits(host[i]);
    std::vector<float> words(h.size() / 2);
    std::memcpy(words.data(), h.data(), h.size() * 2);
    be->upload(static_cast<float*>(op.p), words.data(), words.size());
  }
  std::vector<float> host() const {
    std::vector<float> words((n + 1) / 2);
    be->download(words.data(), static_cast<const float*>(op.p), words.size());
    std::vector<uint16_t> h(words.size() * 2);
    std::memcpy(h.data(), words.data(), h.size() * 2);
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = bf16_bits_to_float(h[i]);
    return v;
  }
};

// Columns [c0, c0 + cols) of each row of a (rows, ld) matrix.
std::vector<float> columns(const std::vector<float>& m, size_t rows, size_t ld, size_t c0, size_t cols) {
  std::vector<float> v;
  for (size_t r = 0; r < rows; ++r) v.insert(v.end(), m.begin() + r * ld + c0, m.begin() + r * ld + c0 + cols);
  return v;
}
bool all_nan(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isnan(x)) return false;
  return true;
}

// The checks of a bf16 output against the CPU's fp32 result: in the bf16 band, and equal to
// the rounded CPU value except where the two fp32 results straddle a rounding boundary
// (at most 1% of the elements, each then one bf16 step away: within 1e-4 overall).
void expect_bf16_of(const std::vector<float>& gpu, const std::vector<float>& cpu, const char* what) {
  const auto rounded = round_bf16(cpu);
  const double to_rounded = rel_l2(gpu, rounded), to_exact = rel_l2(gpu, cpu);
  size_t differ = 0;
  for (size_t i = 0; i < gpu.size() && i < cpu.size(); ++i) differ += gpu[i] != rounded[i];
  std::printf("[%s] bf16 rel err %.3g; to the rounded CPU result %.3g (%zu of %zu elements differ)\n", what,
              to_exact, to_rounded, differ, gpu.size());
  EXPECT_LE(to_exact, 1e-2) << what;
  EXPECT_GE(to_exact, 5e-4) << what << ": no bf16 rounding?";
  EXPECT_LE(to_rounded, 1e-4) << what;
  EXPECT_LE(differ, gpu.size() / 100) << what;
}

// A bf16 output that the same kernels also give in fp32 (the same call with an fp32
// output): exactly those fp32 values rounded (NaN never passes), and in the bf16 band of the
// CPU's fp32 result (a straddled rounding boundary on one large element can put a correct
// result 1e-3 away from the CPU's rounded one: expect_bf16_of's 1e-4 is for smooth data).
void expect_rounding_of(const std::vector<float>& gpu16, const std::vector<float>& gpu32,
                        const std::vector<float>& cpu, const char* what) {
  ASSERT_EQ(gpu16.size(), gpu32.size()) << what;
  size_t differ = 0;
  for (size_t i = 0; i < gpu16.size(); ++i) differ += !(gpu16[i] == round_bf16(gpu32[i]));
  const double to_exact = rel_l2(gpu16, cpu);
  std::printf("[%s] bf16 rel err %.3g; %zu of %zu elements differ from the fp32 output rounded\n", what, to_exact,
              differ, gpu16.size());
  EXPECT_EQ(differ, 0u) << what;
  EXPECT_LE(to_exact, 1e-2) << what;
  EXPECT_GE(to_exact, 5e-4) << what << ": no bf16 rounding?";
}

// (rms, D): D = 50 the plain kernel, 52 (8-byte aligned bf16 rows) and 768 the fast path
class CudaBf16Norm : public ::testing::TestWithParam<std::tuple<bool, int>> {};

TEST_P(CudaBf16Norm, Forward) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  ASSERT_EQ(gpu->operand_dtype(), Dtype::bf16);
  auto cpu = make_cpu_backend();
  const auto [rms, D] = GetParam();
  std::mt19937 rng(40 + D);
  const int T = 333;
  auto x = randn(size_t(T) * D, rng, 2.0f, 0.5f), w = randn(D, rng, 0.5f, 1.0f), b = randn(D, rng);
  DevBuf dX(*gpu, x), dW(*gpu, w), dB(*gpu, b), dMean(*gpu, size_t(T)), dRstd(*gpu, size_t(T));
  DevBf16 out(*gpu, size_t(T) * D);
  gpu->norm_forward(T, D, rms, 1e-5f, dX.p, dW.p, rms ? nullptr : dB.p, out.op, dMean.p, dRstd.p);
  std::vector<float> ref(size_t(T) * D), mean(T), rstd(T);
  cpu->norm_forward(T, D, rms, 1e-5f, x.data(), w.data(), rms ? nullptr : b.data(), ref.data(), mean.data(),
                    rstd.data());
  expect_bf16_of(out.host(), ref, "norm_forward");
  EXPECT_LE(rel_l2(dRstd.host(), rstd), kTol);
}
// dx_copy in bf16: the updated fp32 dx rounded (what out_proj's dY copy was), dx as in fp32.
TEST_P(CudaBf16Norm, BackwardCopiesDxInBf16) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  const auto [rms, D] = GetParam();
  std::mt19937 rng(41 + D);
  const int T = 333;
  auto x = randn(size_t(T) * D, rng, 2.0f, 0.5f), w = randn(D, rng, 0.5f, 1.0f), dout = randn(size_t(T) * D, rng),
       dx0 = randn(size_t(T) * D, rng);
  std::vector<float> mean(T), rstd(T), h(size_t(T) * D), dx = dx0, dw(D), db(D);
  cpu->norm_forward(T, D, rms, 1e-5f, x.data(), w.data(), nullptr, h.data(), mean.data(), rstd.data());
  DevBuf dX(*gpu, x), dW(*gpu, w), dOut(*gpu, dout), dMean(*gpu, mean), dRstd(*gpu, rstd), dDx(*gpu, dx0),
      dDw(*gpu, size_t(D)), dDb(*gpu, size_t(D));
  DevBf16 copy(*gpu, size_t(T) * D);
  gpu->norm_backward(T, D, rms, dOut.p, dX.p, dW.p, dMean.p, dRstd.p, dDx.p, dDw.p, rms ? nullptr : dDb.p, copy.op);
  cpu->norm_backward(T, D, rms, dout.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), dw.data(),
                     rms ? nullptr : db.data());
  const std::vector<float> gdx = dDx.host();
  EXPECT_LE(rel_l2(gdx, dx), kTol);
  EXPECT_EQ(copy.host(), round_bf16(gdx));
}
// dout in bf16 (in_proj's dX in a bf16 training plan): the same as the CPU on the rounded
// dout, to fp32 accuracy, dw and db included; dx_copy in bf16 as above.
TEST_P(CudaBf16Norm, BackwardReadsBf16Dout) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  const auto [rms, D] = GetParam();
  std::mt19937 rng(42 + D);
  const int T = 333;
  auto x = randn(size_t(T) * D, rng, 2.0f, 0.5f), w = randn(D, rng, 0.5f, 1.0f),
       dout = round_bf16(randn(size_t(T) * D, rng)), dx0 = randn(size_t(T) * D, rng), dw0 = randn(D, rng),
       db0 = randn(D, rng);
  std::vector<float> mean(T), rstd(T), h(size_t(T) * D), dx = dx0, dw = dw0, db = db0;
  cpu->norm_forward(T, D, rms, 1e-5f, x.data(), w.data(), nullptr, h.data(), mean.data(), rstd.data());
  DevBuf dX(*gpu, x), dW(*gpu, w), dMean(*gpu, mean), dRstd(*gpu, rstd), dDx(*gpu, dx0), dDw(*gpu, dw0),
      dDb(*gpu, db0);
  DevBf16 dOut(*gpu, dout), copy(*gpu, size_t(T) * D);
  gpu->norm_backward(T, D, rms, dOut.op, dX.p, dW.p, dMean.p, dRstd.p, dDx.p, dDw.p, rms ? nullptr : dDb.p,
                     copy.op);
  cpu->norm_backward(T, D, rms, dout.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), dw.data(),
                     rms ? nullptr : db.data());
  const std::vector<float> gdx = dDx.host();
  EXPECT_LE(rel_l2(gdx, dx), kTol);
  EXPECT_LE(rel_l2(dDw.host(), dw), kTol);
  if (!rms) {
    EXPECT_LE(rel_l2(dDb.host(), db), kTol);
  }
  EXPECT_EQ(copy.host(), round_bf16(gdx));
}
INSTANTIATE_TEST_SUITE_P(RmsAndLayer, CudaBf16Norm,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(50, 52, 768)));

// conv1d_silu_backward's dx into the first half of a bf16 (B, L, 2E) buffer (in_proj's
// dY): the second half stays untouched; dw, dbias stay fp32.
TEST(CudaBf16, ConvBackwardDx) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  for (int E : {200, 33}) {
    const int B = 2, L = 300, K = 4, ldx = 2 * E;
    std::mt19937 rng(50 + E);
    auto x = randn(size_t(B) * L * ldx, rng), w = randn(size_t(E) * K, rng, 0.5f), bias = randn(E, rng),
         dout = randn(size_t(B) * L * E, rng), dw0 = randn(size_t(E) * K, rng), db0 = randn(E, rng);
    DevBuf dX(*gpu, x), dW(*gpu, w), dBias(*gpu, bias), dDout(*gpu, dout), dDw(*gpu, dw0), dDb(*gpu, db0);
    DevBf16 dx(*gpu, size_t(B) * L * ldx);
    gpu->conv1d_silu_backward(B, L, E, K, dX.p, ldx, dW.p, dBias.p, dDout.p, dx.op, dDw.p, dDb.p);
    std::vector<float> rdx(size_t(B) * L * ldx), rdw = dw0, rdb = db0;
    cpu->conv1d_silu_backward(B, L, E, K, x.data(), ldx, w.data(), bias.data(), dout.data(), rdx.data(),
                              rdw.data(), rdb.data());
    const auto got = dx.host();
    expect_bf16_of(columns(got, size_t(B) * L, ldx, 0, E), columns(rdx, size_t(B) * L, ldx, 0, E),
                   "conv1d_silu_backward dx");
    EXPECT_TRUE(all_nan(columns(got, size_t(B) * L, ldx, E, E))) << "wrote outside dx";
    EXPECT_LE(rel_l2(dDw.host(), rdw), kTol);
    EXPECT_LE(rel_l2(dDb.host(), rdb), kTol);
  }
}

// The scan's y (forward) and dz (backward, the second half of a bf16 (T, 2E) buffer)
// in bf16; everything else fp32 and tight. (B, L, E, N, chunk): the chunk-8 kernels
// with 2 lanes (N 16) and 4 lanes (N 5) per channel, and the general kernels.
class CudaBf16Scan : public ::testing::TestWithParam<std::tuple<int, int, int, int, int>> {};

TEST_P(CudaBf16Scan, OutAndDz) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  const auto [B, L, E, N, chunk] = GetParam();
  std::mt19937 rng(60 + L + N + chunk);
  const int R = 4, P = R + 2 * N, ldz = 2 * E, n_chunks = (L + chunk - 1) / chunk;
  const size_t T = size_t(B) * L;
  auto u = randn(T * E, rng), dt = randn(T * E, rng, 1.0f, -1.0f), dt_bias = randn(E, rng, 0.5f),
       A_log = randn(size_t(E) * N, rng, 0.5f, 0.5f), bc = randn(T * P, rng), D = randn(E, rng),
       z = randn(T * ldz, rng), dout = randn(T * E, rng);
  DevBuf du_(*gpu, u), ddt_(*gpu, dt), dbias_(*gpu, dt_bias), dAlog(*gpu, A_log), dbc(*gpu, bc), dD(*gpu, D),
      dz_(*gpu, z), states(*gpu, size_t(B) * n_chunks * E * N), gout(*gpu, dout);
  DevBf16 y(*gpu, T * E);
  gpu->scan_forward(B, L, E, N, chunk, du_.p, ddt_.p, dbias_.p, dAlog.p, dbc.p + R, dbc.p + R + N, P, dD.p,
                    dz_.p + E, ldz, y.op, states.p, nullptr, nullptr);
  std::vector<float> ry(T * E), rstates(size_t(B) * n_chunks * E * N);
  cpu->scan_forward(B, L, E, N, chunk, u.data(), dt.data(), dt_bias.data(), A_log.data(), bc.data() + R,
                    bc.data() + R + N, P, D.data(), z.data() + E, ldz, ry.data(), rstates.data(), nullptr,
                    nullptr);
  expect_bf16_of(y.host(), ry, "scan_forward y");
  EXPECT_LE(rel_l2(states.host(), rstates), kTol);

  DevBuf gdu(*gpu, T * E), gddt(*gpu, T * E), gdbc(*gpu, T * P), gdA(*gpu, size_t(E) * N), gdD(*gpu, size_t(E)),
      gdbias(*gpu, size_t(E));
  DevBf16 dxz(*gpu, T * ldz);
  gpu->scan_backward(B, L, E, N, chunk, du_.p, ddt_.p, dbias_.p, dAlog.p, dbc.p + R, dbc.p + R + N, P, dD.p,
                     dz_.p + E, ldz, states.p, gout.p, gdu.p, gddt.p, gdbc.p + R, gdbc.p + R + N, dxz.op + E,
                     gdA.p, gdD.p, gdbias.p);
  std::vector<float> rdu(T * E), rddt(T * E), rdbc(T * P), rdz(T * ldz), rdA(size_t(E) * N), rdD(E), rdb(E);
  cpu->scan_backward(B, L, E, N, chunk, u.data(), dt.data(), dt_bias.data(), A_log.data(), bc.data() + R,
                     bc.data() + R + N, P, D.data(), z.data() + E, ldz, rstates.data(), dout.data(), rdu.data(),
                     rddt.data(), rdbc.data() + R, rdbc.data() + R + N, rdz.data() + E, rdA.data(), rdD.data(),
                     rdb.data());
  const auto got = dxz.host();
  expect_bf16_of(columns(got, T, ldz, E, E), columns(rdz, T, ldz, E, E), "scan_backward dz");
  EXPECT_TRUE(all_nan(columns(got, T, ldz, 0, E))) << "wrote outside dz";
  EXPECT_LE(rel_l2(gdu.host(), rdu), kTol) << "du";
  EXPECT_LE(rel_l2(gddt.host(), rddt), kTol) << "ddt";
  EXPECT_LE(rel_l2(columns(gdbc.host(), T, P, R, 2 * N), columns(rdbc, T, P, R, 2 * N)), kTol) << "dB, dC";
  EXPECT_LE(rel_l2(gdA.host(), rdA), kTol) << "dA_log";
  EXPECT_LE(rel_l2(gdD.host(), rdD), kTol) << "dD";
  EXPECT_LE(rel_l2(gdbias.host(), rdb), kTol) << "ddt_bias";

  // du in bf16 (a bf16 plan's d_xs) on fp32 inputs: the fp32 du above rounded; 8 poisoned
  // elements past the end stay NaN; ddt as before
  DevBf16 hdu(*gpu, T * E + 8);
  DevBuf gddt2(*gpu, T * E), gdA2(*gpu, size_t(E) * N), gdD2(*gpu, size_t(E)), gdbias2(*gpu, size_t(E));
  gpu->scan_backward(B, L, E, N, chunk, du_.p, ddt_.p, dbias_.p, dAlog.p, dbc.p + R, dbc.p + R + N, P, dD.p,
                     dz_.p + E, ldz, states.p, gout.p, hdu.op, gddt2.p, gdbc.p + R, gdbc.p + R + N, dxz.op + E,
                     gdA2.p, gdD2.p, gdbias2.p);
  const auto h = hdu.host();
  expect_rounding_of(std::vector<float>(h.begin(), h.begin() + T * E), gdu.host(), rdu,
                     "scan_backward bf16 du (fp32 inputs)");
  EXPECT_TRUE(all_nan(std::vector<float>(h.begin() + T * E, h.end()))) << "wrote past du";
  EXPECT_LE(rel_l2(gddt2.host(), rddt), kTol) << "ddt (bf16 du)";
}
INSTANTIATE_TEST_SUITE_P(Shapes, CudaBf16Scan,
                         ::testing::Values(std::make_tuple(2, 100, 48, 16, 8), std::make_tuple(1, 300, 64, 16, 8),
                                           std::make_tuple(3, 50, 40, 5, 8), std::make_tuple(2, 100, 48, 16, 64),
                                           std::make_tuple(2, 70, 40, 16, 12)));

// The scan on bf16 inputs (a bf16 training plan's u = xs, dt, z = the second half of xz,
// dout = d_y) with bf16 outputs y, ddt, dz, against the CPU fed the same bf16 values:
// the fp32 outputs (chunk states, du, dB, dC, dA_log, dD, ddt_bias) within 1e-5, the
// bf16 ones the CPU's rounded. (B, L, E, N, chunk, mode): mode 0 all five bf16 (the
// chunk-8 kernels read them as they are where N is 9..16 and rows line up: E a multiple
// of 8, else copies), 1 the same with u, dt, dout one element past a 16-byte boundary
// (copies), 2 only ddt and u bf16 (mixed: copies).
class CudaBf16ScanInputs : public ::testing::TestWithParam<std::tuple<int, int, int, int, int, int>> {};

TEST_P(CudaBf16ScanInputs, AgainstCpuOnRoundedValues) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  const auto [B, L, E, N, chunk, mode] = GetParam();
  std::mt19937 rng(160 + L + N + chunk + mode);
  const int R = 4, P = R + 2 * N, ldz = 2 * E, n_chunks = (L + chunk - 1) / chunk, off = mode == 1 ? 1 : 0;
  const size_t T = size_t(B) * L;
  const bool all = mode != 2;
  auto u = round_bf16(randn(T * E, rng)), dt = randn(T * E, rng, 1.0f, -1.0f), dt_bias = randn(E, rng, 0.5f),
       A_log = randn(size_t(E) * N, rng, 0.5f, 0.5f), bc = randn(T * P, rng), D = randn(E, rng),
       xz = randn(T * ldz, rng), dout = randn(T * E, rng);
  if (all) dt = round_bf16(dt), xz = round_bf16(xz), dout = round_bf16(dout);
  auto padded = [&](const std::vector<float>& v) {  // off leading elements, then v
    std::vector<float> w(off, 0.0f);
    w.insert(w.end(), v.begin(), v.end());
    return w;
  };
  DevBf16 hu(*gpu, padded(u)), hdt(*gpu, padded(dt)), hxz(*gpu, xz), hdout(*gpu, padded(dout));
  DevBuf fdt(*gpu, dt), fxz(*gpu, xz), fdout(*gpu, dout), dbias_(*gpu, dt_bias), dAlog(*gpu, A_log),
      dbc(*gpu, bc), dD(*gpu, D), states(*gpu, size_t(B) * n_chunks * E * N);
  const ConstOperand gu = hu.op + off;
  const ConstOperand gdt = all ? ConstOperand(hdt.op + off) : ConstOperand(fdt.p);
  const ConstOperand gz = all ? ConstOperand(hxz.op + E) : ConstOperand(fxz.p + E);
  const ConstOperand gdout = all ? ConstOperand(hdout.op + off) : ConstOperand(fdout.p);
  DevBf16 y(*gpu, T * E);
  gpu->scan_forward(B, L, E, N, chunk, gu, gdt, dbias_.p, dAlog.p, dbc.p + R, dbc.p + R + N, P, dD.p, gz, ldz,
                    y.op, states.p, nullptr, nullptr);
  std::vector<float> ry(T * E), rstates(size_t(B) * n_chunks * E * N);
  cpu->scan_forward(B, L, E, N, chunk, u.data(), dt.data(), dt_bias.data(), A_log.data(), bc.data() + R,
                    bc.data() + R + N, P, D.data(), xz.data() + E, ldz, ry.data(), rstates.data(), nullptr,
                    nullptr);
  expect_bf16_of(y.host(), ry, "scan_forward y");
  EXPECT_LE(rel_l2(states.host(), rstates), kTol) << "chunk states";

  DevBuf gdu(*gpu, std::vector<float>(T * E, std::numeric_limits<float>::quiet_NaN())), gdbc(*gpu, T * P),
      gdA(*gpu, size_t(E) * N), gdD(*gpu, size_t(E)), gdbias(*gpu, size_t(E));
  DevBf16 gddt(*gpu, T * E), dxz(*gpu, T * ldz);
  gpu->scan_backward(B, L, E, N, chunk, gu, gdt, dbias_.p, dAlog.p, dbc.p + R, dbc.p + R + N, P, dD.p, gz, ldz,
                     states.p, gdout, gdu.p, gddt.op, gdbc.p + R, gdbc.p + R + N, dxz.op + E, gdA.p, gdD.p,
                     gdbias.p);
  std::vector<float> rdu(T * E), rddt(T * E), rdbc(T * P), rdz(T * ldz), rdA(size_t(E) * N), rdD(E), rdb(E);
  cpu->scan_backward(B, L, E, N, chunk, u.data(), dt.data(), dt_bias.data(), A_log.data(), bc.data() + R,
                     bc.data() + R + N, P, D.data(), xz.data() + E, ldz, rstates.data(), dout.data(), rdu.data(),
                     rddt.data(), rdbc.data() + R, rdbc.data() + R + N, rdz.data() + E, rdA.data(), rdD.data(),
                     rdb.data());
  const auto got = dxz.host();
  expect_bf16_of(columns(got, T, ldz, E, E), columns(rdz, T, ldz, E, E), "scan_backward dz");
  EXPECT_TRUE(all_nan(columns(got, T, ldz, 0, E))) << "wrote outside dz";
  expect_bf16_of(gddt.host(), rddt, "scan_backward ddt");
  EXPECT_LE(rel_l2(gdu.host(), rdu), kTol) << "du";
  EXPECT_LE(rel_l2(columns(gdbc.host(), T, P, R, 2 * N), columns(rdbc, T, P, R, 2 * N)), kTol) << "dB, dC";
  EXPECT_LE(rel_l2(gdA.host(), rdA), kTol) << "dA_log";
  EXPECT_LE(rel_l2(gdD.host(), rdD), kTol) << "dD";
  EXPECT_LE(rel_l2(gdbias.host(), rdb), kTol) << "ddt_bias";

  // The same with du in bf16 too (a bf16 plan's d_xs: the V11 kernel's bf16 store where it
  // reads the inputs as they are, else the fp32 copy rounded): the fp32 du above rounded, 8
  // poisoned elements past the end untouched; ddt, dz bitwise as with the fp32 du
  DevBf16 hdu(*gpu, T * E + 8), gddt2(*gpu, T * E), dxz2(*gpu, T * ldz);
  DevBuf gdA2(*gpu, size_t(E) * N), gdD2(*gpu, size_t(E)), gdbias2(*gpu, size_t(E));
  gpu->scan_backward(B, L, E, N, chunk, gu, gdt, dbias_.p, dAlog.p, dbc.p + R, dbc.p + R + N, P, dD.p, gz, ldz,
                     states.p, gdout, hdu.op, gddt2.op, gdbc.p + R, gdbc.p + R + N, dxz2.op + E, gdA2.p, gdD2.p,
                     gdbias2.p);
  const auto h = hdu.host();
  expect_rounding_of(std::vector<float>(h.begin(), h.begin() + T * E), gdu.host(), rdu, "scan_backward bf16 du");
  EXPECT_TRUE(all_nan(std::vector<float>(h.begin() + T * E, h.end()))) << "wrote past du";
  EXPECT_EQ(gddt2.host(), gddt.host()) << "ddt (bf16 du)";
  EXPECT_EQ(columns(dxz2.host(), T, ldz, E, E), columns(got, T, ldz, E, E)) << "dz (bf16 du)";
  EXPECT_LE(rel_l2(gdD2.host(), rdD), kTol) << "dD (bf16 du)";
}
INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaBf16ScanInputs,
    ::testing::Values(std::make_tuple(2, 100, 48, 16, 8, 0), std::make_tuple(1, 300, 64, 16, 8, 0),
                      std::make_tuple(2, 77, 136, 16, 8, 0), std::make_tuple(2, 100, 36, 16, 8, 0),
                      std::make_tuple(2, 100, 48, 16, 8, 1), std::make_tuple(2, 100, 48, 16, 8, 2),
                      std::make_tuple(3, 50, 40, 5, 8, 0), std::make_tuple(2, 100, 48, 16, 64, 0),
                      std::make_tuple(2, 70, 40, 20, 12, 0)));

// conv1d_silu_forward on bf16 x (the first half of a bf16 xz, row stride 2E) into a bf16
// out (xs), and the backward on the same bf16 x: against the CPU on the rounded x.
TEST(CudaBf16, ConvReadsBf16X) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  for (int E : {200, 33}) {
    const int B = 2, L = 300, K = 4, ldx = 2 * E;
    std::mt19937 rng(150 + E);
    auto x = round_bf16(randn(size_t(B) * L * ldx, rng)), w = randn(size_t(E) * K, rng, 0.5f),
         bias = randn(E, rng), dout = randn(size_t(B) * L * E, rng), dw0 = randn(size_t(E) * K, rng),
         db0 = randn(E, rng);
    DevBf16 hx(*gpu, x), out(*gpu, size_t(B) * L * E);
    DevBuf dW(*gpu, w), dBias(*gpu, bias), dDout(*gpu, dout), dDw(*gpu, dw0), dDb(*gpu, db0),
        gdx(*gpu, size_t(B) * L * ldx);
    gpu->conv1d_silu_forward(B, L, E, K, hx.op, ldx, dW.p, dBias.p, out.op);
    std::vector<float> ref(size_t(B) * L * E);
    cpu->conv1d_silu_forward(B, L, E, K, x.data(), ldx, w.data(), bias.data(), ref.data());
    expect_bf16_of(out.host(), ref, "conv1d_silu_forward (bf16 x, out)");

    gpu->conv1d_silu_backward(B, L, E, K, hx.op, ldx, dW.p, dBias.p, dDout.p, gdx.p, dDw.p, dDb.p);
    std::vector<float> rdx(size_t(B) * L * ldx), rdw = dw0, rdb = db0;
    cpu->conv1d_silu_backward(B, L, E, K, x.data(), ldx, w.data(), bias.data(), dout.data(), rdx.data(),
                              rdw.data(), rdb.data());
    EXPECT_LE(rel_l2(columns(gdx.host(), size_t(B) * L, ldx, 0, E), columns(rdx, size_t(B) * L, ldx, 0, E)), kTol)
        << "dx E=" << E;
    EXPECT_LE(rel_l2(dDw.host(), rdw), kTol) << "dw E=" << E;
    EXPECT_LE(rel_l2(dDb.host(), rdb), kTol) << "dbias E=" << E;
  }
}

// conv1d_silu_backward on a bf16 dout (a bf16 plan's d_xs), with x and dx fp32 or bf16,
// dout at a 4-byte boundary or one element past it (no bf16 pairs): against the CPU on the
// rounded x and dout; dx fp32 within 1e-5, bf16 the CPU's rounded, NaN-poisoned.
TEST(CudaBf16, ConvBackwardReadsBf16Dout) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  for (int E : {200, 33})
    for (int mode = 0; mode < 4; ++mode)  // bit 0: x bf16, bit 1: dx bf16
      for (int off : {0, 1}) {
        const int B = 2, L = 300, K = 4, ldx = 2 * E;
        const bool x16 = mode & 1, dx16 = mode & 2;
        std::mt19937 rng(250 + E + mode + off);
        auto x = round_bf16(randn(size_t(B) * L * ldx, rng)), w = randn(size_t(E) * K, rng, 0.5f),
             bias = randn(E, rng), dout = round_bf16(randn(size_t(B) * L * E, rng)),
             dw0 = randn(size_t(E) * K, rng), db0 = randn(E, rng);
        std::vector<float> padded(off, 0.0f);
        padded.insert(padded.end(), dout.begin(), dout.end());
        DevBf16 hx(*gpu, x), hdout(*gpu, padded), hdx(*gpu, size_t(B) * L * ldx);
        DevBuf fx(*gpu, x), dW(*gpu, w), dBias(*gpu, bias), dDw(*gpu, dw0), dDb(*gpu, db0),
            fdx(*gpu, std::vector<float>(size_t(B) * L * ldx, std::numeric_limits<float>::quiet_NaN()));
        const ConstOperand gx = x16 ? ConstOperand(hx.op) : ConstOperand(fx.p);
        const Operand gdx = dx16 ? hdx.op : Operand(fdx.p);
        gpu->conv1d_silu_backward(B, L, E, K, gx, ldx, dW.p, dBias.p, hdout.op + off, gdx, dDw.p, dDb.p);
        std::vector<float> rdx(size_t(B) * L * ldx), rdw = dw0, rdb = db0;
        cpu->conv1d_silu_backward(B, L, E, K, x.data(), ldx, w.data(), bias.data(), dout.data(), rdx.data(),
                                  rdw.data(), rdb.data());
        const std::string what = "conv bwd bf16 dout E=" + std::to_string(E) + " mode=" + std::to_string(mode) +
                                 " off=" + std::to_string(off);
        const auto got = dx16 ? hdx.host() : fdx.host();
        const auto gdx_cols = columns(got, size_t(B) * L, ldx, 0, E), rdx_cols = columns(rdx, size_t(B) * L, ldx, 0, E);
        if (dx16) expect_bf16_of(gdx_cols, rdx_cols, what.c_str());
        else EXPECT_LE(rel_l2(gdx_cols, rdx_cols), kTol) << what;
        EXPECT_TRUE(all_nan(columns(got, size_t(B) * L, ldx, E, E))) << what << ": wrote outside dx";
        EXPECT_LE(rel_l2(dDw.host(), rdw), kTol) << what;
        EXPECT_LE(rel_l2(dDb.host(), rdb), kTol) << what;
      }
}

// The pipelined conv forward and backward (bf16 x and dout, E and ldx multiples of 8,
// 16-byte aligned) and their fallbacks, out / dx bf16 or fp32: (B, L, E, K, ldx - 2E, x
// offset in elements).
// L = 300 ends inside a block of time (4 warps x 64 times, 128 at K = 4 with a bf16 dx),
// L = 37 / 8 inside one warp's range; E = 200 / 80 leave part of a 64-channel group empty; K from 1 to 6; ldx + 8 keeps
// the pipelined path, an x offset of 4 (8-byte aligned) and E = 36 take the old kernel.
class CudaBf16ConvPipe : public ::testing::TestWithParam<std::tuple<int, int, int, int, int, int>> {};

TEST_P(CudaBf16ConvPipe, ForwardBackwardMatchCpu) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  const auto [B, L, E, K, pad, off] = GetParam();
  for (bool dx16 : {true, false}) {
    const int ldx = 2 * E + pad;
    std::mt19937 rng(350 + B + L + E + K + pad + off);
    auto x = round_bf16(randn(size_t(B) * L * ldx, rng)), w = randn(size_t(E) * K, rng, 0.5f),
         bias = randn(E, rng), dout = round_bf16(randn(size_t(B) * L * E, rng)), dw0 = randn(size_t(E) * K, rng),
         db0 = randn(E, rng);
    std::vector<float> xpad(off, 0.0f);
    xpad.insert(xpad.end(), x.begin(), x.end());
    DevBf16 hx(*gpu, xpad), hdout(*gpu, dout), hdx(*gpu, size_t(B) * L * ldx);
    DevBuf dW(*gpu, w), dBias(*gpu, bias), dDw(*gpu, dw0), dDb(*gpu, db0),
        fdx(*gpu, std::vector<float>(size_t(B) * L * ldx, std::numeric_limits<float>::quiet_NaN()));
    const std::string what = "conv B=" + std::to_string(B) + " L=" + std::to_string(L) + " E=" +
                             std::to_string(E) + " K=" + std::to_string(K) + " pad=" + std::to_string(pad) +
                             " off=" + std::to_string(off) + (dx16 ? " out/dx bf16" : " out/dx fp32");
    DevBf16 hout(*gpu, size_t(B) * L * E);
    DevBuf fout(*gpu, std::vector<float>(size_t(B) * L * E, std::numeric_limits<float>::quiet_NaN()));
    gpu->conv1d_silu_forward(B, L, E, K, hx.op + off, ldx, dW.p, dBias.p, dx16 ? hout.op : Operand(fout.p));
    std::vector<float> rout(size_t(B) * L * E);
    cpu->conv1d_silu_forward(B, L, E, K, x.data(), ldx, w.data(), bias.data(), rout.data());
    if (dx16) expect_bf16_of(hout.host(), rout, (what + " forward").c_str());
    else EXPECT_LE(rel_l2(fout.host(), rout), kTol) << what << " forward";

    const Operand gdx = dx16 ? hdx.op : Operand(fdx.p);
    gpu->conv1d_silu_backward(B, L, E, K, hx.op + off, ldx, dW.p, dBias.p, hdout.op, gdx, dDw.p, dDb.p);
    std::vector<float> rdx(size_t(B) * L * ldx), rdw = dw0, rdb = db0;
    cpu->conv1d_silu_backward(B, L, E, K, x.data(), ldx, w.data(), bias.data(), dout.data(), rdx.data(), rdw.data(),
                              rdb.data());
    const auto got = dx16 ? hdx.host() : fdx.host();
    const auto gcols = columns(got, size_t(B) * L, ldx, 0, E), rcols = columns(rdx, size_t(B) * L, ldx, 0, E);
    if (dx16) expect_bf16_of(gcols, rcols, what.c_str());
    else EXPECT_LE(rel_l2(gcols, rcols), kTol) << what;
    EXPECT_TRUE(all_nan(columns(got, size_t(B) * L, ldx, E, ldx - E))) << what << ": wrote outside dx";
    EXPECT_LE(rel_l2(dDw.host(), rdw), kTol) << what;
    EXPECT_LE(rel_l2(dDb.host(), rdb), kTol) << what;
  }
}
INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaBf16ConvPipe,
    ::testing::Values(std::make_tuple(2, 300, 200, 4, 0, 0), std::make_tuple(3, 37, 80, 4, 0, 0),
                      std::make_tuple(1, 8, 16, 1, 0, 0), std::make_tuple(2, 70, 72, 6, 8, 0),
                      std::make_tuple(2, 300, 128, 3, 0, 8), std::make_tuple(2, 300, 128, 4, 0, 4),
                      std::make_tuple(2, 129, 36, 4, 0, 0), std::make_tuple(1, 600, 1536, 4, 0, 0)));

// x_proj's backward in a bf16 plan: linear_backward adding (beta 1) into a bf16 dX (d_xs,
// holding the scan's du) from an fp32 dY (d_dbc, thin: O = 80) and a bf16 X (xs). cuBLASLt
// reads and writes C in bf16 and rounds the product to bf16 before it adds C (on the H200
// every element equalled round(dX0 + round(P)); ~30% were one bf16 step from dX0 + P
// rounded once), as mamba_ssm's bf16 autograd sum of the two gradients does. Not relying
// on that order: per element |dX - (dX0 + P)| <= 2^-8
// (|P| + |dX0 + P|) (two roundings of at most 2^-9 each, with slack), P = dY @ W on the
// rounded operands; NaN-free; dW fp32 as from the copies. Also a strided dY (ldy > O).
TEST(CudaBf16, LinearBackwardAddsIntoBf16Dx) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  std::mt19937 rng(95);
  const int T = 300, O = 80, I = 136;
  for (int ldy : {O, O + 16}) {
    auto dY = randn(size_t(T) * ldy, rng), W = randn(size_t(O) * I, rng), X = round_bf16(randn(size_t(T) * I, rng)),
         dX0 = round_bf16(randn(size_t(T) * I, rng, 3.0f)), dW0 = randn(size_t(O) * I, rng);
    DevBf16 hX(*gpu, X), hdX(*gpu, dX0);
    DevBuf fY(*gpu, dY), fW(*gpu, W), gdW(*gpu, dW0);
    gpu->linear_backward(T, O, I, fY.p, ldy, fW.p, I, hX.op, I, 1.0f, hdX.op, I, gdW.p);
    const auto dY16 = round_bf16(dY), W16 = round_bf16(W);
    std::vector<float> rP(size_t(T) * I), rdX(size_t(T) * I), once(size_t(T) * I), twice(size_t(T) * I),
        rdW = dW0;
    cpu->gemm(false, false, T, I, O, dY16.data(), ldy, W16.data(), I, 0.0f, rP.data(), I);
    cpu->gemm(true, false, O, I, T, dY16.data(), ldy, X.data(), I, 1.0f, rdW.data(), I);
    const auto got = hdX.host();
    size_t bad = 0, as_once = 0, as_twice = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      rdX[i] = dX0[i] + rP[i];
      once[i] = round_bf16(rdX[i]), twice[i] = round_bf16(dX0[i] + round_bf16(rP[i]));
      bad += !(std::fabs(got[i] - rdX[i]) <= std::ldexp(std::fabs(rP[i]) + std::fabs(rdX[i]), -8));
      as_once += got[i] == once[i], as_twice += got[i] == twice[i];
    }
    const std::string what = "linear_backward dX += (bf16) ldy=" + std::to_string(ldy);
    const double to_exact = rel_l2(got, rdX);
    std::printf("[%s] rel err %.3g (rounded once %.3g, twice %.3g); of %zu elements %zu equal dX0 + P rounded once, "
                "%zu dX0 + round(P) rounded\n",
                what.c_str(), to_exact, rel_l2(once, rdX), rel_l2(twice, rdX), got.size(), as_once, as_twice);
    EXPECT_EQ(bad, 0u) << what;
    EXPECT_LE(to_exact, 5e-3) << what;
    EXPECT_GE(to_exact, 5e-4) << what << ": no bf16 rounding?";
    EXPECT_LE(rel_l2(gdW.host(), rdW), 1e-4) << what;
  }
}

// gemm into a bf16 C (in_proj's xz, dt_proj's dt: the thin K = 48 product from a strided
// fp32 A), and linear_backward's dX in bf16 (out_proj's d_y): the CPU's product of the
// rounded operands, rounded; C NaN-poisoned, a strided C keeps its gaps.
TEST(CudaBf16, GemmWritesBf16C) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  std::mt19937 rng(170);
  struct Shape { int M, N, K, lda, ldc; };
  for (Shape s : {Shape{300, 192, 136, 136, 192}, Shape{300, 160, 48, 80, 160}, Shape{200, 96, 64, 64, 200}}) {
    auto A = round_bf16(randn(size_t(s.M) * s.lda, rng)), W = round_bf16(randn(size_t(s.N) * s.K, rng));
    DevBuf fA(*gpu, A), fW(*gpu, W);
    DevBf16 C(*gpu, size_t(s.M) * s.ldc);
    gpu->gemm(false, true, s.M, s.N, s.K, fA.p, s.lda, fW.p, s.K, 0.0f, C.op, s.ldc);
    std::vector<float> ref(size_t(s.M) * s.N);
    cpu->gemm(false, true, s.M, s.N, s.K, A.data(), s.lda, W.data(), s.K, 0.0f, ref.data(), s.N);
    const auto got = C.host();
    const std::string what = "gemm bf16 C N=" + std::to_string(s.N) + " K=" + std::to_string(s.K);
    expect_bf16_of(columns(got, s.M, s.ldc, 0, s.N), ref, what.c_str());
    if (s.ldc > s.N) {
      EXPECT_TRUE(all_nan(columns(got, s.M, s.ldc, s.N, s.ldc - s.N))) << what;
    }
  }
  const int T = 300, O = 160, I = 136;
  auto dY = round_bf16(randn(size_t(T) * O, rng)), W = round_bf16(randn(size_t(O) * I, rng)),
       X = round_bf16(randn(size_t(T) * I, rng)), dW0 = randn(size_t(O) * I, rng);
  DevBf16 hY(*gpu, dY), hX(*gpu, X), gdX(*gpu, size_t(T) * I);
  DevBuf dW(*gpu, W), gdW(*gpu, dW0);
  gpu->linear_backward(T, O, I, hY.op, O, dW.p, I, hX.op, I, 0.0f, gdX.op, I, gdW.p);
  std::vector<float> rdX(size_t(T) * I), rdW = dW0;
  cpu->gemm(false, false, T, I, O, dY.data(), O, W.data(), I, 0.0f, rdX.data(), I);
  cpu->gemm(true, false, O, I, T, dY.data(), O, X.data(), I, 1.0f, rdW.data(), I);
  expect_bf16_of(gdX.host(), rdX, "linear_backward bf16 dX");
  EXPECT_LE(rel_l2(gdW.host(), rdW), 1e-4);
}

// Dropout in place on bf16: the CPU's mask and product on the same (bf16) values, rounded
// again: bitwise equal.
TEST(CudaBf16, Dropout) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  std::mt19937 rng(70);
  const size_t n = 100003;
  auto x = round_bf16(randn(n, rng));
  DevBf16 d(*gpu, x);
  gpu->dropout(n, d.op, 0.3f, 77);
  cpu->dropout(n, x.data(), 0.3f, 77);
  EXPECT_EQ(d.host(), round_bf16(x));
}

// C = op(A) @ op(B) with A, B, or both already bf16: the same numbers as the fp32
// operands through the bf16 copies (C within 1e-5: only the sums' order may differ), on a bf16 backend; on an fp32
// backend a bf16 operand still multiplies in bf16 (against the CPU on the rounded
// values), also for a thin GEMM (N < 128) and a strided bf16 operand.
TEST(CudaBf16, GemmReadsBf16Operands) {
  auto cpu = make_cpu_backend();
  for (GemmMath math : {GemmMath::bf16, GemmMath::fp32}) {
    BHASA_REQUIRE_GPU(gpu, math);
    std::mt19937 rng(80);
    for (int N : {160, 48}) {
      const int M = 300, K = 136, lda = K + 8;
      auto A = round_bf16(randn(size_t(M) * lda, rng)), Bw = round_bf16(randn(size_t(N) * K, rng));
      DevBuf fA(*gpu, A), fB(*gpu, Bw), C0(*gpu, size_t(M) * N);
      DevBf16 hA(*gpu, A), hB(*gpu, Bw);
      std::vector<float> ref(size_t(M) * N);
      cpu->gemm(false, true, M, N, K, A.data(), lda, Bw.data(), K, 0.0f, ref.data(), N);
      gpu->gemm(false, true, M, N, K, fA.p, lda, fB.p, K, 0.0f, C0.p, N);
      const auto c0 = C0.host();
      const double band = math == GemmMath::fp32 ? kTol : 1e-4;  // bf16 inputs: products exact, fp32 sums
      EXPECT_LE(rel_l2(c0, ref), band) << gemm_math_name(math) << " N=" << N;
      int variant = 0;
      for (auto [a, b] : {std::pair<ConstOperand, ConstOperand>{hA.op, fB.p}, {fA.p, hB.op}, {hA.op, hB.op}}) {
        DevBuf C(*gpu, std::vector<float>(size_t(M) * N, std::numeric_limits<float>::quiet_NaN()));
        gpu->gemm(false, true, M, N, K, a, lda, b, K, 0.0f, C.p, N);
        EXPECT_LE(rel_l2(C.host(), ref), 1e-4) << gemm_math_name(math) << " N=" << N << " variant " << variant;
        if (math == GemmMath::bf16 && N >= 128) {
          EXPECT_LE(rel_l2(C.host(), c0), 1e-5) << "N=" << N << " variant " << variant;
        }
        ++variant;
      }
    }
  }
}

// A bf16 operand that starts one element (2 bytes) past a 4-byte boundary, as a slice
// of a bf16 activation can: cuBLASLt is told its true alignment.
TEST(CudaBf16, GemmOddOffsetOperand) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  std::mt19937 rng(85);
  const int M = 200, N = 144, K = 130;
  auto A = round_bf16(randn(size_t(M) * K + 1, rng)), Bw = round_bf16(randn(size_t(N) * K, rng));
  DevBf16 hA(*gpu, A);
  DevBuf fB(*gpu, Bw), C(*gpu, size_t(M) * N);
  gpu->gemm(false, true, M, N, K, hA.op + 1, K, fB.p, K, 0.0f, C.p, N);
  std::vector<float> ref(size_t(M) * N);
  cpu->gemm(false, true, M, N, K, A.data() + 1, K, Bw.data(), K, 0.0f, ref.data(), N);
  EXPECT_LE(rel_l2(C.host(), ref), 1e-4);
}

// linear_backward with bf16 dY and X (in_proj's backward): dX and dW as from fp32 copies.
TEST(CudaBf16, LinearBackwardBf16) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  std::mt19937 rng(90);
  const int T = 300, O = 160, I = 136;
  auto dY = round_bf16(randn(size_t(T) * O, rng)), W = randn(size_t(O) * I, rng),
       X = round_bf16(randn(size_t(T) * I, rng)), dW0 = randn(size_t(O) * I, rng);
  DevBf16 hY(*gpu, dY), hX(*gpu, X);
  DevBuf dW(*gpu, W), gdX(*gpu, size_t(T) * I), gdW(*gpu, dW0);
  gpu->linear_backward(T, O, I, hY.op, O, dW.p, I, hX.op, I, 0.0f, gdX.p, I, gdW.p);
  std::vector<float> rdX(size_t(T) * I), rdW = dW0;
  cpu->gemm(false, false, T, I, O, dY.data(), O, round_bf16(W).data(), I, 0.0f, rdX.data(), I);
  cpu->gemm(true, false, O, I, T, dY.data(), O, X.data(), I, 1.0f, rdW.data(), I);
  EXPECT_LE(rel_l2(gdX.host(), rdX), 1e-4);
  EXPECT_LE(rel_l2(gdW.host(), rdW), 1e-4);
}

// A training plan stores h, y, the final norm's output, in_proj's dY, d_xs and the norms'
// dout in bf16 on a bf16 backend: 2 bytes less per element than the same plan in tf32.
TEST(CudaBf16, PlanStoresOperandsInBf16) {
  ModelConfig cfg;
  cfg.d_model = 64, cfg.n_layer = 2, cfg.vocab_size = 96, cfg.d_state = 16, cfg.dt_rank = 4;
  const int B = 2, L = 32;
  size_t bytes[2];
  int k = 0;
  for (GemmMath math : {GemmMath::tf32, GemmMath::bf16}) {
    BHASA_REQUIRE_GPU(gpu, math);
    MambaLM m(cfg, *gpu);
    m.plan(B, L);
    bytes[k++] = m.activation_bytes();
  }
  const size_t T = size_t(B) * L, D = cfg.d_model, E = cfg.d_inner(), n = cfg.n_layer;
  // normed, normed_f, y, d_xz; xz, xs, dt; d_dt, d_y, d_xs; d_normed
  const size_t operands = n * T * D + T * D + n * T * E + T * 2 * E + n * T * 4 * E + 3 * T * E + T * D;
  EXPECT_EQ(bytes[0] - bytes[1], operands * 2 - T * D * 2);  // the bf16 plan adds d_resid16 (T, D)
}

// One training forward + backward with dropout on the bf16 backend against the CPU (the
// masks apply to the bf16 y): the bf16 fixture tolerances of test_cuda_model.cpp.
TEST(CudaBf16, DropoutTrainingPassTracksCpu) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  const std::string dir = fixture_dir("ssm-mlp-layernorm");
  ModelFiles files = load_model_dir(dir);
  const ReferenceBatch batch = reference_batch(read_tensors(dir + "/reference.safetensors").at("input_ids"));
  auto cpu = make_cpu_backend();
  std::vector<float> grads[2];
  double loss[2];
  Backend* backends[2] = {cpu.get(), gpu.get()};
  for (int k = 0; k < 2; ++k) {
    MambaLM m(files.cfg, *backends[k]);
    m.load_params(files.params.data());
    m.plan(batch.B, batch.L);
    m.set_dropout(0.3f, 4242);
    m.zero_grads();
    loss[k] = m.forward(batch.ids.data(), batch.targets.data(), true);
    m.backward();
    grads[k].resize(m.num_params());
    m.store_grads(grads[k].data());
  }
  const double grad_err = rel_l2(grads[1], grads[0]);
  std::printf("dropout pass: loss cpu %.6f gpu bf16 %.6f, grads rel err %.3g\n", loss[0], loss[1], grad_err);
  EXPECT_NEAR(loss[1], loss[0], 3e-2 * std::fabs(loss[0]));
  EXPECT_LE(grad_err, 1e-1);
}

}  // namespace

// The decode step's y in bf16 (Backend::decode_dtype, out_proj's cuBLASLt operand): the
// CPU's y rounded, every kernel of ssm_decode_step (B = 1, 13: ssm_step4_kernel; 50, 64:
// the tile kernel; N = 5: ssm_step_kernel), two steps each; h and the conv state stay fp32.
TEST(CudaDecodeStep, SsmDecodeStepBf16Y) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  auto cpu = make_cpu_backend();
  std::mt19937 rng(61);
  struct Shape { int E, N, R, K; };
  for (Shape s : {Shape{1536, 16, 48, 4}, Shape{384, 5, 12, 3}})
    for (int B : {1, 13, 50, 64}) {
      const int E = s.E, N = s.N, R = s.R, K = s.K, P = R + 2 * N;
      auto xz = randn(size_t(B) * 2 * E, rng), st = randn(size_t(B) * (K - 1) * E, rng),
           cw = randn(size_t(E) * K, rng, 0.5f), cb = randn(E, rng, 0.2f), dbc = randn(size_t(B) * P, rng),
           dtw = randn(size_t(E) * R, rng, 0.5f / std::sqrt(float(R))), dtb = randn(E, rng, 0.3f, -1.0f),
           Alog = randn(size_t(E) * N, rng, 0.3f), D = randn(E, rng), h = randn(size_t(B) * E * N, rng, 0.5f);
      DevBuf dxz(*gpu, xz), dst(*gpu, st), dcw(*gpu, cw), dcb(*gpu, cb), ddbc(*gpu, dbc), ddtw(*gpu, dtw),
          ddtb(*gpu, dtb), dA(*gpu, Alog), dD(*gpu, D), dh(*gpu, h);
      DevBf16 dy(*gpu, size_t(B) * E);  // NaN-poisoned
      for (int rep = 0; rep < 2; ++rep) {
        if (rep) dy.set(std::vector<float>(size_t(B) * E, std::numeric_limits<float>::quiet_NaN()));
        gpu->ssm_decode_step(B, E, N, R, K, dxz.p, dxz.p + E, 2 * E, dst.p, dcw.p, dcb.p, ddbc.p, ddtw.p,
                             ddtb.p, dA.p, dD.p, dh.p, dy.op);
        std::vector<float> y(size_t(B) * E);
        cpu->ssm_decode_step(B, E, N, R, K, xz.data(), xz.data() + E, 2 * E, st.data(), cw.data(), cb.data(),
                             dbc.data(), dtw.data(), dtb.data(), Alog.data(), D.data(), h.data(), y.data());
        const std::string what = "y E=" + std::to_string(E) + " B=" + std::to_string(B) + " rep=" + std::to_string(rep);
        expect_bf16_of(dy.host(), y, what.c_str());
        EXPECT_LE(rel_l2(dh.host(), h), kTol) << what;
        EXPECT_EQ(dst.host(), st) << what;
      }
    }
}

// decode_dtype: bf16 exactly where out_proj reads y through decode_mma or cuBLASLt and a frozen
// weight's bf16 copy (bf16 mode, 2 <= B <= 64: the fused mixer's batches from 2, the GEMV's
// above 8); fp32 at B = 1 (the GEMV) and in tf32 mode.
// Then gemm with that bf16 y: against the CPU on the fp32 values (bf16 band, NaN-poisoned C
// with beta 0; beta 1 adds the residual), frozen W (both bf16 on cuBLASLt) and not frozen.
TEST(CudaDecodeStep, GemmReadsBf16Y) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  for (int B : {1, 2, 8, 9, 16, 64, 65})
    EXPECT_EQ(gpu->decode_dtype(B), B > 1 && B <= 64 ? Dtype::bf16 : Dtype::f32) << "B=" << B;
  if (auto tf32 = gpu_or_null(GemmMath::tf32)) {
    EXPECT_EQ(tf32->decode_dtype(16), Dtype::f32);
  }
  auto cpu = make_cpu_backend();
  std::mt19937 rng(62);
  const int N = 768, K = 1536;
  auto W = randn(size_t(N) * K, rng, 0.03f);
  DevBuf dW(*gpu, W);
  for (bool frozen : {false, true}) {
    if (frozen) gpu->freeze_weights(dW.p, dW.n);
    for (int M : {9, 16, 64})
      for (float beta : {0.0f, 1.0f}) {
        const auto y = round_bf16(randn(size_t(M) * K, rng));  // the values y holds
        auto c = beta == 0.0f ? std::vector<float>(size_t(M) * N, std::numeric_limits<float>::quiet_NaN())
                              : randn(size_t(M) * N, rng);
        DevBf16 dy(*gpu, y);
        DevBuf dC(*gpu, c);
        if (beta == 0.0f) std::fill(c.begin(), c.end(), 0.0f);
        gpu->gemm(false, true, M, N, K, dy.op, K, dW.p, K, beta, dC.p, N);
        cpu->gemm(false, true, M, N, K, y.data(), K, W.data(), K, beta, c.data(), N);
        EXPECT_LE(rel_l2(dC.host(), c), 1e-2) << "M=" << M << " beta=" << beta << " frozen=" << frozen;
      }
  }
}

// head_loss's dX (d loss / d normed_f) into a bf16 buffer, as a bf16 training plan keeps
// d_normed: the fp32 call's dX rounded once (the same GEMM, bf16 out);
// the loss and dW as the fp32 call's, bit for bit.
TEST(CudaBf16, HeadLossDxInBf16) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  std::mt19937 rng(63);
  const int T = 300, V = 1000, D = 64;
  auto X = round_bf16(randn(size_t(T) * D, rng)), W = randn(size_t(V) * D, rng, 0.3f);
  std::vector<int32_t> targets(T);
  for (int t = 0; t < T; ++t) targets[t] = t % 7 == 3 ? -1 : int32_t(rng() % V);
  DevBf16 dXin(*gpu, X);
  DevBuf dW(*gpu, W), g32(*gpu, size_t(V) * D), g16(*gpu, size_t(V) * D),
      dx32(*gpu, std::vector<float>(size_t(T) * D, std::numeric_limits<float>::quiet_NaN()));
  DevIds tg(*gpu, targets);
  DevBf16 dx16(*gpu, size_t(T) * D);
  const double l32 = gpu->head_loss(T, V, D, dXin.op, dW.p, tg.p, 1.0f / T, dx32.p, g32.p);
  const double l16 = gpu->head_loss(T, V, D, dXin.op, dW.p, tg.p, 1.0f / T, dx16.op, g16.p);
  EXPECT_EQ(l32, l16);
  EXPECT_EQ(g32.host(), g16.host());
  const std::vector<float> got = dx16.host(), ref = dx32.host();
  for (float v : got) ASSERT_TRUE(std::isfinite(v));
  EXPECT_LE(rel_l2(got, round_bf16(ref)), 1e-4);
  EXPECT_LE(rel_l2(got, ref), 1e-2);
}
