// The CUDA kernel lab (after llm.c's dev/cuda): every kernel next to its CPU
// reference on random data at the mamba-130m training shape (B x L = 16 x 2048,
// d_model 768, d_inner 1536, d_state 16, vocab 50280). For each: a check
// (||gpu - cpu|| / ||cpu||, on a slice where the full CPU run would be slow) and a
// timing (CUDA events around each run, median of many after warm-up), printed as a
// table with the achieved GB/s (bytes each input read once, each output written
// once) or TFLOP/s. Run by bench/cuda_lab/run.sh.
#include <cstdlib>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/kernels.h"
#include "lab_util.h"

using namespace bhasa;

namespace {

std::mt19937 rng(1);

// Fast random data with the given mean and standard deviation (uniform, from
// xorshift): the lab fills gigabytes, where std::normal_distribution takes seconds.
std::vector<float> randn(size_t n, float scale = 1.0f, float mean = 0.0f) {
  uint64_t s = rng() | (uint64_t(rng()) << 32) | 1;
  std::vector<float> v(n);
  const float k = scale * 1.7320508f / 8388608.0f;  // uniform on [-sqrt(3), sqrt(3)] * scale
  for (auto& x : v) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    x = mean + k * (float(int32_t(s >> 40) & 0xffffff) - 8388608.0f);
  }
  return v;
}

double rel_l2(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-60));
}

// The copy ceiling measured on the H200 (a 4 GiB device copy): the floor of a
// memory-bound kernel is its bytes over this.
constexpr double kCopyBytesPerMs = 4.29e9;

struct Lab {
  Backend& gpu;
  Backend& cpu;
  std::vector<float*> owned;
  struct Row {
    std::string name;
    double ms, gbs, tflops, err, tol, floor_ms;
  };
  std::vector<Row> rows;

  float* dev(const std::vector<float>& h) {
    float* p = gpu.alloc(h.size());
    gpu.upload(p, h.data(), h.size());
    owned.push_back(p);
    return p;
  }
  float* dev(size_t n) {
    float* p = gpu.alloc(n);
    owned.push_back(p);
    return p;
  }
  std::vector<float> host(const float* p, size_t n) {
    std::vector<float> v(n);
    gpu.download(v.data(), p, n);
    return v;
  }
  void release() {
    for (float* p : owned) gpu.free(p);
    owned.clear();
  }

  // Median of `iters` event-timed runs after `warmup` untimed ones, in ms.
  double time_ms(const std::function<void()>& f, int warmup = 3, int iters = 20) {
    return median_ms(gpu, f, warmup, iters);
  }
  void add(const std::string& name, double ms, double bytes, double flops, double err, double tol) {
    rows.push_back({name, ms, bytes / ms / 1e6, flops / ms / 1e9, err, tol, bytes / kCopyBytesPerMs});
    std::printf("  %-34s %9.3f ms  err %.2e %s\n", name.c_str(), ms, err, err <= tol ? "ok" : "FAIL");
    std::fflush(stdout);
  }
};

// Shapes of mamba-130m training at 16 x 2048.
constexpr int B = 16, L = 2048, T = B * L, Dm = 768, E = 1536, N = 16, R = 48, P = R + 2 * N,
              V = 50280, K = 4;

