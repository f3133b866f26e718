// The learning-rate schedule, AdamW's per-tensor weight decay and the global-norm
// clipping, and the checkpoint directory mechanics and loss-curve SVG.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/kernels.h"
#include "model/mamba.h"
#include "train/checkpoint.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train_test_util.h"

using namespace bhasa;
using namespace bhasa::test;
namespace fs = std::filesystem;

namespace {

TEST(Schedule, LinearWarmupThenCosineToMinLr) {
  LrSchedule s{1e-3f, 1e-4f, 10, 110};
  EXPECT_FLOAT_EQ(s.at(0), 1e-4f);    // (0 + 1) / 10 of the peak
  EXPECT_FLOAT_EQ(s.at(4), 5e-4f);
  EXPECT_FLOAT_EQ(s.at(9), 1e-3f);    // warmup reaches the peak
  EXPECT_FLOAT_EQ(s.at(10), 1e-3f);   // cosine starts at the peak
  EXPECT_FLOAT_EQ(s.at(60), 5.5e-4f);  // halfway: the midpoint of lr and min_lr
  EXPECT_NEAR(s.at(35), 1e-4 + 0.5 * (1 + std::cos(M_PI * 0.25)) * 9e-4, 1e-9);
  EXPECT_FLOAT_EQ(s.at(110), 1e-4f);  // the end
  EXPECT_FLOAT_EQ(s.at(500), 1e-4f);  // and after it
  for (int i = 11; i < 110; ++i) EXPECT_LT(s.at(i), s.at(i - 1)) << i;  // strictly decreasing
  LrSchedule no_warmup{1e-3f, 0.0f, 0, 100};
  EXPECT_FLOAT_EQ(no_warmup.at(0), 1e-3f);
  EXPECT_FLOAT_EQ(no_warmup.at(100), 0.0f);
}

ModelConfig small_config() {
  ModelConfig c;
  c.d_model = 16;
  c.n_layer = 2;
  c.vocab_size = 16;
  c.d_state = 4;
  c.dt_rank = 2;
  c.d_intermediate = 8;
  c.rms_norm = false;  // LayerNorm: norm biases too
  return c;
}

TEST(AdamW, NoDecayTensorsAreNotDecayed) {
  auto be = make_backend("cpu");
  MambaLM model(small_config(), *be);
  const size_t n = model.num_params();
  std::vector<float> ones(n, 1.0f);
  model.load_params(ones.data());
  model.zero_grads();  // zero gradient: the update is the decay alone
  AdamWOptions o;
  o.weight_decay = 0.5f;
  AdamW opt(model, o);
  EXPECT_EQ(opt.step(0.1f, 1), 0.0);
  std::vector<float> p(n);
  model.store_params(p.data());
  int decayed = 0, kept = 0;
  for (const ParamTensor& t : model.layout().tensors) {
    const bool should_decay = !(t.name.find("A_log") != std::string::npos || t.name.ends_with(".D") ||
                                t.name.find("bias") != std::string::npos || t.name.find("norm") != std::string::npos);
    EXPECT_EQ(t.decay, should_decay) << t.name;
    for (size_t i = 0; i < t.numel; ++i) {
      const float want = t.decay ? 1.0f - 0.1f * 0.5f : 1.0f;
      ASSERT_NEAR(p[t.offset + i], want, 1e-6) << t.name << "[" << i << "]";
    }
    (t.decay ? decayed : kept) += 1;
  }
  EXPECT_GT(decayed, 0);
  EXPECT_GE(kept, 2 * 6 + 2);  // per layer: A_log, D, dt bias, conv bias, norm w+b (and norm2), + final norm
}

TEST(AdamW, GlobalNormIsReportedBeforeClippingAndScaled) {
  auto be = make_backend("cpu");
  MambaLM model(small_config(), *be);
  const size_t n = model.num_params();
  std::vector<float> zeros(n, 0.0f), g(n, 3.0f), p0(n), p1(n);
  model.load_params(zeros.data());
  be->upload(model.grads(), g.data(), n);
  AdamWOptions o;
  o.weight_decay = 0;
  o.grad_clip = 1.0f;
  AdamW opt(model, o);
  EXPECT_NEAR(opt.step(1e-2f, 1, 0.5f), 1.5 * std::sqrt(static_cast<double>(n)), 1e-3);
  model.store_params(p1.data());
  // First Adam step: m_hat / sqrt(v_hat) = sign(g), whatever the clipping scale.
  for (size_t i = 0; i < n; ++i) ASSERT_NEAR(p1[i], -1e-2f, 1e-5) << i;
  std::vector<float> m, v;
  opt.store_state(m, v);
  // Clipped to norm 1: every element of the used gradient is 1 / sqrt(n).
  const double gi = 1.0 / std::sqrt(static_cast<double>(n));
  EXPECT_NEAR(m[0], 0.1 * gi, 1e-7);
  EXPECT_NEAR(v[0], 0.05 * gi * gi, 1e-9);
}

TEST(CheckpointDirs, SwapRecoverAndPrune) {
  const std::string d = make_scratch_dir("ckdirs");
  fs::create_directories(d + "/latest");
  write_file(d + "/latest/x", "old");
  fs::create_directories(d + "/.tmp-latest-1");
  write_file(d + "/.tmp-latest-1/x", "new");
  fsync_tree(d + "/.tmp-latest-1");
  swap_dir_into_place(d + "/.tmp-latest-1", d + "/latest");
  EXPECT_EQ(slurp(d + "/latest/x"), "new");
  EXPECT_FALSE(fs::exists(d + "/.tmp-latest-1"));

  // A crash mid-write leaves a temp dir; a crash in the two-rename fallback leaves latest.old.
  fs::create_directories(d + "/.tmp-latest-2");
  fs::rename(d + "/latest", d + "/latest.old");
  recover_checkpoint_dirs(d);
  EXPECT_FALSE(fs::exists(d + "/.tmp-latest-2"));
  EXPECT_EQ(slurp(d + "/latest/x"), "new");

  for (int e : {1, 2, 3, 9, 10}) fs::create_directories(d + "/epoch-" + std::to_string(e));
  prune_epoch_dirs(d, 2);
  EXPECT_FALSE(fs::exists(d + "/epoch-3"));
  EXPECT_TRUE(fs::exists(d + "/epoch-9"));
  EXPECT_TRUE(fs::exists(d + "/epoch-10"));  // numeric, not lexical, order
  EXPECT_TRUE(fs::exists(d + "/latest"));
  fs::remove_all(d);
}

TEST(Metrics, ResumeDropsLaterRecordsAndSvgHasBothCurves) {
  const std::string d = make_scratch_dir("metrics");
  {
    MetricsLog log(d + "/m.jsonl", 0);
    for (int s = 1; s <= 5; ++s) {
      nlohmann::ordered_json j;
      j["step"] = s;
      j["loss"] = 5.0 - s;
      if (s % 2 == 0) j["val_loss"] = 5.5 - s;
      log.write(j);
    }
  }
  { MetricsLog resumed(d + "/m.jsonl", 3); }
  LossCurves c = read_loss_curves(d + "/m.jsonl");
  ASSERT_EQ(c.train.size(), 3u);
  EXPECT_EQ(c.train[2].loss, 2.0);
  ASSERT_EQ(c.val.size(), 1u);
  EXPECT_EQ(c.val[0].step, 2);
  const std::string svg = loss_svg(c, "t");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find(">step</text>"), std::string::npos);
  EXPECT_NE(svg.find("loss (nats per token)"), std::string::npos);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_NE(svg.find("<circle"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  fs::remove_all(d);
}

}  // namespace
