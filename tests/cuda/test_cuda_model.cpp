// The whole model on the CUDA backend: the fixtures' reference logits, loss and
// gradients, and a short AdamW run whose loss curve tracks the CPU run.
//
// Tolerances (max |a - b| / max |b|, as tests/model/test_fixtures.cpp):
// - with full-fp32 GEMMs: the CPU fixture test's own, 1e-5 (logits, loss) and 1e-4 (grads);
// - with TF32 GEMMs (10-bit mantissa products): 1e-2 for logits and loss, 5e-2 for grads;
// - with bf16 GEMM operands (8-bit mantissas): 3e-2 for logits and loss, 1e-1 for grads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "cuda_test_util.h"
#include "fixture_util.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "model/mamba.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

// (case, GEMM math)
class CudaFixture : public ::testing::TestWithParam<std::tuple<const char*, GemmMath>> {};

TEST_P(CudaFixture, LogitsLossAndGradientsMatchReference) {
  const auto [name, math] = GetParam();
  BHASA_REQUIRE_GPU(gpu, math);
  const char* math_name = gemm_math_name(math);
  const double tol_logits = math == GemmMath::fp32 ? 1e-5 : math == GemmMath::tf32 ? 1e-2 : 3e-2;
  const double tol_grad = math == GemmMath::fp32 ? 1e-4 : math == GemmMath::tf32 ? 5e-2 : 1e-1;
  const std::string dir = fixture_dir(name);
  ModelFiles files = load_model_dir(dir);
  auto ref = read_tensors(dir + "/reference.safetensors");
  const ReferenceBatch batch = reference_batch(ref.at("input_ids"));
  const int B = batch.B, L = batch.L, V = files.cfg.vocab_size;
  const std::vector<int32_t>& ids = batch.ids;
  const std::vector<int32_t>& targets = batch.targets;
  MambaLM model(files.cfg, *gpu);
  model.load_params(files.params.data());
  model.plan(B, L);
  const double loss = model.forward(ids.data(), targets.data(), false);
  std::vector<float> logits(size_t(B) * L * V);
  gpu->download(logits.data(), model.logits(), logits.size());
  const double logit_err = rel_err(logits.data(), ref.at("logits").f32.data(), logits.size());
  const double ref_loss = ref.at("loss").f32[0];
  const double loss_err = std::fabs(loss - ref_loss) / std::fabs(ref_loss);
  std::printf("[%s %s] logits rel err %.3g, loss rel err %.3g\n", name, math_name,
              logit_err, loss_err);
  EXPECT_LE(logit_err, tol_logits);
  EXPECT_LE(loss_err, tol_logits);

  model.zero_grads();
  model.forward(ids.data(), targets.data(), true);
  model.backward();
  std::vector<float> grads(model.num_params());
  model.store_grads(grads.data());
  double worst = 0;
  std::string worst_name;
  for (const ParamTensor& t : model.layout().tensors) {
    auto it = ref.find("grad." + t.name);
    ASSERT_NE(it, ref.end()) << "reference has no grad." << t.name;
    const double e = rel_err(grads.data() + t.offset, it->second.f32.data(), t.numel);
    EXPECT_LE(e, tol_grad) << "grad." << t.name;
    if (e > worst) worst = e, worst_name = t.name;
  }
  std::printf("[%s %s] worst gradient rel err %.3g (%s)\n", name, math_name, worst,
              worst_name.c_str());
}

INSTANTIATE_TEST_SUITE_P(AllCases, CudaFixture,
                         ::testing::Combine(::testing::Values("hf-tiny", "hf-small", "ssm-mlp-layernorm"),
                                            ::testing::Values(GemmMath::fp32, GemmMath::tf32, GemmMath::bf16)),
                         [](const auto& info) {
                           std::string s = std::get<0>(info.param);
                           for (char& ch : s) if (ch == '-') ch = '_';
                           return s + "_" + gemm_math_name(std::get<1>(info.param));
                         });

// 30 AdamW steps on one fixed random batch (so the loss falls), CPU and GPU from
// the same initial weights. The GPU's loss must stay within 3% of the CPU's at every step.
// graphs: MambaLM::set_train_graphs; final_params (optional): the weights after the run;
// captured (optional): whether the step graphs were in use at the end; dropout: p, with a new
// seed each step (as the trainer does).
std::vector<double> train_curve(Backend& be, const ModelConfig& cfg, const std::vector<int32_t>& ids,
                                const std::vector<int32_t>& targets, int B, int L, int steps,
                                bool graphs = true, std::vector<float>* final_params = nullptr,
                                bool* captured = nullptr, float dropout = 0.0f) {
  MambaLM model(cfg, be);
  model.init_params(1234);
  model.plan(B, L);
  model.set_train_graphs(graphs);
  const size_t n = model.num_params();
  float* m = be.alloc(n);
  float* v = be.alloc(n);
  std::vector<double> losses;
  for (int step = 1; step <= steps; ++step) {
    if (dropout > 0) model.set_dropout(dropout, 1000 + step);
    model.zero_grads();
    losses.push_back(model.forward(ids.data(), targets.data(), true));
    model.backward();
    const double norm = std::sqrt(be.sum_squares(n, model.grads()));
    const float scale = norm > 1.0 ? float(1.0 / norm) : 1.0f;
    be.adamw(n, model.params(), model.grads(), m, v, 3e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, step, scale);
  }
  if (final_params) final_params->resize(n), model.store_params(final_params->data());
  if (captured) *captured = model.train_graphs_captured();
  be.free(m);
  be.free(v);
  return losses;
}

