// Model dropout: p = 0 is bitwise the model without dropout; evaluation never drops;
// the masks are a pure function of the seed; and with p > 0 the analytic gradient
// equals central finite differences of the training loss under the same fixed masks
// (and differs from the no-dropout gradient, so the check can tell them apart).
#include <gtest/gtest.h>

#include "fixture_util.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "io/model_dir.h"
#include "io/safetensors.h"
#include "model/mamba.h"

using namespace bhasa;

namespace {

struct Case {
  ModelFiles files;
  std::vector<int32_t> ids, targets;  // (B, L)
  int B = 0, L = 0;
  explicit Case(const std::string& name) {
    const std::string dir = test::fixture_dir(name);
    files = load_model_dir(dir);
    test::ReferenceBatch batch = test::reference_batch(read_tensors(dir + "/reference.safetensors").at("input_ids"));
    B = batch.B;
    L = batch.L;
    ids = std::move(batch.ids);
    targets = std::move(batch.targets);
  }
};

// One training forward + backward; returns the loss, grads into *grads.
double train_pass(MambaLM& m, const Case& c, std::vector<float>* grads) {
  m.zero_grads();
  const double loss = m.forward(c.ids.data(), c.targets.data(), true);
  m.backward();
  grads->resize(m.num_params());
  m.store_grads(grads->data());
  return loss;
}

TEST(ModelDropout, ZeroIsBitwiseNoDropoutAndEvaluationNeverDrops) {
  Case c("ssm-mlp-layernorm");
  auto be = make_cpu_backend();
  MambaLM plain(c.files.cfg, *be), zero(c.files.cfg, *be), drop(c.files.cfg, *be);
  for (MambaLM* m : {&plain, &zero, &drop}) {
    m->load_params(c.files.params.data());
    m->plan(c.B, c.L);
  }
  zero.set_dropout(0.0f, 99);
  drop.set_dropout(0.3f, 99);
  std::vector<float> g_plain, g_zero, g_drop;
  const double l_plain = train_pass(plain, c, &g_plain);
  const double l_zero = train_pass(zero, c, &g_zero);
  const double l_drop = train_pass(drop, c, &g_drop);
  EXPECT_EQ(l_plain, l_zero);
  EXPECT_EQ(g_plain, g_zero);
  EXPECT_NE(l_plain, l_drop);
  EXPECT_NE(g_plain, g_drop);
  // Evaluation forwards ignore the dropout setting.
  const double e_plain = plain.forward(c.ids.data(), c.targets.data(), false);
  const double e_drop = drop.forward(c.ids.data(), c.targets.data(), false);
  EXPECT_EQ(e_plain, e_drop);
}

TEST(ModelDropout, TheMaskIsAFunctionOfTheSeedOnly) {
  Case c("ssm-mlp-layernorm");
  auto be = make_cpu_backend();
  MambaLM m(c.files.cfg, *be);
  m.load_params(c.files.params.data());
  m.plan(c.B, c.L);
  std::vector<float> g1, g2, g3;
  m.set_dropout(0.2f, 7);
  const double l1 = train_pass(m, c, &g1);
  m.set_dropout(0.2f, 8);
  const double l3 = train_pass(m, c, &g3);
  m.forward(c.ids.data(), c.targets.data(), false);  // an evaluation in between changes nothing
  m.set_dropout(0.2f, 7);
  const double l2 = train_pass(m, c, &g2);
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(g1, g2);
  EXPECT_NE(l1, l3);
}

// Central differences of the float model's training loss (masks fixed by the seed) at
// the entries with the largest analytic gradient of several weight tensors.
void check_gradient(const std::string& name, float p) {
  Case c(name);
  auto be = make_cpu_backend();
  MambaLM m(c.files.cfg, *be);
  std::vector<float> w = c.files.params;
  m.load_params(w.data());
  m.plan(c.B, c.L);
  const uint64_t seed = 2024;
  std::vector<float> g_drop, g_plain;
  m.set_dropout(0.0f, seed);
  train_pass(m, c, &g_plain);
  m.set_dropout(p, seed);
  train_pass(m, c, &g_drop);
  auto loss_at = [&](size_t i, float value) {
    const float keep = w[i];
    w[i] = value;
    m.load_params(w.data());
    const double l = m.forward(c.ids.data(), c.targets.data(), true);
    w[i] = keep;
    return l;
  };
  int checked = 0, distinguishable = 0;
  double worst = 0;
  for (const ParamTensor& t : m.layout().tensors) {
    const bool wanted = t.name.find("out_proj") != std::string::npos || t.name.find("fc1") != std::string::npos ||
                        t.name.find("fc2") != std::string::npos || t.name.find("in_proj") != std::string::npos ||
                        t.name.find("x_proj") != std::string::npos || t.name.find("A_log") != std::string::npos;
    if (!wanted) continue;
    std::vector<size_t> idx(t.numel);
    std::iota(idx.begin(), idx.end(), t.offset);
    std::partial_sort(idx.begin(), idx.begin() + 3, idx.end(),
                      [&](size_t a, size_t b) { return std::fabs(g_drop[a]) > std::fabs(g_drop[b]); });
    for (int k = 0; k < 3; ++k) {
      const size_t i = idx[k];
      const float h = 1e-2f * std::max(1.0f, std::fabs(w[i]));
      const double fd = (loss_at(i, w[i] + h) - loss_at(i, w[i] - h)) / (double(w[i] + h) - double(w[i] - h));
      const double an = g_drop[i];
      const double err = std::fabs(fd - an) / std::max(std::fabs(an), 1e-3);
      worst = std::max(worst, err);
      EXPECT_LE(err, 2e-2) << t.name << "[" << i - t.offset << "]: analytic " << an << ", finite differences " << fd;
      // Without the masks in backward (or with other ones) the gradient would be this far off.
      distinguishable += std::fabs(double(g_plain[i]) - an) > 0.1 * std::fabs(an);
      ++checked;
    }
  }
  std::printf("[%s p=%.2f] %d entries, worst relative error %.3g, %d differ from the no-dropout gradient\n",
              name.c_str(), p, checked, worst, distinguishable);
  EXPECT_GE(checked, 6);
  EXPECT_GE(distinguishable, checked / 2);
}

TEST(ModelDropout, GradientMatchesFiniteDifferencesMlpLayerNorm) { check_gradient("ssm-mlp-layernorm", 0.3f); }
TEST(ModelDropout, GradientMatchesFiniteDifferencesHfTiny) { check_gradient("hf-tiny", 0.2f); }

TEST(ModelDropout, RejectsPOutsideZeroOne) {
  Case c("hf-tiny");
  auto be = make_cpu_backend();
  MambaLM m(c.files.cfg, *be);
  EXPECT_THROW(m.set_dropout(1.0f, 1), Error);
  EXPECT_THROW(m.set_dropout(-0.5f, 1), Error);
}

}  // namespace
