// The training log: OUT/metrics.jsonl, one JSON object per optimizer step
// ({"step", "epoch", "loss", "lr", "tokens_per_s", "grad_norm"}, plus "val_loss" and
// "bpc" on evaluation steps), and the loss-curve SVG drawn from it.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace bhasa {

class MetricsLog {
 public:
  // Opens `path` for appending. Records with step > keep_through_step are dropped
  // first (they come from steps after the checkpoint being resumed, which will be
  // redone); keep_through_step = 0 starts a fresh log.
  MetricsLog(const std::string& path, int64_t keep_through_step);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  // Appends one line and flushes it.
  void write(const nlohmann::ordered_json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  FILE* f_ = nullptr;
};

struct LossPoint {
  int64_t step;
  double loss;
};
struct LossCurves {
  std::vector<LossPoint> train, val;
};
// Reads "loss" and "val_loss" per step from a metrics.jsonl (lines that do not parse,
// e.g. a line torn by a crash, are skipped).
LossCurves read_loss_curves(const std::string& metrics_path);

// A hand-written SVG: train loss (and its moving average) and validation loss
// against the step, with labelled axes and ticks. Written atomically.
void write_loss_svg(const std::string& path, const LossCurves& curves, const std::string& title);
std::string loss_svg(const LossCurves& curves, const std::string& title);

}  // namespace bhasa
