// The memory-bound parts of an m130 training step (issue 6), main's kernels against the
// new ones in one binary (the A/B switches are environment variables read at each call):
//   xent   the head's cross-entropy on a bf16 chunk (16384, 50280), gradient in place
//          (xent_bf16_kernel; the variants tried are gone: NOTES.md, session 6)
//   norm   RMSNorm backward at (32768, 768): dout bf16, x fp32, dx fp32 += , dx_copy bf16,
//          dw partials and their sum (BHASA_NORM_BWD_V = old: norm_backward_vec, else _vec2)
//   adamw  AdamW over n = 129M fp32 parameters and the bf16 mirror: main's adamw then
//          flat_to_bf16 (two passes) against adamw writing the mirror (one pass)
// Each variant runs once on the same inputs for the checks (bits against main's kernel, and
// a float64 CPU reference on sampled rows), then the variants are timed round-robin: CUDA
// events, median of `iters`, the inputs restored (untimed) before each run.
// Floors: bytes (each input read once, each output written once) / 4.29 TB/s.
// Built with nvcc (host code that includes kernels/cuda/cuda_common.cuh) against libbhasa.a.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_common.cuh"
#include "lab_util.h"  // CK, bf16_bits, from_bf16_bits, fnv

using namespace bhasa;
using namespace bhasa::cuda;

namespace {

constexpr double kCopyBytesPerMs = 4.29e9;

// deterministic uniform [-a, a) in parallel: element i from its own hash
inline float hrand(uint64_t i, uint64_t seed, float a) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return a * (float(uint32_t(z >> 40)) / 8388608.0f - 1.0f);
}
template <class T>
std::vector<T> download(const void* d, size_t n) {
  std::vector<T> h(n);
  CK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}
template <class T>
size_t mismatches(const std::vector<T>& a, const std::vector<T>& b) {
  size_t k = 0;
#pragma omp parallel for reduction(+ : k)
  for (size_t i = 0; i < a.size(); ++i) k += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
  return k;
}