void gemm_rows(Lab& lab) {
  struct G { const char* name; bool ta, tb; int M, N, K; };
  const G gs[] = {{"gemm in_proj fwd (T,3072,768)", false, true, T, 2 * E, Dm},
                  {"gemm in_proj dW (3072,768,T)", true, false, 2 * E, Dm, T},
                  {"gemm out_proj fwd (T,768,1536)", false, true, T, Dm, E},
                  {"gemm lm_head fwd (8192,50280,768)", false, true, 8192, V, Dm},
                  // decode shapes: one token per sequence, batch 1 and 64 (weight-read bound)
                  {"gemm decode in_proj (1,3072,768)", false, true, 1, 2 * E, Dm},
                  {"gemm decode x_proj (1,80,1536)", false, true, 1, P, E},
                  {"gemm decode out_proj (1,768,1536)", false, true, 1, Dm, E},
                  {"gemm decode lm_head (1,50280,768)", false, true, 1, V, Dm},
                  {"gemm decode in_proj (64,3072,768)", false, true, 64, 2 * E, Dm},
                  {"gemm decode lm_head (64,50280,768)", false, true, 64, V, Dm}};
  for (const G& g : gs) {
    const int lda = g.ta ? g.M : g.K, ldb = g.tb ? g.K : g.N;
    auto A = randn(size_t(g.ta ? g.K : g.M) * lda), Bv = randn(size_t(g.tb ? g.N : g.K) * ldb);
    float* dA = lab.dev(A);
    float* dB = lab.dev(Bv);
    float* dC = lab.dev(size_t(g.M) * g.N);
    auto run = [&] { lab.gpu.gemm(g.ta, g.tb, g.M, g.N, g.K, dA, lda, dB, ldb, 0.0f, dC, g.N); };
    const double ms = lab.time_ms(run);
    // check the first 16 rows of C against the CPU
    const int rows = std::min(16, g.M);
    std::vector<float> ref(size_t(rows) * g.N);
    if (!g.ta) {
      lab.cpu.gemm(false, g.tb, rows, g.N, g.K, A.data(), lda, Bv.data(), ldb, 0.0f, ref.data(), g.N);
    } else {  // rows of op(A) = columns of A: op(A)[0:rows] = A[:, 0:rows]^T
      lab.cpu.gemm(true, g.tb, rows, g.N, g.K, A.data(), lda, Bv.data(), ldb, 0.0f, ref.data(), g.N);
    }
    auto got = lab.host(dC, size_t(rows) * g.N);
    const double flops = 2.0 * g.M * g.N * double(g.K);
    const double bytes = 4.0 * (double(g.M) * g.K + double(g.K) * g.N + double(g.M) * g.N);
    // tf32 products land near 2.5e-4 of the fp32 result, bf16 ones (operands rounded to 8
    // bits: the 1e-3 to 1e-2 band) near 2.3e-3
    const double tol = lab.gpu.operand_dtype() == Dtype::bf16 ? 5e-3 : 2e-3;
    lab.add(g.name, ms, bytes, flops, rel_l2(got.data(), ref.data(), ref.size()), tol);
    lab.release();
  }
}

