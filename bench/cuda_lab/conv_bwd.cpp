// conv1d+SiLU on the bf16 path of an m130 training step (B 16, L 2048, E 1536, K 4): x the
// first half of a bf16 xz (row stride 2E), dout bf16 (T, E), dx bf16 into the first half of
// a bf16 (T, 2E), w / bias / dw / dbias fp32. Times the backward (and the forward) with CUDA
// events, median of 50 after warm-up, on random data; checks sequence 0 against the CPU
// (dx to the bf16 band, dw / dbias at 1e-5 on sequence 0 alone) and prints hashes of all of
// dx, of dw and dbias, and of out so runs under different variants can be compared bit for
// bit (dw / dbias sum in a different order in the old and pipelined kernels).
// argv: BWD[/FWD] pairs of BHASA_CONV_BWD_V / BHASA_CONV_FWD_V values to time, in order:
// old is main's kernels, anything else the pipelined ones (FWD default: new; default list:
// old/old new/new old/old new/new).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/kernels.h"
#include "lab_util.h"

using namespace bhasa;

namespace {

constexpr int B = 16, L = 2048, E = 1536, K = 4;
constexpr size_t T = size_t(B) * L;
constexpr double kCopyBytesPerMs = 4.29e9;


}  // namespace

int main(int argc, char** argv) {
  if (!cuda_gpu_available()) {
    std::printf("no CUDA GPU\n");
    return 0;
  }
  static const char* const kDefault[] = {"old/old", "new/new", "old/old", "new/new"};
  std::vector<const char*> variants(argv + 1, argv + argc);
  if (argc < 2) variants.assign(std::begin(kDefault), std::end(kDefault));
  auto gpu = make_cuda_backend("bf16");
  auto cpu = make_cpu_backend();
  std::vector<uint16_t> hxz(T * 2 * E), hg(T * E);
  for (auto& h : hxz) h = bf16_bits(urand());
  for (auto& h : hg) h = bf16_bits(urand());
  std::vector<float> w(size_t(E) * K), bias(E);
  for (auto& f : w) f = 0.5f * urand();
  for (auto& f : bias) f = urand();
  auto up16 = [&](const std::vector<uint16_t>& h) {
    Operand o = gpu->alloc_operand(h.size(), Dtype::bf16);
    gpu->upload(static_cast<float*>(o.p), reinterpret_cast<const float*>(h.data()), h.size() / 2);
    return o;
  };
  const Operand xz = up16(hxz), g = up16(hg), dxz = gpu->alloc_operand(T * 2 * E, Dtype::bf16),
                xs = gpu->alloc_operand(T * E, Dtype::bf16);
  float *dw_ = gpu->alloc(w.size()), *db_ = gpu->alloc(E), *gw = gpu->alloc(w.size()), *gb = gpu->alloc(E);
  gpu->upload(dw_, w.data(), w.size());
  gpu->upload(db_, bias.data(), E);

  auto time_ms = [&](const std::function<void()>& f) { return median_ms(*gpu, f, 5, 50); };
  int failures = 0;
  for (const char* v : variants) {
    const std::string vs = v, bv = vs.substr(0, vs.find('/')),
                      fv = vs.find('/') == std::string::npos ? "new" : vs.substr(vs.find('/') + 1);
    setenv("BHASA_CONV_BWD_V", bv.c_str(), 1);
    setenv("BHASA_CONV_FWD_V", fv.c_str(), 1);
    const double tb = time_ms([&] { gpu->conv1d_silu_backward(B, L, E, K, xz, 2 * E, dw_, db_, g, dxz, gw, gb); });
    const double tf = time_ms([&] { gpu->conv1d_silu_forward(B, L, E, K, xz, 2 * E, dw_, db_, xs); });

    // One clean backward for the hash, then sequence 0 alone for the CPU check.
    gpu->zero(gw, w.size());
    gpu->zero(gb, E);
    gpu->conv1d_silu_backward(B, L, E, K, xz, 2 * E, dw_, db_, g, dxz, gw, gb);
    std::vector<uint16_t> hdx(T * 2 * E);
    std::vector<float> rw(w.size()), rb(E);
    gpu->download(reinterpret_cast<float*>(hdx.data()), static_cast<const float*>(dxz.p), hdx.size() / 2);
    gpu->download(rw.data(), gw, w.size());
    gpu->download(rb.data(), gb, E);
    const uint64_t h = fnv(hdx.data(), hdx.size() * 2);
    const uint64_t hw = fnv(rb.data(), rb.size() * 4, fnv(rw.data(), rw.size() * 4));

    gpu->zero(gw, w.size());
    gpu->zero(gb, E);
    gpu->conv1d_silu_backward(1, L, E, K, xz, 2 * E, dw_, db_, g, dxz, gw, gb);
    gpu->download(reinterpret_cast<float*>(hdx.data()), static_cast<const float*>(dxz.p), size_t(L) * E);
    gpu->download(rw.data(), gw, w.size());
    gpu->download(rb.data(), gb, E);
    std::vector<float> x0(size_t(L) * 2 * E), g0(size_t(L) * E), cdx(size_t(L) * 2 * E, 0.0f), cw(w.size(), 0.0f),
        cb(E, 0.0f);
    for (size_t i = 0; i < x0.size(); ++i) x0[i] = from_bf16_bits(hxz[i]);
    for (size_t i = 0; i < g0.size(); ++i) g0[i] = from_bf16_bits(hg[i]);
    cpu->conv1d_silu_backward(1, L, E, K, x0.data(), 2 * E, w.data(), bias.data(), g0.data(), cdx.data(), cw.data(),
                              cb.data());
    std::vector<float> gdx, rdx;  // dx columns, CPU rounded to bf16
    size_t differ = 0;
    for (int t = 0; t < L; ++t)
      for (int e = 0; e < E; ++e) {
        const float a = from_bf16_bits(hdx[size_t(t) * 2 * E + e]), r = cdx[size_t(t) * 2 * E + e];
        gdx.push_back(a);
        rdx.push_back(r);
        differ += a != from_bf16_bits(bf16_bits(r));
      }
    // The forward's out (xs): hash of all, sequence 0 against the CPU.
    std::vector<uint16_t> hxs(T * E);
    gpu->download(reinterpret_cast<float*>(hxs.data()), static_cast<const float*>(xs.p), hxs.size() / 2);
    const uint64_t hf = fnv(hxs.data(), hxs.size() * 2);
    std::vector<float> cxs(size_t(L) * E), gxs(size_t(L) * E);
    cpu->conv1d_silu_forward(1, L, E, K, x0.data(), 2 * E, w.data(), bias.data(), cxs.data());
    for (size_t i = 0; i < gxs.size(); ++i) gxs[i] = from_bf16_bits(hxs[i]);
    const double exs = rel_l2(gxs, cxs);
    const double edx = rel_l2(gdx, rdx), edw = rel_l2(rw, cw), edb = rel_l2(rb, cb);
    const bool ok = edx < 4e-3 && edw <= 1e-5 && edb <= 1e-5 && exs < 4e-3;
    const double bwd_floor = 3.0 * T * E * 2 / kCopyBytesPerMs;  // x, dout read, dx written: 3 x 100.7 MB
    const double fwd_floor = 2.0 * T * E * 2 / kCopyBytesPerMs;  // x read, out written
    std::printf("| %-18s | bwd %.4f ms (floor %.4f, %3.0f%%) | fwd %.4f ms (floor %.4f) | dx err %.2e (%zu of %zu "
                "differ from rounded CPU) dw %.1e dbias %.1e out err %.2e %s | hash dx %016llx dw,dbias %016llx out %016llx |\n",
                v, tb, bwd_floor, 100 * bwd_floor / tb, tf, fwd_floor, edx, differ, gdx.size(), edw,
                edb, exs, ok ? "ok" : "FAIL", (unsigned long long)h, (unsigned long long)hw, (unsigned long long)hf);
    failures += !ok;
  }
  return failures ? 1 : 0;
}
