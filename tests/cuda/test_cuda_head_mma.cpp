// head_mma.cu (the tied head of a batch decode step: head_wgmma.cu on an sm_90 device, and
// head_mma's own mma.sync kernel with BHASA_HEAD_WGMMA=0) against a float64 product of the same
// bf16 operands, each row scaled by its rstd from the prepared sums of squares: many M, odd
// N (the last stage part empty), K 256 / 512 / 768, strided W and out (the gap untouched),
// out NaN-poisoned, ss null; two calls bitwise equal (the K-eighths summed in a fixed order).
// Its greedy pick against the argmax of what it wrote. Then a model decoding through it: logits
// within bf16 of the CPU's, off those of the cuBLASLt head (BHASA_HEAD_MMA=0), and graph tokens
// (the head's own pick) equal to the step loop's argmax; its pick against sample_tokens: the
// same tokens and states.
#include <gtest/gtest.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <cstdlib>
#include <limits>

#include "cuda_test_util.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/head_mma.h"
#include "model/mamba.h"
#include "model/presets.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {


struct Case {
  int M, N, K, ldw, ldc, tiles;  // tiles 0: ss null (no scaling)
};

// ||out - ref|| / ||ref|| over out's (M, N) block; infinity when a column in [N, ldc) changed
// or an output is not finite. *bits: the first call's output, for the repeat.
double check(Backend& gpu, const Case& c, std::mt19937& rng, std::vector<float>* bits) {
  const auto A = randn_bf16(size_t(c.M) * c.K, rng, 1.f), W = randn_bf16(size_t(c.N) * c.ldw, rng, 0.05f);
  std::uniform_real_distribution<float> pos(0.5f, 40.f);
  std::vector<float> ss(size_t(std::max(c.tiles, 1)) * c.M);
  for (auto& v : ss) v = pos(rng);
  const float eps = 1e-5f;
  std::vector<float> C(size_t(c.M) * c.ldc, -7.f);
  for (int m = 0; m < c.M; ++m)
    for (int n = 0; n < c.N; ++n) C[size_t(m) * c.ldc + n] = std::numeric_limits<float>::quiet_NaN();
  uint16_t *dA = to_device(A), *dW = to_device(W);
  float *dss = to_device(ss), *dC = to_device(C);
  auto stream = static_cast<cudaStream_t>(cuda_stream_of(gpu));
  int sms = 0;
  EXPECT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  EXPECT_TRUE(cuda::head_mma_serves(c.M, c.N, c.K, dA, dW, c.ldw, dC, c.ldc));
  auto run = [&] {
    cuda::head_mma(stream, true, sms, c.M, c.N, c.K, dA, c.tiles ? dss : nullptr, c.tiles, c.M, eps, dW, c.ldw, dC,
                   c.ldc);
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    return to_host(dC, C.size());
  };
  const auto got = run();
  *bits = run();
  cudaFree(dA), cudaFree(dW), cudaFree(dss), cudaFree(dC);
  std::vector<float> g, r;
  for (int m = 0; m < c.M; ++m) {
    double rstd = 1.0;
    if (c.tiles) {
      float sum = 0.f;  // the kernel's float sum, in tile order
      for (int q = 0; q < c.tiles; ++q) sum += ss[size_t(q) * c.M + m];
      rstd = 1.0 / std::sqrt(double(sum) / c.K + eps);
    }
    for (int n = 0; n < c.N; ++n) {
      const float o = got[size_t(m) * c.ldc + n];
      if (!std::isfinite(o)) return INFINITY;
      double acc = 0;
      for (int k = 0; k < c.K; ++k)
        acc += double(bf16_bits_to_float(A[size_t(m) * c.K + k])) * bf16_bits_to_float(W[size_t(n) * c.ldw + k]);
      g.push_back(o);
      r.push_back(float(acc * rstd));
    }
    for (int n = c.N; n < c.ldc; ++n)
      if (got[size_t(m) * c.ldc + n] != -7.f) return INFINITY;
  }
  if (*bits != got) return INFINITY;  // not repeatable
  return rel_l2(g, r);
}

}  // namespace

