// Selective scan: float kernel vs a direct float64 recurrence that materializes h,
// chunking and state-carrying invariants, float64 finite differences for every
// gradient, determinism, and a printed timing of the typical training shape.
#include <gtest/gtest.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstring>

#include "kernel_test_util.h"
#include "kernels/kernels.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

struct ScanCase {
  int B, L, E, N, ld_bc, ldz;
  Vec u, dt, dt_bias, A_log, Bm, Cm, D, z, h0;  // Bm, Cm (B*L, ld_bc); z (B*L, ldz)
};

ScanCase make_case(int B, int L, int E, int N, int ld_bc, int ldz, uint32_t seed) {
  ScanCase c{B, L, E, N, ld_bc, ldz, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  const size_t T = static_cast<size_t>(B) * L;
  c.u = randn(T * E, seed + 1);
  c.dt = randn(T * E, seed + 2, 0.5, -1.0);
  c.dt_bias = randn(E, seed + 3, 0.3, -0.5);
  c.A_log = randn(static_cast<size_t>(E) * N, seed + 4, 0.3);
  for (int e = 0; e < E; ++e)
    for (int n = 0; n < N; ++n) c.A_log[static_cast<size_t>(e) * N + n] += std::log(1.0 + n);
  c.Bm = randn(T * ld_bc, seed + 5);
  c.Cm = randn(T * ld_bc, seed + 6);
  c.D = randn(E, seed + 7);
  c.z = randn(T * ldz, seed + 8);
  c.h0 = randn(static_cast<size_t>(B) * E * N, seed + 9, 0.5);
  return c;
}

double softplus(double x) { return x > 20 ? x : std::log1p(std::exp(x)); }

// The recurrence exactly as written in kernels.h, with h materialized as (B, L, E, N).
// Returns out (B, L, E); fills h_last (B, E, N) and states (B, L + 1, E, N).
Vec reference_forward(const ScanCase& c, bool use_h0, Vec* h_last = nullptr, Vec* states = nullptr) {
  const int B = c.B, L = c.L, E = c.E, N = c.N;
  Vec h(static_cast<size_t>(B) * (L + 1) * E * N, 0.0);
  Vec out(static_cast<size_t>(B) * L * E);
  auto H = [&](int b, int t, int e, int n) -> double& {  // t = 0 is the initial state
    return h[((static_cast<size_t>(b) * (L + 1) + t) * E + e) * N + n];
  };
  for (int b = 0; b < B; ++b)
    for (int e = 0; e < E; ++e)
      for (int n = 0; n < N; ++n) H(b, 0, e, n) = use_h0 ? c.h0[(static_cast<size_t>(b) * E + e) * N + n] : 0.0;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < L; ++t) {
      const size_t row = static_cast<size_t>(b) * L + t;
      for (int e = 0; e < E; ++e) {
        const double delta = softplus(c.dt[row * E + e] + c.dt_bias[e]);
        const double u = c.u[row * E + e];
        double y = c.D[e] * u;
        for (int n = 0; n < N; ++n) {
          const double A = -std::exp(c.A_log[static_cast<size_t>(e) * N + n]);
          H(b, t + 1, e, n) = std::exp(delta * A) * H(b, t, e, n) + delta * c.Bm[row * c.ld_bc + n] * u;
          y += c.Cm[row * c.ld_bc + n] * H(b, t + 1, e, n);
        }
        const double z = c.z[row * c.ldz + e];
        out[row * E + e] = y * z / (1 + std::exp(-z));
      }
    }
  if (h_last) {
    h_last->resize(static_cast<size_t>(B) * E * N);
    for (int b = 0; b < B; ++b)
      for (int e = 0; e < E; ++e)
        for (int n = 0; n < N; ++n) (*h_last)[(static_cast<size_t>(b) * E + e) * N + n] = H(b, L, e, n);
  }
  if (states) *states = h;
  return out;
}