class CudaTraining : public ::testing::TestWithParam<GemmMath> {};

TEST_P(CudaTraining, LossCurveTracksCpu) {
  BHASA_REQUIRE_GPU(gpu, GetParam());
  auto cpu = make_cpu_backend();
  ModelConfig cfg;
  cfg.d_model = 64;
  cfg.n_layer = 2;
  cfg.vocab_size = 96;
  cfg.d_state = 16;
  cfg.dt_rank = 4;
  const int B = 4, L = 64, steps = 30;
  std::mt19937 rng(42);
  std::vector<int32_t> ids(size_t(B) * L), targets(size_t(B) * L);
  for (auto& i : ids) i = int32_t(rng() % cfg.vocab_size);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < L; ++t) targets[b * L + t] = t + 1 < L ? ids[b * L + t + 1] : -1;
  const auto c = train_curve(*cpu, cfg, ids, targets, B, L, steps);
  const auto g = train_curve(*gpu, cfg, ids, targets, B, L, steps);
  double worst = 0;
  for (int s = 0; s < steps; ++s) {
    const double rel = std::fabs(g[s] - c[s]) / c[s];
    worst = std::max(worst, rel);
    EXPECT_LE(rel, 0.03) << "step " << s + 1 << ": gpu " << g[s] << " cpu " << c[s];
  }
  std::printf("[training %s] loss cpu %.4f -> %.4f, gpu %.4f -> %.4f, worst step rel diff %.3g\n",
              gemm_math_name(GetParam()), c[0], c.back(), g[0], g.back(), worst);
  EXPECT_LT(c.back(), c[0] - 0.5) << "the fixed batch should be partly memorised";
}

// The training step's graphs (MambaLM::set_train_graphs) replay exactly the launch-by-launch
// step: 6 AdamW steps (the first eager, the second captured, then replays) give the same
// losses and weights bit for bit, with and without the gated MLP, with and without dropout
// (whose kernels read each step's new seeds from memory: a graph replaying the captured
// step's masks would differ from the eager run from the third step on).
TEST_P(CudaTraining, StepGraphsAreBitwiseEager) {
  BHASA_REQUIRE_GPU(gpu, GetParam());
  for (float p : {0.0f, 0.2f})
  for (int I : {0, 96}) {
    SCOPED_TRACE("dropout " + std::to_string(p) + " I " + std::to_string(I));
    ModelConfig cfg;
    cfg.d_model = 64, cfg.n_layer = 2, cfg.vocab_size = 96, cfg.d_state = 16, cfg.dt_rank = 4;
    cfg.d_intermediate = I;
    const int B = 2, L = 48, steps = 6;
    std::mt19937 rng(43);
    std::vector<int32_t> ids(size_t(B) * L), targets(size_t(B) * L);
    for (auto& i : ids) i = int32_t(rng() % cfg.vocab_size);
    for (int t = 0; t < B * L; ++t) targets[t] = (t + 1) % L ? ids[t + 1] : -1;
    std::vector<float> p_graph, p_eager;
    bool captured = false, eager_captured = true;
    const auto g = train_curve(*gpu, cfg, ids, targets, B, L, steps, true, &p_graph, &captured, p);
    const auto e = train_curve(*gpu, cfg, ids, targets, B, L, steps, false, &p_eager, &eager_captured, p);
    EXPECT_TRUE(captured);
    EXPECT_FALSE(eager_captured);
    EXPECT_EQ(g, e);
    EXPECT_EQ(p_graph, p_eager);
    EXPECT_LT(g.back(), g[0]);
    if (p > 0) {  // the masks change from step to step: the same step's loss under two seeds differs
      MambaLM m(cfg, *gpu);
      m.init_params(1234);
      m.plan(B, L);
      double loss[3];
      for (int s = 0; s < 3; ++s) {  // seeds 1, 2, then 1 again: graphs from the second on
        m.set_dropout(p, s == 1 ? 2 : 1);
        m.zero_grads();
        loss[s] = m.forward(ids.data(), targets.data(), true);
        m.backward();
      }
      EXPECT_TRUE(m.train_graphs_captured());
      EXPECT_NE(loss[0], loss[1]);
      EXPECT_EQ(loss[0], loss[2]);
      m.set_dropout(0.0f, 1);  // another p: the captured step (with its dropout kernels) is dropped
      EXPECT_FALSE(m.train_graphs_captured());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Math, CudaTraining, ::testing::Values(GemmMath::tf32, GemmMath::bf16),
                         [](const auto& info) { return std::string(gemm_math_name(info.param)); });

}  // namespace