struct Lab {
  cudaStream_t st;
  Scratch scratch;
  Ctx c;
  cudaEvent_t e0, e1;
  Lab() {
    CK(cudaStreamCreate(&st));
    double* hr;
    CK(cudaMallocHost(&hr, 4 * sizeof(double)));
    c.stream = st, c.scratch = &scratch, c.host_result = hr;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
  }
  // restore() untimed, then f() between two events; ms
  double once(const std::function<void()>& restore, const std::function<void()>& f) {
    restore();
    CK(cudaEventRecord(e0, st));
    f();
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    return ms;
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Round-robin timing of named variants; prints one table row each.
void time_variants(Lab& lab, const char* env, const std::vector<std::string>& vs, int iters, double floor_ms,
                   const std::function<void()>& restore, const std::function<void()>& run, const char* what) {
  std::vector<std::vector<double>> ts(vs.size());
  for (int it = 0; it < iters + 2; ++it)
    for (size_t k = 0; k < vs.size(); ++k) {
      setenv(env, vs[k].c_str(), 1);
      const double ms = lab.once(restore, run);
      if (it >= 2) ts[k].push_back(ms);
    }
  for (size_t k = 0; k < vs.size(); ++k) {
    const double m = median(ts[k]);
    std::sort(ts[k].begin(), ts[k].end());
    std::printf("| %s | %s=%s | %.4f | %.4f..%.4f | %.4f | %.0f%% |\n", what, env, vs[k].c_str(), m, ts[k].front(),
                ts[k].back(), floor_ms, 100 * floor_ms / m);
  }
}

// ---- cross-entropy on bf16 logits ------------------------------------------------------
void xent_lab(Lab& lab, int iters) {
  const int T = 16384, V = 50280, ldl = (V + 7) / 8 * 8;
  const size_t n = size_t(T) * ldl;
  std::vector<uint16_t> h(n);
#pragma omp parallel for
  for (size_t i = 0; i < n; ++i) {
    // logits ~ a sum of two uniforms (std ~2.9), a row-dependent offset, and a few peaks
    const size_t t = i / ldl, v = i % ldl;
    float x = hrand(i, 11, 5.0f) + hrand(i, 12, 5.0f) + float(t % 7) - 3.0f;
    if ((v * 2654435761u + t) % 9973 == 0) x += 12.0f;
    h[i] = bf16_bits(x);
  }
  std::vector<int32_t> tg(T);
  for (int t = 0; t < T; ++t) tg[t] = t % 97 == 5 ? -1 : int32_t((uint64_t(t) * 2654435761u) % V);
  tg[3] = V - 1, tg[4] = 0;
  void *src, *work;
  int32_t* dtg;
  double* row_loss;
  CK(cudaMalloc(&src, n * 2));
  CK(cudaMalloc(&work, n * 2));
  CK(cudaMalloc(&dtg, T * 4));
  CK(cudaMalloc(&row_loss, T * 8));
  CK(cudaMemcpy(src, h.data(), n * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dtg, tg.data(), T * 4, cudaMemcpyHostToDevice));
  const float scale = 1.0f / 32768;
  auto restore = [&] { CK(cudaMemcpyAsync(work, src, n * 2, cudaMemcpyDeviceToDevice, lab.st)); };
  auto run = [&] {
    int* flags = xent_flags(lab.c);
    xent_bf16_rows(lab.c, T, V, work, ldl, dtg, scale, row_loss, flags);
  };
  // one kernel now (main's): the row-by-copy-engine, whole-row-loads and 3-rows-an-SM versions
  // measured slower (NOTES.md, session 6); a new one gets a BHASA_XENT_V switch and a name here
  const std::vector<std::string> vs = {"old"};
  std::vector<uint16_t> ref_g;
  std::vector<double> ref_l;
  std::printf("\n## xent_bf16_rows (%d, %d), scale %g\n", T, V, scale);
  for (const auto& v : vs) {
    setenv("BHASA_XENT_V", v.c_str(), 1);
    CK(cudaMemset(row_loss, 0xff, T * 8));  // poison
    lab.once(restore, run);
    CK(cudaStreamSynchronize(lab.st));
    CK(cudaGetLastError());
    auto g = download<uint16_t>(work, n);
    auto l = download<double>(row_loss, T);
    // float64 reference on sampled rows
    double num = 0, den = 0, lmax = 0;
    for (int t = 0; t < T; t += 61) {
      const uint16_t* x = h.data() + size_t(t) * ldl;
      const uint16_t* gg = g.data() + size_t(t) * ldl;
      if (tg[t] < 0) {
        for (int j = 0; j < V; ++j) num += double(from_bf16_bits(gg[j])) * from_bf16_bits(gg[j]);
        lmax = std::max(lmax, std::fabs(l[t]));
        continue;
      }
      double m = -1e300, s = 0;
      for (int j = 0; j < V; ++j) m = std::max(m, double(from_bf16_bits(x[j])));
      for (int j = 0; j < V; ++j) s += std::exp(double(from_bf16_bits(x[j])) - m);
      const double loss = std::log(s) + m - double(from_bf16_bits(x[tg[t]]));
      lmax = std::max(lmax, std::fabs(l[t] - loss) / std::fabs(loss));
      for (int j = 0; j < V; ++j) {
        const double r = (std::exp(double(from_bf16_bits(x[j])) - m) / s - (j == tg[t])) * scale;
        const double d = double(from_bf16_bits(gg[j])) - r;
        if (!std::isfinite(from_bf16_bits(gg[j]))) num += 1e300;
        num += d * d, den += r * r;
      }
    }
    std::printf("%s: dlogits rel_l2 vs float64 (sampled rows) %.3e, loss max rel err %.3e, hash %016llx",
                v.c_str(), std::sqrt(num / den), lmax, (unsigned long long)fnv(g.data(), n * 2));
    if (ref_g.empty()) {
      ref_g = std::move(g), ref_l = std::move(l);
      std::printf("\n");
    } else {
      std::printf(", vs old: %zu of %zu dlogits differ, %zu of %d row losses\n", mismatches(g, ref_g), n,
                  mismatches(l, ref_l), T);
    }
  }
  std::printf("| op | variant | median ms | min..max | floor ms | of floor |\n|---|---|---|---|---|---|\n");
  time_variants(lab, "BHASA_XENT_V", vs, iters, 2.0 * n * 2 / kCopyBytesPerMs, restore, run, "xent 16384x50280");
  CK(cudaFree(src));
  CK(cudaFree(work));
  CK(cudaFree(dtg));
  CK(cudaFree(row_loss));
}

// ---- RMSNorm backward ------------------------------------------------------------------
void norm_lab(Lab& lab, int iters, bool rms) {
  const int T = 32768, D = 768;
  const size_t n = size_t(T) * D;
  std::vector<float> x(n), w(D), b(D), dx0(n), mean(T), rstd(T);
  std::vector<uint16_t> dout(n);
#pragma omp parallel for
  for (size_t i = 0; i < n; ++i) {
    x[i] = hrand(i, 21, 2.0f);
    dx0[i] = hrand(i, 22, 0.01f);
    dout[i] = bf16_bits(hrand(i, 23, 0.02f));
  }
  for (int d = 0; d < D; ++d) w[d] = 1.0f + hrand(d, 24, 0.3f), b[d] = hrand(d, 27, 0.1f);
  for (int t = 0; t < T; ++t) {
    double mu = 0, ss = 0;
    if (!rms) {
      for (int d = 0; d < D; ++d) mu += x[size_t(t) * D + d];
      mu /= D;
    }
    for (int d = 0; d < D; ++d) ss += (x[size_t(t) * D + d] - mu) * (x[size_t(t) * D + d] - mu);
    mean[t] = float(mu);
    rstd[t] = float(1.0 / std::sqrt(ss / D + 1e-5));
  }
  float *dx_, *dxs, *x_, *w_, *mean_, *rstd_, *dw, *db;
  void *dout_, *copy_;
  CK(cudaMalloc(&dx_, n * 4));
  CK(cudaMalloc(&dxs, n * 4));
  CK(cudaMalloc(&x_, n * 4));
  CK(cudaMalloc(&w_, D * 4));
  CK(cudaMalloc(&mean_, T * 4));
  CK(cudaMalloc(&rstd_, T * 4));
  CK(cudaMalloc(&dw, D * 4));
  CK(cudaMalloc(&db, D * 4));
  CK(cudaMalloc(&dout_, n * 2));
  CK(cudaMalloc(&copy_, n * 2));
  CK(cudaMemcpy(dxs, dx0.data(), n * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(x_, x.data(), n * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(w_, w.data(), D * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(mean_, mean.data(), T * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(rstd_, rstd.data(), T * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dout_, dout.data(), n * 2, cudaMemcpyHostToDevice));
  auto restore = [&] {
    CK(cudaMemcpyAsync(dx_, dxs, n * 4, cudaMemcpyDeviceToDevice, lab.st));
    CK(cudaMemsetAsync(dw, 0, D * 4, lab.st));
    CK(cudaMemsetAsync(db, 0, D * 4, lab.st));
  };
  auto run = [&] {
    norm_backward(lab.c, T, D, rms, ConstOperand(dout_, Dtype::bf16), x_, w_, rms ? nullptr : mean_, rstd_, dx_,
                  dw, rms ? nullptr : db, Operand(copy_, Dtype::bf16));
  };
  // float64 reference: dx on sampled rows, dw over all rows
  std::vector<double> rdw(D, 0.0), rdb(D, 0.0);
  for (int t = 0; t < T; ++t) {
    const double mu = rms ? 0.0 : mean[t], r = rstd[t];
    for (int d = 0; d < D; ++d) {
      const double g = from_bf16_bits(dout[size_t(t) * D + d]);
      rdw[d] += g * (x[size_t(t) * D + d] - mu) * r;
      rdb[d] += g;
    }
  }
  const std::vector<std::string> vs = {"old", "new"};
  std::vector<float> ref_dx, ref_dw;
  std::vector<uint16_t> ref_cp;
  std::printf("\n## norm_backward (%d, %d) %s, dout bf16, dx fp32 +=, dx_copy bf16\n", T, D, rms ? "rms" : "layer");
  for (const auto& v : vs) {
    setenv("BHASA_NORM_BWD_V", v.c_str(), 1);
    CK(cudaMemset(copy_, 0xff, n * 2));  // poison (NaN)
    lab.once(restore, run);
    CK(cudaStreamSynchronize(lab.st));
    CK(cudaGetLastError());
    auto gdx = download<float>(dx_, n);
    auto gcp = download<uint16_t>(copy_, n);
    auto gdw = download<float>(dw, D);
    double num = 0, den = 0, cnum = 0;
    for (int t = 0; t < T; t += 37) {
      const double mu = rms ? 0.0 : mean[t], r = rstd[t];
      double sg = 0, sgx = 0;
      for (int d = 0; d < D; ++d) {
        const double g = double(from_bf16_bits(dout[size_t(t) * D + d])) * w[d];
        sg += g, sgx += g * (x[size_t(t) * D + d] - mu) * r;
      }
      const double mg = rms ? 0.0 : sg / D, mgx = sgx / D;
      for (int d = 0; d < D; ++d) {
        const size_t i = size_t(t) * D + d;
        const double xh = (x[i] - mu) * r;
        const double ref = dx0[i] + r * (double(from_bf16_bits(dout[i])) * w[d] - mg - xh * mgx);
        const double e = std::isfinite(gdx[i]) ? gdx[i] - ref : 1e300;
        num += e * e, den += ref * ref;
        if (!(from_bf16_bits(gcp[i]) == from_bf16_bits(bf16_bits(gdx[i])))) cnum += 1;
      }
    }
    double wn = 0, wd = 0;
    for (int d = 0; d < D; ++d) {
      const double e = std::isfinite(gdw[d]) ? gdw[d] - rdw[d] : 1e300;
      wn += e * e, wd += rdw[d] * rdw[d];
    }
    std::printf("%s: dx rel_l2 vs float64 %.3e (sampled rows), dx_copy != bf16(dx) %g, dw rel_l2 %.3e", v.c_str(),
                std::sqrt(num / den), cnum, std::sqrt(wn / wd));
    if (ref_dx.empty()) {
      ref_dx = std::move(gdx), ref_cp = std::move(gcp), ref_dw = std::move(gdw);
      std::printf("\n");
    } else {
      std::printf(", vs old: dx %zu, dx_copy %zu, dw %zu differ\n", mismatches(gdx, ref_dx), mismatches(gcp, ref_cp),
                  mismatches(gdw, ref_dw));
    }
  }
  const double bytes = double(n) * (2 + 4 + 4 + 4 + 2);
  std::printf("| op | variant | median ms | min..max | floor ms | of floor |\n|---|---|---|---|---|---|\n");
  time_variants(lab, "BHASA_NORM_BWD_V", vs, iters, bytes / kCopyBytesPerMs, restore, run,
                rms ? "norm_backward rms 32768x768" : "norm_backward layer 32768x768");
  setenv("BHASA_NORM_BWD_V", "new", 1);
  for (void* p : {(void*)dx_, (void*)dxs, (void*)x_, (void*)w_, (void*)mean_, (void*)rstd_, (void*)dw, (void*)db,
                  dout_, copy_})
    CK(cudaFree(p));
}

// ---- AdamW and the bf16 mirror ---------------------------------------------------------
void adamw_lab(Lab& lab, int iters) {
  const size_t n = 129'000'003;  // ~m130's parameters; n % 4 = 3 exercises the tail kernel
  std::vector<float> h(n);
  float* buf[5];  // p, g, m, v, p0 (restore source for p, m, v: p0, m0, v0 below)
  for (auto& b : buf) CK(cudaMalloc(&b, n * 4));
  float *m0, *v0;
  CK(cudaMalloc(&m0, n * 4));
  CK(cudaMalloc(&v0, n * 4));
  void* p16;
  CK(cudaMalloc(&p16, n * 2));
  auto up = [&](float* d, uint64_t seed, float a, float off) {
#pragma omp parallel for
    for (size_t i = 0; i < n; ++i) h[i] = hrand(i, seed, a) + off;
    CK(cudaMemcpy(d, h.data(), n * 4, cudaMemcpyHostToDevice));
  };
  up(buf[4], 31, 0.05f, 0.0f);
  up(buf[1], 32, 0.01f, 0.0f);
  up(m0, 33, 0.001f, 0.0f);
  up(v0, 34, 1e-6f, 1.1e-6f);
  float *p = buf[0], *g = buf[1], *m = buf[2], *v = buf[3];
  auto restore = [&] {
    CK(cudaMemcpyAsync(p, buf[4], n * 4, cudaMemcpyDeviceToDevice, lab.st));
    CK(cudaMemcpyAsync(m, m0, n * 4, cudaMemcpyDeviceToDevice, lab.st));
    CK(cudaMemcpyAsync(v, v0, n * 4, cudaMemcpyDeviceToDevice, lab.st));
  };
  auto run = [&] {
    const char* e = std::getenv("BHASA_ADAMW_V");
    const bool old = e && std::string(e) == "old";
    adamw(lab.c, n, p, g, m, v, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 1.0f, old ? nullptr : p16);
    if (old) flat_to_bf16(lab.st, p, n, p16);
  };
  auto adamw_only = [&] { adamw(lab.c, n, p, g, m, v, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 1.0f, nullptr); };
  auto mirror_only = [&] { flat_to_bf16(lab.st, p, n, p16); };
  const std::vector<std::string> vs = {"old", "fused"};
  std::vector<float> rp, rm, rv;
  std::vector<uint16_t> r16;
  std::printf("\n## adamw n = %zu with the bf16 mirror\n", n);
  for (const auto& s : vs) {
    setenv("BHASA_ADAMW_V", s.c_str(), 1);
    CK(cudaMemset(p16, 0xff, n * 2));
    lab.once(restore, run);
    CK(cudaStreamSynchronize(lab.st));
    CK(cudaGetLastError());
    auto gp = download<float>(p, n), gm = download<float>(m, n), gv = download<float>(v, n);
    auto g16 = download<uint16_t>(p16, n);
    size_t bad16 = 0;
#pragma omp parallel for reduction(+ : bad16)
    for (size_t i = 0; i < n; ++i) bad16 += g16[i] != bf16_bits(gp[i]);
    std::printf("%s: mirror != bf16(p) at %zu", s.c_str(), bad16);
    if (rp.empty()) {
      rp = std::move(gp), rm = std::move(gm), rv = std::move(gv), r16 = std::move(g16);
      std::printf("\n");
    } else {
      std::printf(", vs old: p %zu, m %zu, v %zu, mirror %zu differ\n", mismatches(gp, rp), mismatches(gm, rm),
                  mismatches(gv, rv), mismatches(g16, r16));
    }
  }
  std::printf("| op | variant | median ms | min..max | floor ms | of floor |\n|---|---|---|---|---|---|\n");
  time_variants(lab, "BHASA_ADAMW_V", vs, iters, n * 30.0 / kCopyBytesPerMs, restore, run, "adamw+mirror 129M");
  time_variants(lab, "BHASA_ADAMW_V", {"old"}, iters, n * 28.0 / kCopyBytesPerMs, restore, adamw_only,
                "adamw alone (old)");
  time_variants(lab, "BHASA_ADAMW_V", {"old"}, iters, n * 6.0 / kCopyBytesPerMs, [] {}, mirror_only,
                "flat_to_bf16 alone");
  // a device copy for the rate
  const double cp = median([&] {
    std::vector<double> t;
    for (int i = 0; i < iters; ++i)
      t.push_back(lab.once([] {}, [&] { CK(cudaMemcpyAsync(m, v, n * 4, cudaMemcpyDeviceToDevice, lab.st)); }));
    return t;
  }());
  std::printf("device copy of %zu MB: %.4f ms = %.3f TB/s (read + write)\n", n * 4 >> 20, cp, 2.0 * n * 4 / cp / 1e9);
  for (auto& b : buf) CK(cudaFree(b));
  CK(cudaFree(m0));
  CK(cudaFree(v0));
  CK(cudaFree(p16));
}

}  // namespace

// argv[1]: comma-separated sections (xent,norm,layer,adamw; default all); argv[2]: iterations
int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "xent,norm,adamw";
  const int iters = argc > 2 ? std::atoi(argv[2]) : 30;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  Lab lab;
  auto has = [&](const char* s) { return ("," + which + ",").find("," + std::string(s) + ",") != std::string::npos; };
  try {
    if (has("xent")) xent_lab(lab, iters);
    if (has("norm")) norm_lab(lab, iters, true);
    if (has("layer")) norm_lab(lab, iters, false);
    if (has("adamw")) adamw_lab(lab, iters);
  } catch (const std::exception& e) {
    std::printf("FAILED: %s\n", e.what());
    return 1;
  }
  return 0;
}