TEST(HeadMma, MatchesFloat64) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  std::mt19937 rng(31);
  std::vector<float> bits;
  // fp32 accumulation of exact bf16 products: ~1e-7 in practice
  for (const char* wgmma : {"1", "0"}) {  // head_wgmma where the device has it, then mma.sync
    const ScopedEnv env("BHASA_HEAD_WGMMA", wgmma);
    for (const Case& c : {Case{64, 50280, 768, 768, 50280, 12}, Case{16, 4099, 768, 776, 4100, 24},
                          Case{33, 1001, 512, 512, 1004, 3}, Case{1, 37, 256, 264, 40, 1}, Case{48, 333, 768, 768, 336, 0},
                          Case{20, 2048, 256, 256, 2048, 2}, Case{64, 95, 512, 520, 96, 5}, Case{49, 1001, 256, 256, 1004, 2},
                          Case{57, 4099, 768, 776, 4100, 0}})
      EXPECT_LE(check(*gpu, c, rng, &bits), 1e-5) << "M=" << c.M << " N=" << c.N << " K=" << c.K << " ldw=" << c.ldw
                                                  << " ldc=" << c.ldc << " tiles=" << c.tiles << " wgmma " << wgmma;
  }
}

// head_wgmma (head_mma's path on a compute capability 9.0 device) serves what it runs: it
// declines where only head_mma's mma.sync kernel could run, or neither.
TEST(HeadMma, WgmmaServesOnlyWhatItRuns) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  int dev = 0, major = 0, minor = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  alignas(16) static char buf[64];
  float* out = reinterpret_cast<float*>(buf);
  EXPECT_EQ(cuda::head_wgmma_serves(64, 50280, 768, buf, buf, 768, out, 50280), major == 9 && minor == 0);
  EXPECT_EQ(cuda::head_wgmma_serves(49, 100, 256, buf, buf, 256, out, 100), major == 9 && minor == 0);
  EXPECT_EQ(cuda::head_wgmma_serves(1, 100, 512, buf, buf, 512, out, 100), major == 9 && minor == 0);
  EXPECT_FALSE(cuda::head_wgmma_serves(65, 100, 768, buf, buf, 768, out, 100));     // rows
  EXPECT_FALSE(cuda::head_wgmma_serves(0, 100, 768, buf, buf, 768, out, 100));
  EXPECT_FALSE(cuda::head_wgmma_serves(64, 100, 1024, buf, buf, 1024, out, 100));  // A's registers
  EXPECT_FALSE(cuda::head_wgmma_serves(64, 100, 384, buf, buf, 384, out, 100));    // K
  EXPECT_FALSE(cuda::head_wgmma_serves(64, 100, 256, buf + 8, buf, 256, out, 100)); // alignment
  EXPECT_FALSE(cuda::head_wgmma_serves(64, 100, 256, buf, buf, 260, out, 100));    // ldw % 8
}