// profile_only: one forward and one backward, no timing or check (for ncu).
// Checked and timed at the backend's chunk (Backend::scan_chunk); other chunks timed too.
void scan_rows(Lab& lab, bool profile_only = false) {
  const int chunk = lab.gpu.scan_chunk();
  const int n_chunks = (L + chunk - 1) / chunk;
  const size_t ble = size_t(B) * L * E;
  auto u = randn(ble), dt = randn(ble, 1.0f, -2.0f), bias = randn(E, 0.5f), A_log = randn(size_t(E) * N, 0.5f, 1.0f),
       bc = randn(size_t(T) * P), Dv = randn(E), xz = randn(size_t(T) * 2 * E), dout = randn(ble);
  float *du = lab.dev(u), *ddt = lab.dev(dt), *dbias = lab.dev(bias), *dA = lab.dev(A_log), *dbc = lab.dev(bc),
        *dD = lab.dev(Dv), *dxz = lab.dev(xz), *ddout = lab.dev(dout);
  float *out = lab.dev(ble), *states = lab.dev(size_t(B) * n_chunks * E * N);
  float *gu = lab.dev(ble), *gdt = lab.dev(ble), *gbc = lab.dev(size_t(T) * P), *gxz = lab.dev(size_t(T) * 2 * E),
        *gA = lab.dev(size_t(E) * N), *gD = lab.dev(E), *gb = lab.dev(E);
  auto fwd = [&] {
    lab.gpu.scan_forward(B, L, E, N, chunk, du, ddt, dbias, dA, dbc + R, dbc + R + N, P, dD, dxz + E, 2 * E, out,
                         states, nullptr, nullptr);
  };
  auto bwd = [&] {
    lab.gpu.scan_backward(B, L, E, N, chunk, du, ddt, dbias, dA, dbc + R, dbc + R + N, P, dD, dxz + E, 2 * E,
                          states, ddout, gu, gdt, gbc + R, gbc + R + N, gxz + E, gA, gD, gb);
  };
  if (profile_only) {
    fwd();
    bwd();
    lab.gpu.synchronize();
    lab.release();
    return;
  }
  const double t_f = lab.time_ms(fwd), t_b = lab.time_ms(bwd);
  const double t_fb = lab.time_ms([&] { fwd(); bwd(); });
  // the same again: the spread between two timings of one version
  const double t_f2 = lab.time_ms(fwd), t_b2 = lab.time_ms(bwd);
  std::printf("  scan repeat timing: fwd %.3f ms, bwd %.3f ms\n", t_f2, t_b2);
  {  // u, dt, z, dout in bf16 and ddt out in bf16 (a bf16 training plan's), dz fp32 as above
    std::vector<void*> held;
    auto bf16_of = [&](const std::vector<float>& v) {  // round to nearest even, 2 per word
      Operand o = lab.gpu.alloc_operand(v.size(), Dtype::bf16);
      held.push_back(o.p);
      std::vector<uint16_t> h(v.size() + 1, 0);
      for (size_t i = 0; i < v.size(); ++i) h[i] = bf16_bits(v[i]);
      lab.gpu.upload(static_cast<float*>(o.p), reinterpret_cast<const float*>(h.data()), (v.size() + 1) / 2);
      return o;
    };
    const Operand hu = bf16_of(u), hdt = bf16_of(dt), hxz = bf16_of(xz), hdo = bf16_of(dout),
                  hddt = lab.gpu.alloc_operand(ble, Dtype::bf16);
    held.push_back(hddt.p);
    auto f16 = [&] {
      lab.gpu.scan_forward(B, L, E, N, chunk, hu, hdt, dbias, dA, dbc + R, dbc + R + N, P, dD, hxz + E, 2 * E, out,
                           states, nullptr, nullptr);
    };
    auto b16 = [&] {
      lab.gpu.scan_backward(B, L, E, N, chunk, hu, hdt, dbias, dA, dbc + R, dbc + R + N, P, dD, hxz + E, 2 * E,
                            states, hdo, gu, hddt, gbc + R, gbc + R + N, gxz + E, gA, gD, gb);
    };
    const double tf16 = lab.time_ms(f16), tb16 = lab.time_ms(b16);
    std::printf("  scan bf16 u, dt, z, dout, ddt: fwd %.3f ms, bwd %.3f ms (fp32 inputs: %.3f, %.3f)\n", tf16, tb16,
                t_f2, t_b2);
    for (void* p : held) lab.gpu.free(p);
  }
  for (const int c8 : {8, 16, 64}) {  // chunk 8 = the backward's sub-chunk: no replay phase
    if (c8 == chunk || std::getenv("LAB_SCAN_ONE_CHUNK")) continue;  // set: only the backend's chunk
    float* st8 = lab.dev(size_t(B) * ((L + c8 - 1) / c8) * E * N);
    auto f8 = [&] {
      lab.gpu.scan_forward(B, L, E, N, c8, du, ddt, dbias, dA, dbc + R, dbc + R + N, P, dD, dxz + E, 2 * E, out,
                           st8, nullptr, nullptr);
    };
    auto b8 = [&] {
      lab.gpu.scan_backward(B, L, E, N, c8, du, ddt, dbias, dA, dbc + R, dbc + R + N, P, dD, dxz + E, 2 * E,
                            st8, ddout, gu, gdt, gbc + R, gbc + R + N, gxz + E, gA, gD, gb);
    };
    const double f8t = lab.time_ms(f8), b8t = lab.time_ms(b8);
    std::printf("  scan chunk %d: fwd %.3f ms, bwd %.3f ms, total %.3f ms\n", c8, f8t, b8t, f8t + b8t);
  }
  // check batch row 0 against the CPU (each batch row is independent except the parameter grads)
  const int L1 = L;
  std::vector<float> rout(size_t(L1) * E), rst(size_t(n_chunks) * E * N), rdu(size_t(L1) * E), rddt(size_t(L1) * E),
      rbc(size_t(L1) * P, 0.0f), rxz(size_t(L1) * 2 * E, 0.0f), rA(size_t(E) * N, 0.0f), rD(E, 0.0f), rb(E, 0.0f);
  lab.cpu.scan_forward(1, L1, E, N, chunk, u.data(), dt.data(), bias.data(), A_log.data(), bc.data() + R,
                       bc.data() + R + N, P, Dv.data(), xz.data() + E, 2 * E, rout.data(), rst.data(), nullptr, nullptr);
  lab.cpu.scan_backward(1, L1, E, N, chunk, u.data(), dt.data(), bias.data(), A_log.data(), bc.data() + R,
                        bc.data() + R + N, P, Dv.data(), xz.data() + E, 2 * E, rst.data(), dout.data(), rdu.data(),
                        rddt.data(), rbc.data() + R, rbc.data() + R + N, rxz.data() + E, rA.data(), rD.data(), rb.data());
  fwd();
  bwd();
  auto gout = lab.host(out, rout.size()), ggu = lab.host(gu, rdu.size()), ggdt = lab.host(gdt, rddt.size());
  auto ggbc = lab.host(gbc, rbc.size());
  for (int r = 0; r < L1; ++r)
    for (int j = 0; j < R; ++j) ggbc[size_t(r) * P + j] = 0.0f;  // columns the scan does not write
  const double e_f = rel_l2(gout.data(), rout.data(), rout.size());
  const double e_b = std::max({rel_l2(ggu.data(), rdu.data(), rdu.size()), rel_l2(ggdt.data(), rddt.data(), rddt.size()),
                               rel_l2(ggbc.data(), rbc.data(), rbc.size())});
  const double fwd_bytes = 4.0 * (4.0 * ble + 2.0 * T * N + double(B) * n_chunks * E * N);
  const double bwd_bytes = 4.0 * (7.0 * ble + 4.0 * T * N + double(B) * n_chunks * E * N);
  const std::string at = " chunk " + std::to_string(chunk);
  lab.add("scan fwd (16,1536,2048,16)" + at, t_f, fwd_bytes, 0, e_f, 1e-5);
  lab.add("scan bwd (16,1536,2048,16)" + at, t_b, bwd_bytes, 0, e_b, 1e-5);
  lab.add("scan fwd+bwd  [goal <= 3 ms]" + at, t_fb, fwd_bytes + bwd_bytes, 0, std::max(e_f, e_b), 1e-5);
  lab.release();
}

