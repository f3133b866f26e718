// MambaLM::generate_tokens: the backend-agnostic loop (CPU) against step() plus the
// sampling rule on the host, and the CUDA graph path against the same loop on the GPU.
#include <gtest/gtest.h>

#include <vector>

#include "cuda_test_util.h"
#include "kernels/sampling.h"
#include "model/mamba.h"
#include "model/presets.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

// Prefills a random prompt of B sequences into s.
void prefill_random(MambaLM& m, DecodeState& s, int L, uint32_t seed) {
  const int B = s.batch, V = m.config().vocab_size;
  std::mt19937 rng(seed);
  std::vector<int32_t> prompt(size_t(B) * L);
  for (auto& t : prompt) t = int32_t(rng() % V);
  std::vector<float> last(size_t(B) * V);
  m.prefill(s, prompt.data(), L, last.data());
}

void check_generate(Backend& be, float temperature, double min_agree) {
  ModelConfig cfg = preset_config("tiny", 97);
  MambaLM m(cfg, be);
  m.init_params(5);
  const int B = 3, n_new = 24;
  const std::vector<int32_t> first = {1, 50, 96};
  DecodeState s = m.new_state(B);
  prefill_random(m, s, 7, 11);
  std::vector<int32_t> got(size_t(B) * n_new);
  m.generate_tokens(s, first.data(), n_new, got.data(), temperature, 42);
  m.reset_state(s);
  prefill_random(m, s, 7, 11);
  const auto want = reference_tokens(m, s, first, n_new, temperature, 42);
  int agree = 0;
  for (size_t i = 0; i < got.size(); i++) {
    ASSERT_GE(got[i], 0);
    ASSERT_LT(got[i], cfg.vocab_size);
    agree += got[i] == want[i];
  }
  EXPECT_GE(agree, min_agree * got.size()) << agree << " of " << got.size() << " tokens agree";
  // the same seed twice: the same tokens (graph replayed from a fresh counter)
  m.reset_state(s);
  prefill_random(m, s, 7, 11);
  std::vector<int32_t> again(got.size());
  m.generate_tokens(s, first.data(), n_new, again.data(), temperature, 42);
  EXPECT_EQ(again, got);
  m.free_state(s);
}

}  // namespace

TEST(GenerateTokens, CpuLoopMatchesStepGreedy) {
  auto cpu = make_cpu_backend();
  check_generate(*cpu, 0.0f, 1.0);
}

TEST(GenerateTokens, CpuLoopMatchesStepSampled) {
  auto cpu = make_cpu_backend();
  check_generate(*cpu, 0.8f, 1.0);
}

TEST(GenerateTokens, CudaGraphMatchesStepGreedy) {
  BHASA_REQUIRE_GPU(gpu);
  ASSERT_TRUE(gpu->supports_graphs());
  check_generate(*gpu, 0.0f, 1.0);
}

// Device and host logf may differ in the last bit, which can flip a near-tie and
// then the rest of that sequence: most tokens must still agree.
TEST(GenerateTokens, CudaGraphMatchesStepSampled) {
  BHASA_REQUIRE_GPU(gpu);
  check_generate(*gpu, 0.8f, 0.8);
}

// The graph holds BHASA_DECODE_GRAPH_STEPS token steps (default 8), replayed whole and then
// one step at a time for the rest: 23 replayed steps in runs of 1, 5, 8 or 64 (more than
// there are) give the same tokens, both sampling rules.
TEST(GenerateTokens, CudaGraphRunsOfStepsAgree) {
  BHASA_REQUIRE_GPU(gpu);
  ModelConfig cfg = preset_config("tiny", 97);
  MambaLM m(cfg, *gpu);
  m.init_params(5);
  const int B = 3, n_new = 24;
  const std::vector<int32_t> first = {1, 50, 96};
  DecodeState s = m.new_state(B);
  for (const float temperature : {0.0f, 0.8f}) {
    std::vector<int32_t> want;
    for (const char* steps : {"1", "5", "8", "64"}) {
      ScopedEnv run("BHASA_DECODE_GRAPH_STEPS", steps);
      m.reset_state(s);
      prefill_random(m, s, 7, 11);
      std::vector<int32_t> got(size_t(B) * n_new);
      m.generate_tokens(s, first.data(), n_new, got.data(), temperature, 42);
      if (want.empty()) want = got;
      EXPECT_EQ(got, want) << "runs of " << steps << " steps, temperature " << temperature;
    }
  }
  m.free_state(s);
}

// The decode kernels load their layer's conv and SSM states before waiting on the previous
// kernel: the writer, the same layer one token step earlier, must be done by then, which the
// step's embedding kernel ensures by letting its dependent launch only after its own wait
// (embedding_prenorm_kernel). With one layer and a small vocabulary a step is 5 small kernels
// that could all be on the SMs at once, each launched early by the one before: without that cut
// this test failed on the H200 (stale SSM states; session 15). A graph of 8 token steps (the
// default) against the step() loop, which waits after each step: the same greedy tokens and,
// since the same layer kernels ran on them, bit-equal final states, at B = 16 and 64 (the fused
// mixer's own path).
TEST(GenerateTokens, CudaGraphOneLayerMatchesStepLoop) {
  auto gpu = gpu_or_null(GemmMath::bf16);
  if (!gpu) GTEST_SKIP() << "no CUDA GPU on this machine";
  ModelConfig cfg = preset_config("tiny", 300);
  cfg.n_layer = 1;
  MambaLM m(cfg, *gpu);
  m.init_params(9);
  const int L = 5, n_new = 64, V = cfg.vocab_size;
  for (int B : {16, 64}) {
    std::mt19937 rng(B);
    std::vector<int32_t> prompt(size_t(B) * L), first(B);
    for (auto& t : prompt) t = int32_t(rng() % V);
    for (auto& t : first) t = int32_t(rng() % V);
    std::vector<float> last(size_t(B) * V);
    DecodeState s = m.new_state(B);
    std::vector<float> conv[2], ssm[2];
    std::vector<int32_t> tokens[2];
    for (int run = 0; run < 2; ++run) {
      m.reset_state(s);
      m.prefill(s, prompt.data(), L, last.data());
      if (run == 0) {
        tokens[0].resize(size_t(B) * n_new);
        m.generate_tokens(s, first.data(), n_new, tokens[0].data(), 0.0f, 1);
      } else {
        tokens[1] = reference_tokens(m, s, first, n_new, 0.0f, 1);
      }
      conv[run].resize(s.conv_size), ssm[run].resize(s.ssm_size);
      m.backend().download(conv[run].data(), s.conv, s.conv_size);
      m.backend().download(ssm[run].data(), s.ssm, s.ssm_size);
    }
    EXPECT_EQ(tokens[0], tokens[1]) << "B=" << B;
    EXPECT_EQ(conv[0], conv[1]) << "B=" << B << ": conv states";
    EXPECT_EQ(ssm[0], ssm[1]) << "B=" << B << ": SSM states";
    m.free_state(s);
  }
}
