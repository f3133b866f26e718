// AdamW over the model's flat parameter buffer, with global-norm gradient clipping
// and the learning-rate schedule (linear warmup, then cosine decay to min_lr).
#pragma once
#include <cstddef>
#include <vector>

#include "model/mamba.h"

namespace bhasa {

// nanoGPT's get_lr, with `step` counted from 0:
//   step < warmup:  lr * (step + 1) / warmup
//   then            min_lr + 0.5 * (1 + cos(pi * r)) * (lr - min_lr),
//                   r = (step - warmup) / (total - warmup), clamped to [0, 1]
struct LrSchedule {
  float lr = 1e-3f;
  float min_lr = 1e-4f;
  int warmup_steps = 100;
  int total_steps = 1000;
  float at(int step) const;
};

struct AdamWOptions {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;  // decoupled; only tensors whose ParamTensor::decay is true
  float grad_clip = 1.0f;     // global L2 norm; <= 0 turns clipping off
};

class AdamW {
 public:
  AdamW(MambaLM& model, const AdamWOptions& opt);
  ~AdamW();
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // One update from the gradients in model.grads(), which are first multiplied by
  // grad_scale (1 / accumulation steps) and then clipped to the global norm.
  // `t` is the 1-based update count (for bias correction). Returns the global
  // gradient norm before clipping.
  double step(float lr, int t, float grad_scale = 1.0f);

  // Moments m, v: (total) each, backend memory, same offsets as the parameters.
  void store_state(std::vector<float>& m, std::vector<float>& v) const;
  void load_state(const std::vector<float>& m, const std::vector<float>& v);
  size_t size() const { return n_; }

  // Runs of contiguous tensors that share a decay flag: one adamw call each.
  struct Segment {
    size_t offset, numel;
    bool decay;
  };
  const std::vector<Segment>& segments() const { return segments_; }

 private:
  MambaLM& model_;
  AdamWOptions opt_;
  size_t n_;
  float* m_ = nullptr;  // (total)
  float* v_ = nullptr;  // (total)
  std::vector<Segment> segments_;
};

}  // namespace bhasa