template <class T>
struct Buffers {  // a ScanCase converted to T
  std::vector<T> u, dt, dt_bias, A_log, Bm, Cm, D, z, h0;
  explicit Buffers(const ScanCase& c)
      : u(c.u.begin(), c.u.end()), dt(c.dt.begin(), c.dt.end()),
        dt_bias(c.dt_bias.begin(), c.dt_bias.end()), A_log(c.A_log.begin(), c.A_log.end()),
        Bm(c.Bm.begin(), c.Bm.end()), Cm(c.Cm.begin(), c.Cm.end()), D(c.D.begin(), c.D.end()),
        z(c.z.begin(), c.z.end()), h0(c.h0.begin(), c.h0.end()) {}
};

int n_chunks(int L, int chunk) { return (L + chunk - 1) / chunk; }

template <class T>
std::vector<T> run_forward(const ScanCase& c, const Buffers<T>& in, int chunk, bool use_h0,
                           std::vector<T>* states = nullptr, std::vector<T>* h_last = nullptr) {
  std::vector<T> out(static_cast<size_t>(c.B) * c.L * c.E, T(-7));
  if (states) states->assign(static_cast<size_t>(c.B) * n_chunks(c.L, chunk) * c.E * c.N, T(0));
  if (h_last) h_last->assign(static_cast<size_t>(c.B) * c.E * c.N, T(0));
  cpu::scan_forward<T>(c.B, c.L, c.E, c.N, chunk, in.u.data(), in.dt.data(), in.dt_bias.data(),
                       in.A_log.data(), in.Bm.data(), in.Cm.data(), c.ld_bc, in.D.data(),
                       in.z.data(), c.ldz, out.data(), states ? states->data() : nullptr,
                       use_h0 ? in.h0.data() : nullptr, h_last ? h_last->data() : nullptr);
  return out;
}

template <class T>
struct Grads {
  std::vector<T> du, ddt, dBm, dCm, dz, dA_log, dD, ddt_bias;
};

// Runs the backward pass; "+=" outputs start at `acc`, "=" outputs' unused columns at 99.
template <class T>
Grads<T> run_backward(const ScanCase& c, const Buffers<T>& in, int chunk, bool use_h0,
                      const std::vector<T>& dout, T acc = T(0)) {
  std::vector<T> states;
  run_forward<T>(c, in, chunk, use_h0, &states);
  const size_t T_ = static_cast<size_t>(c.B) * c.L;
  Grads<T> g;
  g.du.assign(T_ * c.E, T(99));
  g.ddt.assign(T_ * c.E, T(99));
  g.dBm.assign(T_ * c.ld_bc, T(99));
  g.dCm.assign(T_ * c.ld_bc, T(99));
  g.dz.assign(T_ * c.ldz, T(99));
  g.dA_log.assign(static_cast<size_t>(c.E) * c.N, acc);
  g.dD.assign(c.E, acc);
  g.ddt_bias.assign(c.E, acc);
  cpu::scan_backward<T>(c.B, c.L, c.E, c.N, chunk, in.u.data(), in.dt.data(), in.dt_bias.data(),
                        in.A_log.data(), in.Bm.data(), in.Cm.data(), c.ld_bc, in.D.data(),
                        in.z.data(), c.ldz, states.data(), dout.data(), g.du.data(), g.ddt.data(),
                        g.dBm.data(), g.dCm.data(), g.dz.data(), g.dA_log.data(), g.dD.data(),
                        g.ddt_bias.data());
  return g;
}

}  // namespace

TEST(Scan, FloatForwardMatchesFloat64Recurrence) {
  // E = 75: two full 32-channel blocks and a ragged one; L not a multiple of chunk.
  const ScanCase c = make_case(2, 37, 75, 16, 16 + 5, 75 + 7, 100);
  const int chunk = 8;
  Buffers<float> in(c);
  std::vector<float> states, h_last;
  const auto out = run_forward<float>(c, in, chunk, true, &states, &h_last);
  Vec ref_h_last, ref_states;
  const Vec ref = reference_forward(c, true, &ref_h_last, &ref_states);
  EXPECT_LT(rel_err(out, ref), 1e-5);
  EXPECT_LT(rel_err(h_last, ref_h_last), 1e-5);
  // chunk_states[b, k] is the state before token k*chunk: reference time index k*chunk.
  const int nc = n_chunks(c.L, chunk);
  Vec ref_chunk(states.size());
  for (int b = 0; b < c.B; ++b)
    for (int k = 0; k < nc; ++k)
      for (size_t i = 0; i < static_cast<size_t>(c.E) * c.N; ++i)
        ref_chunk[(static_cast<size_t>(b) * nc + k) * c.E * c.N + i] =
            ref_states[(static_cast<size_t>(b) * (c.L + 1) + k * chunk) * c.E * c.N + i];
  EXPECT_LT(rel_err(states, ref_chunk), 1e-5);
}