// conv1d + SiLU on x = first half of xz (row stride 2E); checks on batch row 0.
void conv_rows(Lab& lab) {
  auto xz = randn(size_t(T) * 2 * E), w = randn(size_t(E) * K, 0.5f), b = randn(E), dout = randn(size_t(T) * E);
  float *dx = lab.dev(xz), *dw = lab.dev(w), *db = lab.dev(b), *dd = lab.dev(dout), *out = lab.dev(size_t(T) * E),
        *gx = lab.dev(size_t(T) * 2 * E), *gw = lab.dev(size_t(E) * K), *gb = lab.dev(E);
  const double tf = lab.time_ms([&] { lab.gpu.conv1d_silu_forward(B, L, E, K, dx, 2 * E, dw, db, out); });
  const double tb = lab.time_ms([&] { lab.gpu.conv1d_silu_backward(B, L, E, K, dx, 2 * E, dw, db, dd, gx, gw, gb); });
  std::vector<float> ref(size_t(L) * E), rgx(size_t(L) * 2 * E, 0.0f), rgw(size_t(E) * K, 0.0f), rgb(E, 0.0f);
  lab.cpu.conv1d_silu_forward(1, L, E, K, xz.data(), 2 * E, w.data(), b.data(), ref.data());
  lab.cpu.conv1d_silu_backward(1, L, E, K, xz.data(), 2 * E, w.data(), b.data(), dout.data(), rgx.data(), rgw.data(), rgb.data());
  lab.gpu.zero(gw, size_t(E) * K);
  lab.gpu.zero(gb, E);
  lab.gpu.conv1d_silu_backward(1, L, E, K, dx, 2 * E, dw, db, dd, gx, gw, gb);
  auto got = lab.host(out, ref.size()), ggx = lab.host(gx, rgx.size()), ggw = lab.host(gw, rgw.size()),
       ggb = lab.host(gb, E);
  for (int r = 0; r < L; ++r)
    for (int j = E; j < 2 * E; ++j) ggx[size_t(r) * 2 * E + j] = 0.0f;
  const double eb = std::max({rel_l2(ggx.data(), rgx.data(), rgx.size()), rel_l2(ggw.data(), rgw.data(), rgw.size()),
                              rel_l2(ggb.data(), rgb.data(), E)});
  lab.add("conv1d+silu fwd (16,2048,1536,4)", tf, 4.0 * 2 * T * double(E), 0, rel_l2(got.data(), ref.data(), ref.size()), 1e-5);
  lab.add("conv1d+silu bwd (dx, dw, dbias)", tb, 4.0 * 3 * T * double(E), 0, eb, 1e-5);
  lab.release();
}