// The greedy pick (HeadPick): ids are each row's argmax of the logits it wrote, the first of
// equals (rows of W duplicated: exact ties across blocks and within one), token 0 for a row
// of A that is all zero (every logit 0: a tie of all); history row `counter`, the counter
// advanced, and not past capacity; a second call (done reset) picks again, with the tiles
// taken in turn (HeadPick::next_tile): the same logits bit for bit, the counter left at zero.
TEST(HeadMma, PicksGreedyIds) {
  BHASA_REQUIRE_GPU(gpu, GemmMath::bf16);
  std::mt19937 rng(32);
  auto stream = static_cast<cudaStream_t>(cuda_stream_of(*gpu));
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  const Case cases[] = {Case{64, 50280, 768, 768, 50280, 12}, Case{64, 50280, 768, 768, 50280, 12},
                        Case{57, 3001, 512, 520, 3004, 3}, Case{20, 5003, 512, 512, 5004, 2}, Case{16, 700, 256, 256, 700, 0}};
  for (size_t ci = 0; ci < std::size(cases); ++ci) {
    const Case& c = cases[ci];
    // the first M = 64 on head_mma's mma.sync kernel, the others on head_wgmma where the device has it
    const ScopedEnv env("BHASA_HEAD_WGMMA", ci == 0 ? "0" : "1");
    auto A = randn_bf16(size_t(c.M) * c.K, rng, 1.f), W = randn_bf16(size_t(c.N) * c.ldw, rng, 0.05f);
    for (int n = 0; n + 37 < c.N; n += 97)  // row n + 37 (later blocks or tiles) equals row n
      std::copy(W.begin() + size_t(n) * c.ldw, W.begin() + size_t(n + 1) * c.ldw, W.begin() + size_t(n + 37) * c.ldw);
    std::fill(A.begin() + size_t(3) * c.K, A.begin() + size_t(4) * c.K, uint16_t(0));  // row 3: all logits 0
    std::vector<float> ss(size_t(std::max(c.tiles, 1)) * c.M, 9.f);
    const int capacity = 2;
    uint16_t *dA = to_device(A), *dW = to_device(W);
    float *dss = to_device(ss), *dC = to_device(std::vector<float>(size_t(c.M) * c.ldc, NAN));
    int32_t *dcounter = to_device(std::vector<int32_t>{1}), *dids = to_device(std::vector<int32_t>(c.M, -1));
    int32_t* dhist = to_device(std::vector<int32_t>(size_t(capacity) * c.M, -1));
    cuda::HeadPick pick;
    pick.counter = dcounter, pick.ids = dids, pick.history = dhist, pick.capacity = capacity;
    pick.keys = to_device(std::vector<unsigned long long>(c.M, 0));
    pick.done = to_device(std::vector<unsigned>{0});
    unsigned* dnext = to_device(std::vector<unsigned>{0});
    std::vector<float> first_logits;
    for (int call = 0; call < 2; ++call) {
      pick.next_tile = call == 1 ? dnext : nullptr;  // the second call: tiles taken in turn
      cuda::head_mma(stream, true, sms, c.M, c.N, c.K, dA, c.tiles ? dss : nullptr, c.tiles, c.M, 1e-5f, dW, c.ldw,
                     dC, c.ldc, &pick);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      const auto logits = to_host(dC, size_t(c.M) * c.ldc);
      if (call == 0) first_logits = logits;
      else  // (bytes: the columns past N stay NaN in both)
        EXPECT_EQ(std::memcmp(logits.data(), first_logits.data(), logits.size() * sizeof(float)), 0)
            << "M=" << c.M << ": tiles taken in turn, other bits";
      const auto ids = to_host(dids, c.M), hist = to_host(dhist, size_t(capacity) * c.M), counter = to_host(dcounter, 1);
      EXPECT_EQ(counter[0], 2 + call);
      for (int m = 0; m < c.M; ++m) {
        int want = 0;
        for (int n = 1; n < c.N; ++n)
          if (logits[size_t(m) * c.ldc + n] > logits[size_t(m) * c.ldc + want]) want = n;
        EXPECT_EQ(ids[m], want) << "M=" << c.M << " N=" << c.N << " row " << m << " call " << call;
        EXPECT_EQ(hist[size_t(1) * c.M + m], want) << "row " << m;  // step 1; step 2 is past capacity
        EXPECT_EQ(hist[m], -1) << "row " << m;
      }
      EXPECT_EQ(ids[3], 0);
    }
    {  // without the logits (HeadPick::logits false): the same ids, and nothing stored
      const auto ids_before = to_host(dids, c.M);
      float* dNone = to_device(std::vector<float>(size_t(c.M) * c.ldc, NAN));
      pick.logits = false;
      cuda::head_mma(stream, true, sms, c.M, c.N, c.K, dA, c.tiles ? dss : nullptr, c.tiles, c.M, 1e-5f, dW, c.ldw,
                     dNone, c.ldc, &pick);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      EXPECT_EQ(to_host(dids, c.M), ids_before) << "M=" << c.M;
      size_t stored = 0;
      for (float v : to_host(dNone, size_t(c.M) * c.ldc)) stored += !std::isnan(v);
      EXPECT_EQ(stored, 0u) << "M=" << c.M;
      cudaFree(dNone);
    }
    EXPECT_EQ(to_host(pick.done, 1)[0], 0u);
    EXPECT_EQ(to_host(dnext, 1)[0], 0u);
    cudaFree(dnext);
    EXPECT_EQ(to_host(pick.keys, c.M), std::vector<unsigned long long>(c.M, 0));
    cudaFree(dA), cudaFree(dW), cudaFree(dss), cudaFree(dC), cudaFree(dcounter), cudaFree(dids), cudaFree(dhist);
    cudaFree(pick.keys), cudaFree(pick.done);
  }
}

TEST(HeadMma, ServesOnlyWhatItRuns) {
  alignas(16) static char buf[64];
  float* out = reinterpret_cast<float*>(buf);
  EXPECT_TRUE(cuda::head_mma_serves(64, 50280, 768, buf, buf, 768, out, 50280));
  EXPECT_FALSE(cuda::head_mma_serves(65, 100, 768, buf, buf, 768, out, 100));   // rows
  EXPECT_FALSE(cuda::head_mma_serves(64, 100, 1024, buf, buf, 1024, out, 100)); // A's registers
  EXPECT_TRUE(cuda::head_mma_serves(48, 100, 512, buf, buf, 512, out, 100));
  EXPECT_FALSE(cuda::head_mma_serves(16, 100, 192, buf, buf, 192, out, 100));   // K % 256
  EXPECT_FALSE(cuda::head_mma_serves(16, 100, 256, buf + 8, buf, 256, out, 100)); // alignment
  EXPECT_FALSE(cuda::head_mma_serves(16, 100, 256, buf, buf, 260, out, 100));   // ldw % 8
  EXPECT_FALSE(cuda::head_mma_serves(16, 100, 256, buf, buf, 256, out, 98));    // ldc < N
}