TEST(Scan, Float64ForwardMatchesRecurrenceTightly) {
  const ScanCase c = make_case(2, 13, 19, 5, 8, 23, 200);
  Buffers<double> in(c);
  std::vector<double> h_last;
  const auto out = run_forward<double>(c, in, 4, true, nullptr, &h_last);
  Vec ref_h_last;
  EXPECT_LT(rel_err(out, reference_forward(c, true, &ref_h_last)), 1e-13);
  EXPECT_LT(rel_err(h_last, ref_h_last), 1e-13);
}

TEST(Scan, ChunkSizeDoesNotChangeTheOutput) {
  const ScanCase c = make_case(2, 29, 20, 8, 8, 20, 300);
  Buffers<float> in(c);
  const auto whole = run_forward<float>(c, in, c.L, true);
  std::vector<float> states;
  const auto chunked = run_forward<float>(c, in, 4, true, &states);
  EXPECT_EQ(0, std::memcmp(whole.data(), chunked.data(), whole.size() * sizeof(float)));
}

TEST(Scan, HalvesChainedThroughStateEqualTheFullScan) {
  const int B = 2, L = 20, E = 21, N = 8;
  const ScanCase c = make_case(B, L, E, N, N, E, 400);
  Buffers<float> in(c);
  const auto full = run_forward<float>(c, in, 6, true);
  // Split every tensor along time into [0, L/2) and [L/2, L).
  auto half = [&](const Vec& v, int width, int part) {
    Vec out;
    for (int b = 0; b < B; ++b)
      for (int t = part * L / 2; t < (part + 1) * L / 2; ++t)
        for (int i = 0; i < width; ++i) out.push_back(v[(static_cast<size_t>(b) * L + t) * width + i]);
    return out;
  };
  std::vector<float> state = in.h0;  // h0 and h_last are the same buffer: in place
  std::vector<float> chained;
  for (int part = 0; part < 2; ++part) {
    ScanCase p = c;
    p.L = L / 2;
    p.u = half(c.u, E, part);
    p.dt = half(c.dt, E, part);
    p.Bm = half(c.Bm, c.ld_bc, part);
    p.Cm = half(c.Cm, c.ld_bc, part);
    p.z = half(c.z, c.ldz, part);
    Buffers<float> pin(p);
    std::vector<float> out(static_cast<size_t>(B) * p.L * E);
    cpu::scan_forward<float>(B, p.L, E, N, 3, pin.u.data(), pin.dt.data(), pin.dt_bias.data(),
                             pin.A_log.data(), pin.Bm.data(), pin.Cm.data(), p.ld_bc, pin.D.data(),
                             pin.z.data(), p.ldz, out.data(), nullptr, state.data(), state.data());
    chained.insert(chained.end(), out.begin(), out.end());
  }
  // chained is [part0 (B, L/2, E), part1 (B, L/2, E)]; compare per (b, t).
  for (int part = 0; part < 2; ++part)
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < L / 2; ++t)
        for (int e = 0; e < E; ++e) {
          const float got = chained[((static_cast<size_t>(part) * B + b) * (L / 2) + t) * E + e];
          const float want = full[(static_cast<size_t>(b) * L + part * L / 2 + t) * E + e];
          ASSERT_EQ(got, want) << "part " << part << " b " << b << " t " << t << " e " << e;
        }
  Vec ref_h_last;
  reference_forward(c, true, &ref_h_last);
  EXPECT_LT(rel_err(state, ref_h_last), 1e-5);
}