// norm (RMS) over the residual stream; checks on the first 256 rows.
void norm_rows(Lab& lab) {
  auto x = randn(size_t(T) * Dm), w = randn(Dm, 0.2f, 1.0f), dout = randn(size_t(T) * Dm);
  float *dx = lab.dev(x), *dw = lab.dev(w), *dd = lab.dev(dout), *out = lab.dev(size_t(T) * Dm), *rs = lab.dev(T),
        *gx = lab.dev(size_t(T) * Dm), *gw = lab.dev(Dm);
  const double tf = lab.time_ms([&] { lab.gpu.norm_forward(T, Dm, true, 1e-5f, dx, dw, nullptr, out, nullptr, rs); });
  const double tb = lab.time_ms([&] { lab.gpu.norm_backward(T, Dm, true, dd, dx, dw, nullptr, rs, gx, gw, nullptr); });
  const int rows = 256;
  std::vector<float> ref(size_t(rows) * Dm), rr(rows), rgx(size_t(rows) * Dm, 0.0f), rgw(Dm, 0.0f);
  lab.cpu.norm_forward(rows, Dm, true, 1e-5f, x.data(), w.data(), nullptr, ref.data(), nullptr, rr.data());
  lab.cpu.norm_backward(rows, Dm, true, dout.data(), x.data(), w.data(), nullptr, rr.data(), rgx.data(), rgw.data(), nullptr);
  auto got = lab.host(out, ref.size());
  lab.gpu.zero(gx, size_t(rows) * Dm);
  lab.gpu.zero(gw, Dm);
  lab.gpu.norm_backward(rows, Dm, true, dd, dx, dw, nullptr, rs, gx, gw, nullptr);
  auto ggx = lab.host(gx, rgx.size()), ggw = lab.host(gw, Dm);
  lab.add("rmsnorm fwd (32768,768)", tf, 4.0 * 2 * T * double(Dm), 0, rel_l2(got.data(), ref.data(), ref.size()), 1e-5);
  lab.add("rmsnorm bwd (dx +=, dw +=)", tb, 4.0 * 4 * T * double(Dm), 0,
          std::max(rel_l2(ggx.data(), rgx.data(), rgx.size()), rel_l2(ggw.data(), rgw.data(), Dm)), 1e-5);
  lab.release();
}

// swiglu at d_intermediate 2048 (the seed's gated MLP; not in mamba-130m)
void swiglu_rows(Lab& lab) {
  const int I = 2048;
  auto f = randn(size_t(T) * 2 * I), dout = randn(size_t(T) * I);
  float *df = lab.dev(f), *dd = lab.dev(dout), *out = lab.dev(size_t(T) * I), *gf = lab.dev(size_t(T) * 2 * I);
  const double tf = lab.time_ms([&] { lab.gpu.swiglu_forward(T, I, df, out); });
  const double tb = lab.time_ms([&] { lab.gpu.swiglu_backward(T, I, df, dd, gf); });
  const int rows = 256;
  std::vector<float> ref(size_t(rows) * I), rdf(size_t(rows) * 2 * I);
  lab.cpu.swiglu_forward(rows, I, f.data(), ref.data());
  lab.cpu.swiglu_backward(rows, I, f.data(), dout.data(), rdf.data());
  auto got = lab.host(out, ref.size()), ggf = lab.host(gf, rdf.size());
  lab.add("swiglu fwd (32768,2048)", tf, 4.0 * 3 * T * double(I), 0, rel_l2(got.data(), ref.data(), ref.size()), 1e-5);
  lab.add("swiglu bwd", tb, 4.0 * 5 * T * double(I), 0, rel_l2(ggf.data(), rdf.data(), rdf.size()), 1e-5);
  lab.release();
}