// A model whose decode steps end in head_mma (d_model 256, batch 16 and 64): logits within
// bf16 of the CPU's, within fp32-ish rounding of the cuBLASLt head's but not equal to them
// (the norm's rstd applied after the product instead of before the rounding to bf16), and
// the graph's greedy tokens equal to the step loop's argmax.
TEST(HeadMma, ModelDecode) {
  if (!cuda_gpu_available()) GTEST_SKIP() << "no CUDA GPU on this machine";
  auto make = [](const char* head) {
    const ScopedEnv env("BHASA_HEAD_MMA", head);  // read at the backend's construction
    return make_cuda_backend("bf16");
  };
  auto on = make("1"), off = make("0");
  auto nopick = [&] {
    const ScopedEnv env("BHASA_HEAD_PICK", "0");  // head_mma, then sample_tokens
    return make("1");
  }();
  auto cpu = make_cpu_backend();
  ModelConfig cfg = preset_config("tiny", 1000);
  cfg.d_model = 256;
  const int V = cfg.vocab_size;
  MambaLM mon(cfg, *on), moff(cfg, *off), mc(cfg, *cpu), mnp(cfg, *nopick);
  mon.init_params(9), moff.init_params(9), mc.init_params(9), mnp.init_params(9);
  for (int B : {16, 64}) {
    std::mt19937 rng(B);
    const int L = 4;
    std::vector<int32_t> prompt(size_t(B) * L), ids(B);
    for (auto& t : prompt) t = int32_t(rng() % V);
    for (auto& t : ids) t = int32_t(rng() % V);
    std::vector<float> lon(size_t(B) * V), loff(lon.size()), lc(lon.size());
    DecodeState son = mon.new_state(B), soff = moff.new_state(B), sc = mc.new_state(B);
    mon.prefill(son, prompt.data(), L, lon.data());
    moff.prefill(soff, prompt.data(), L, loff.data());
    mc.prefill(sc, prompt.data(), L, lc.data());
    for (int i = 0; i < 3; ++i) {
      mon.step(son, ids.data(), lon.data());
      moff.step(soff, ids.data(), loff.data());
      mc.step(sc, ids.data(), lc.data());
      EXPECT_LE(rel_l2(lon, lc), 1e-2) << "step " << i << " B=" << B;
      EXPECT_LE(rel_l2(lon, loff), 1e-2) << "step " << i << " B=" << B;
      EXPECT_NE(lon, loff) << "the head did not run on head_mma, step " << i << " B=" << B;
    }
    const int n_new = 10;
    std::vector<int32_t> got(size_t(B) * n_new);
    mon.reset_state(son);
    mon.prefill(son, prompt.data(), L, lon.data());
    mon.generate_tokens(son, ids.data(), n_new, got.data(), 0.0f, 1);
    mon.reset_state(son);  // the step loop's greedy tokens from the same start
    mon.prefill(son, prompt.data(), L, lon.data());
    EXPECT_EQ(got, reference_tokens(mon, son, ids, n_new, 0.0f, 1)) << "B=" << B;
    // the head's own pick against sample_tokens: the same tokens, and the states after them
    // bit for bit the same
    std::vector<int32_t> got_np(got.size());
    DecodeState snp = mnp.new_state(B);
    for (auto* p : {&mon, &mnp}) {
      DecodeState& st = p == &mon ? son : snp;
      p->reset_state(st);
      p->prefill(st, prompt.data(), L, lon.data());
      p->generate_tokens(st, ids.data(), n_new, (p == &mon ? got : got_np).data(), 0.0f, 1);
    }
    EXPECT_EQ(got, got_np) << "B=" << B;
    std::vector<float> h1(son.ssm_size), h2(snp.ssm_size), c1(son.conv_size), c2(snp.conv_size);
    on->download(h1.data(), son.ssm, h1.size()), nopick->download(h2.data(), snp.ssm, h2.size());
    on->download(c1.data(), son.conv, c1.size()), nopick->download(c2.data(), snp.conv, c2.size());
    EXPECT_EQ(h1, h2) << "B=" << B;
    EXPECT_EQ(c1, c2) << "B=" << B;
    mnp.free_state(snp);
    mon.free_state(son), moff.free_state(soff), mc.free_state(sc);
  }
}