TEST(Scan, BackwardMatchesFiniteDifferencesInFloat64) {
  // E = 37: a full 32-channel block plus a ragged one. ld_bc > N, ldz > E, chunk < L
  // and L not a multiple of it, h0 non-null, B > 1.
  ScanCase c = make_case(2, 7, 37, 3, 3 + 2, 37 + 3, 500);
  const int chunk = 3;
  const Vec G = randn(static_cast<size_t>(c.B) * c.L * c.E, 501);  // d loss / d out
  auto loss = [&]() {
    Buffers<double> in(c);
    const auto out = run_forward<double>(c, in, chunk, true);
    return dot(out.data(), G.data(), G.size());
  };
  const double acc = 0.25;  // "+=" outputs start here
  const Grads<double> g = run_backward<double>(c, Buffers<double>(c), chunk, true, G, acc);
  const size_t T_ = static_cast<size_t>(c.B) * c.L;

  EXPECT_LT(rel_err(g.du, numeric_grad(c.u, loss)), 1e-6) << "du";
  EXPECT_LT(rel_err(g.ddt, numeric_grad(c.dt, loss)), 1e-6) << "ddt";
  // Strided "=" outputs: the N (or E) used columns match, the others are untouched.
  const Vec nB = numeric_grad(c.Bm, loss), nC = numeric_grad(c.Cm, loss), nz = numeric_grad(c.z, loss);
  EXPECT_LT(rel_err(gather(g.dBm.data(), T_, c.N, c.ld_bc), gather(nB.data(), T_, c.N, c.ld_bc)), 1e-6) << "dBm";
  EXPECT_LT(rel_err(gather(g.dCm.data(), T_, c.N, c.ld_bc), gather(nC.data(), T_, c.N, c.ld_bc)), 1e-6) << "dCm";
  EXPECT_LT(rel_err(gather(g.dz.data(), T_, c.E, c.ldz), gather(nz.data(), T_, c.E, c.ldz)), 1e-6) << "dz";
  for (size_t r = 0; r < T_; ++r) {
    for (int n = c.N; n < c.ld_bc; ++n) {
      EXPECT_EQ(g.dBm[r * c.ld_bc + n], 99.0);
      EXPECT_EQ(g.dCm[r * c.ld_bc + n], 99.0);
    }
    for (int e = c.E; e < c.ldz; ++e) EXPECT_EQ(g.dz[r * c.ldz + e], 99.0);
  }
  auto minus_acc = [&](std::vector<double> v) {
    for (auto& x : v) x -= acc;
    return v;
  };
  EXPECT_LT(rel_err(minus_acc(g.dA_log), numeric_grad(c.A_log, loss)), 1e-6) << "dA_log";
  EXPECT_LT(rel_err(minus_acc(g.dD), numeric_grad(c.D, loss)), 1e-6) << "dD";
  EXPECT_LT(rel_err(minus_acc(g.ddt_bias), numeric_grad(c.dt_bias, loss)), 1e-6) << "ddt_bias";
}

TEST(Scan, FloatBackwardMatchesFloat64Backward) {
  const ScanCase c = make_case(2, 45, 40, 16, 20, 45, 600);
  const int chunk = 16;
  const Vec G = randn(static_cast<size_t>(c.B) * c.L * c.E, 601);
  const auto gd = run_backward<double>(c, Buffers<double>(c), chunk, true, G);
  const auto gf = run_backward<float>(c, Buffers<float>(c), chunk, true, to_float(G));
  EXPECT_LT(rel_err(gf.du, gd.du), 1e-4);
  EXPECT_LT(rel_err(gf.ddt, gd.ddt), 1e-4);
  EXPECT_LT(rel_err(gf.dBm, gd.dBm), 1e-4);
  EXPECT_LT(rel_err(gf.dCm, gd.dCm), 1e-4);
  EXPECT_LT(rel_err(gf.dz, gd.dz), 1e-4);
  EXPECT_LT(rel_err(gf.dA_log, gd.dA_log), 1e-4);
  EXPECT_LT(rel_err(gf.dD, gd.dD), 1e-4);
  EXPECT_LT(rel_err(gf.ddt_bias, gd.ddt_bias), 1e-4);
}