// embedding over T tokens: uniform ids, and Zipf ids (p(rank r) ~ 1/r: the most
// frequent id is ~9% of the tokens, like text); the backward checked in full.
void embedding_rows(Lab& lab) {
  std::vector<double> cdf(V);
  double acc = 0;
  for (int r = 0; r < V; ++r) cdf[r] = acc += 1.0 / (r + 1);
  for (int zipf = 0; zipf < 2; ++zipf) {
    std::vector<int32_t> ids(T);
    std::uniform_real_distribution<double> u(0.0, acc);
    for (auto& i : ids)
      i = zipf ? int32_t(std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin()) : int32_t(rng() % V);
    for (auto& i : ids) i = std::min(i, V - 1);
    auto table = randn(size_t(V) * Dm), dout = randn(size_t(T) * Dm);
    int32_t* dids = lab.gpu.alloc_i32(T);
    lab.gpu.upload_i32(dids, ids.data(), T);
    float *dt = lab.dev(table), *dd = lab.dev(dout), *out = lab.dev(size_t(T) * Dm), *gt = lab.dev(size_t(V) * Dm);
    const double tf = lab.time_ms([&] { lab.gpu.embedding_forward(T, Dm, dids, dt, out); });
    const double tb = lab.time_ms([&] { lab.gpu.embedding_backward(T, Dm, V, dids, dd, gt); });
    std::vector<float> rf(size_t(T) * Dm), rg(size_t(V) * Dm, 0.0f);
    lab.cpu.embedding_forward(T, Dm, ids.data(), table.data(), rf.data());
    lab.cpu.embedding_backward(T, Dm, V, ids.data(), dout.data(), rg.data());
    lab.gpu.zero(gt, size_t(V) * Dm);
    lab.gpu.embedding_backward(T, Dm, V, dids, dd, gt);
    auto gf = lab.host(out, rf.size()), gg = lab.host(gt, rg.size());
    // bytes: ids, gathered rows, out; backward: ids, dout, and read+write of the touched table rows
    std::vector<char> seen(V, 0);
    double uniq = 0;
    for (int32_t i : ids) uniq += !seen[i]++;
    lab.add(zipf ? "embedding fwd (32768,768) zipf ids" : "embedding fwd (32768,768)", tf, 4.0 * 2 * T * double(Dm), 0,
            rel_l2(gf.data(), rf.data(), rf.size()), 1e-5);
    lab.add(zipf ? "embedding bwd (sorted, det.) zipf ids" : "embedding bwd (sorted, det.)", tb,
            4.0 * (T * double(Dm) + 2 * uniq * Dm), 0, rel_l2(gg.data(), rg.data(), rg.size()), 1e-5);
    lab.gpu.free(dids);
    lab.release();
  }
}

// cross-entropy with in-place dlogits over all T = 32768 rows (6.6 GB of logits):
// 8192 random rows, tiled 4 times on the device. Checked on 64 rows.
void xent_rows(Lab& lab) {
  const int rows = 8192, reps = T / rows;
  auto logits = randn(size_t(rows) * V, 2.0f);
  std::vector<int32_t> tg(T);
  for (auto& t : tg) t = int32_t(rng() % V);
  int32_t* dtg = lab.gpu.alloc_i32(T);
  lab.gpu.upload_i32(dtg, tg.data(), T);
  float* dl = lab.dev(size_t(T) * V);
  lab.gpu.upload(dl, logits.data(), logits.size());
  for (int r = 1; r < reps; ++r) lab.gpu.copy(dl + size_t(r) * rows * V, dl, size_t(rows) * V);
  float* work = lab.dev(size_t(T) * V);
  const size_t n = size_t(T) * V;
  const double ms = lab.time_ms([&] {
    lab.gpu.copy(work, dl, n);
    lab.gpu.cross_entropy(T, V, work, V, dtg, 1.0f / T);
  }, 2, 10);
  const double copy_ms = lab.time_ms([&] { lab.gpu.copy(work, dl, n); }, 2, 10);
  const double loss_ms = lab.time_ms([&] { lab.gpu.cross_entropy(T, V, dl, V, dtg, 0.0f); }, 2, 10);
  const int crow = 64;
  std::vector<float> ref(logits.begin(), logits.begin() + size_t(crow) * V);
  const double rl = lab.cpu.cross_entropy(crow, V, ref.data(), V, tg.data(), 1.0f / T);
  lab.gpu.copy(work, dl, size_t(crow) * V);
  const double gl = lab.gpu.cross_entropy(crow, V, work, V, dtg, 1.0f / T);
  auto got = lab.host(work, ref.size());
  const double err = std::max(rel_l2(got.data(), ref.data(), ref.size()), std::fabs(gl - rl) / rl);
  lab.add("cross-entropy+grad (32768,50280)", ms - copy_ms, 4.0 * 2 * double(n), 0, err, 1e-5);
  lab.add("cross-entropy loss only (32768,50280)", loss_ms, 4.0 * double(n), 0, 0.0, 1e-5);
  lab.add("  (device copy of the logits)", copy_ms, 4.0 * 2 * double(n), 0, 0.0, 1e-5);
  lab.gpu.free(dtg);
  lab.release();
}

