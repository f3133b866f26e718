#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace bhasa {

float LrSchedule::at(int step) const {
  if (step < warmup_steps) return lr * static_cast<float>(step + 1) / static_cast<float>(warmup_steps);
  const int decay_steps = std::max(1, total_steps - warmup_steps);
  double r = static_cast<double>(step - warmup_steps) / decay_steps;
  r = std::clamp(r, 0.0, 1.0);
  const double coeff = 0.5 * (1.0 + std::cos(M_PI * r));
  return static_cast<float>(min_lr + coeff * (lr - min_lr));
}

AdamW::AdamW(MambaLM& model, const AdamWOptions& opt) : model_(model), opt_(opt), n_(model.num_params()) {
  Backend& be = model_.backend();
  m_ = be.alloc(n_);
  v_ = be.alloc(n_);
  // Tensors sorted by offset; neighbours with the same decay flag merge into one run.
  std::vector<ParamTensor> ts = model_.layout().tensors;
  std::sort(ts.begin(), ts.end(), [](const ParamTensor& a, const ParamTensor& b) { return a.offset < b.offset; });
  for (const auto& t : ts) {
    if (!segments_.empty()) {
      Segment& last = segments_.back();
      if (last.decay == t.decay && last.offset + last.numel == t.offset) {
        last.numel += t.numel;
        continue;
      }
    }
    segments_.push_back({t.offset, t.numel, t.decay});
  }
}

AdamW::~AdamW() {
  Backend& be = model_.backend();
  be.free(m_);
  be.free(v_);
}

double AdamW::step(float lr, int t, float grad_scale) {
  Backend& be = model_.backend();
  const double norm = std::sqrt(be.sum_squares(n_, model_.grads())) * grad_scale;
  check(std::isfinite(norm), "the gradient norm is not finite (the loss diverged); restart with a lower --lr");
  float scale = grad_scale;
  if (opt_.grad_clip > 0 && norm > opt_.grad_clip) scale = static_cast<float>(grad_scale * (opt_.grad_clip / norm));
  float* p = model_.params();
  const float* g = model_.grads();
  for (const Segment& s : segments_)
    be.adamw(s.numel, p + s.offset, g + s.offset, m_ + s.offset, v_ + s.offset, lr, opt_.beta1, opt_.beta2,
             opt_.eps, s.decay ? opt_.weight_decay : 0.0f, t, scale);
  // The weights stay as they are until the next step: a backend may keep a faster copy
  // (the CUDA backend's bf16 mirror, read by the next forward and backward's GEMMs).
  be.freeze_weights(p, n_);
  return norm;
}

void AdamW::store_state(std::vector<float>& m, std::vector<float>& v) const {
  Backend& be = model_.backend();
  m.resize(n_);
  v.resize(n_);
  be.download(m.data(), m_, n_);
  be.download(v.data(), v_, n_);
}

void AdamW::load_state(const std::vector<float>& m, const std::vector<float>& v) {
  check(m.size() == n_ && v.size() == n_, "the optimizer state does not match the model's parameter count");
  Backend& be = model_.backend();
  be.upload(m_, m.data(), n_);
  be.upload(v_, v.data(), n_);
}

}  // namespace bhasa