TEST(Scan, BackwardIsBitwiseDeterministic) {
  const ScanCase c = make_case(3, 50, 70, 16, 16, 70, 700);
  const Vec G = randn(static_cast<size_t>(c.B) * c.L * c.E, 701);
  const auto a = run_backward<float>(c, Buffers<float>(c), 16, true, to_float(G));
  const auto b = run_backward<float>(c, Buffers<float>(c), 16, true, to_float(G));
  auto same = [](const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same(a.du, b.du) && same(a.ddt, b.ddt) && same(a.dBm, b.dBm) && same(a.dCm, b.dCm) &&
              same(a.dz, b.dz) && same(a.dA_log, b.dA_log) && same(a.dD, b.dD) &&
              same(a.ddt_bias, b.ddt_bias));
}

TEST(Scan, BackendMatchesTemplate) {
  const ScanCase c = make_case(2, 11, 17, 4, 6, 19, 800);
  Buffers<float> in(c);
  std::vector<float> h_last;
  const auto want = run_forward<float>(c, in, 4, true, nullptr, &h_last);
  auto be = make_cpu_backend();
  std::vector<float> out(want.size()), got_h(h_last.size());
  std::vector<float> states(static_cast<size_t>(c.B) * n_chunks(c.L, 4) * c.E * c.N);
  be->scan_forward(c.B, c.L, c.E, c.N, 4, in.u.data(), in.dt.data(), in.dt_bias.data(),
                   in.A_log.data(), in.Bm.data(), in.Cm.data(), c.ld_bc, in.D.data(), in.z.data(),
                   c.ldz, out.data(), states.data(), in.h0.data(), got_h.data());
  EXPECT_EQ(out, want);
  EXPECT_EQ(got_h, h_last);
}

// Prints forward and backward time of the typical training shapes (no assertion).
TEST(Scan, TimingOfTypicalTrainingShapes) {
#ifndef NDEBUG
  GTEST_SKIP() << "timing is only meaningful in an optimized build";
#endif
  struct Shape { int B, L, E, N, chunk; };
  for (const Shape s : {Shape{4, 256, 1024, 32, 64}, Shape{4, 256, 1536, 16, 64}}) {
    const ScanCase c = make_case(s.B, s.L, s.E, s.N, s.N, s.E, 900);
    Buffers<float> in(c);
    const auto G = to_float(randn(static_cast<size_t>(s.B) * s.L * s.E, 901));
    std::vector<float> out(G.size()), states(static_cast<size_t>(s.B) * n_chunks(s.L, s.chunk) * s.E * s.N);
    std::vector<float> du(G.size()), ddt(G.size()), dz(G.size()), dBm(static_cast<size_t>(s.B) * s.L * s.N),
        dCm(dBm.size()), dA(static_cast<size_t>(s.E) * s.N), dD(s.E), ddb(s.E);
    auto fwd = [&] {
      cpu::scan_forward<float>(s.B, s.L, s.E, s.N, s.chunk, in.u.data(), in.dt.data(), in.dt_bias.data(),
                               in.A_log.data(), in.Bm.data(), in.Cm.data(), s.N, in.D.data(), in.z.data(),
                               s.E, out.data(), states.data(), nullptr, nullptr);
    };
    auto bwd = [&] {
      cpu::scan_backward<float>(s.B, s.L, s.E, s.N, s.chunk, in.u.data(), in.dt.data(), in.dt_bias.data(),
                                in.A_log.data(), in.Bm.data(), in.Cm.data(), s.N, in.D.data(), in.z.data(),
                                s.E, states.data(), G.data(), du.data(), ddt.data(), dBm.data(), dCm.data(),
                                dz.data(), dA.data(), dD.data(), ddb.data());
    };
    auto best_ms = [](auto&& f) {
      double best = 1e30;
      for (int rep = 0; rep < 5; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      return best;
    };
    fwd();
    const double f_ms = best_ms(fwd), b_ms = best_ms(bwd);
    std::printf("scan B=%d L=%d E=%d N=%d chunk=%d threads=%d: forward %.2f ms, backward %.2f ms\n", s.B,
                s.L, s.E, s.N, s.chunk, omp_get_max_threads(), f_ms, b_ms);
  }
}