// optimizer over mamba-130m's 129M parameters
void adamw_rows(Lab& lab) {
  const size_t n = 129'135'360;
  auto g = randn(n);
  float *dp = lab.dev(randn(n)), *dg = lab.dev(g), *dm = lab.dev(n), *dv = lab.dev(n);
  int step = 0;
  const double ta = lab.time_ms([&] { lab.gpu.adamw(n, dp, dg, dm, dv, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, ++step, 1.0f); });
  double ss = 0;
  const double ts = lab.time_ms([&] { ss = lab.gpu.sum_squares(n, dg); });
  const double rs = lab.cpu.sum_squares(n, g.data());
  const double tx = lab.time_ms([&] { lab.gpu.axpy(n, 1e-9f, dg, dp); });
  lab.add("adamw (129M params)", ta, 4.0 * 7 * double(n), 0, 0.0, 1e-5);
  lab.add("sum_squares (129M)", ts, 4.0 * double(n), 0, std::fabs(ss - rs) / rs, 1e-6);
  lab.add("axpy (129M)", tx, 4.0 * 3 * double(n), 0, 0.0, 1e-5);
  lab.release();
}

}  // namespace

// argv[1]: a comma-separated list of sections (copy, scan, conv, norm, swiglu,
// embedding, xent, adamw, gemm); all when absent. `cuda_lab scanprof` runs one scan
// forward + backward for a profiler.
int main(int argc, char** argv) {
  const std::string only = argc > 1 ? std::string(",") + argv[1] + "," : "";
  auto want = [&](const char* s) { return only.empty() || only.find(std::string(",") + s + ",") != std::string::npos; };
  if (!cuda_gpu_available()) {
    std::printf("no CUDA GPU: nothing to measure\n");
    return 0;
  }
  auto gpu = make_cuda_backend();
  auto cpu = make_cpu_backend();
  Lab lab{*gpu, *cpu};
  std::printf("bhasa CUDA kernel lab on %s\n", gpu->name().c_str());
  if (only == ",scanprof,") {
    scan_rows(lab, true);
    return 0;
  }
  // The two ceilings: a large device copy, and (below) cuBLASLt's TF32 GEMM.
  if (want("copy")) {
    const size_t n = size_t(1) << 30;  // 4 GiB
    float* a = lab.dev(n);
    float* b = lab.dev(n);
    const double ms = lab.time_ms([&] { gpu->copy(b, a, n); }, 2, 10);
    lab.add("device copy 4 GiB (ceiling)", ms, 8.0 * n, 0, 0.0, 1.0);
    lab.release();
  }
  if (want("scan")) scan_rows(lab);
  if (want("conv")) conv_rows(lab);
  if (want("norm")) norm_rows(lab);
  if (want("swiglu")) swiglu_rows(lab);
  if (want("embedding")) embedding_rows(lab);
  if (want("xent")) xent_rows(lab);
  if (want("adamw")) adamw_rows(lab);
  if (want("gemm")) gemm_rows(lab);
  std::printf("\n| kernel | ms (median) | GB/s | TFLOP/s | bytes floor ms | %% of floor | rel err | check |\n"
              "|---|---|---|---|---|---|---|---|\n");
  int failures = 0;
  for (const auto& r : lab.rows) {
    const bool ok = r.err <= r.tol;
    failures += !ok;
    std::printf("| %s | %.3f | %.0f | %s | %.3f | %.0f%% | %.1e | %s |\n", r.name.c_str(), r.ms, r.gbs,
                r.tflops > 0.01 ? std::to_string(r.tflops).substr(0, 6).c_str() : "-", r.floor_ms,
                100.0 * r.floor_ms / r.ms, r.err, ok ? "ok" : "FAIL");
  }
  return failures ? 1 : 0;
}
