#include "model/params.h"

#include <cstdint>

namespace bhasa {

ParamLayout::ParamLayout(const ModelConfig& cfg) {
  const int64_t D = cfg.d_model, E = cfg.d_inner(), N = cfg.d_state, R = cfg.dt_rank,
                K = cfg.d_conv, V = cfg.vocab_size, I = cfg.d_intermediate;
  const bool hf = cfg.naming == Naming::HF;

  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool decay) {
    ParamTensor t;
    t.name = name;
    t.shape = std::move(shape);
    t.numel = 1;
    for (int64_t s : t.shape) t.numel *= size_t(s);
    t.offset = total;
    t.decay = decay;
    total += t.numel;
    tensors.push_back(std::move(t));
    return tensors.back().offset;
  };

  embedding = add(hf ? "backbone.embeddings.weight" : "backbone.embedding.weight", {V, D}, true);
  for (int l = 0; l < cfg.n_layer; l++) {
    const std::string p = "backbone.layers." + std::to_string(l) + ".";
    LayerParams lp;
    lp.norm_w = add(p + "norm.weight", {D}, false);
    lp.norm_b = cfg.rms_norm ? SIZE_MAX : add(p + "norm.bias", {D}, false);
    lp.in_proj = add(p + "mixer.in_proj.weight", {2 * E, D}, true);
    lp.conv_w = add(p + "mixer.conv1d.weight", {E, 1, K}, true);
    lp.conv_b = cfg.use_conv_bias ? add(p + "mixer.conv1d.bias", {E}, false) : SIZE_MAX;
    lp.x_proj = add(p + "mixer.x_proj.weight", {R + 2 * N, E}, true);
    lp.dt_proj_w = add(p + "mixer.dt_proj.weight", {E, R}, true);
    lp.dt_proj_b = add(p + "mixer.dt_proj.bias", {E}, false);
    lp.A_log = add(p + "mixer.A_log", {E, N}, false);
    lp.D = add(p + "mixer.D", {E}, false);
    lp.out_proj = add(p + "mixer.out_proj.weight", {D, E}, true);
    lp.norm2_w = lp.norm2_b = lp.fc1 = lp.fc2 = SIZE_MAX;
    if (I > 0) {
      lp.norm2_w = add(p + "norm2.weight", {D}, false);
      if (!cfg.rms_norm) lp.norm2_b = add(p + "norm2.bias", {D}, false);
      lp.fc1 = add(p + "mlp.fc1.weight", {2 * I, D}, true);
      lp.fc2 = add(p + "mlp.fc2.weight", {D, I}, true);
    }
    layers.push_back(lp);
  }
  norm_f_w = add("backbone.norm_f.weight", {D}, false);
  if (!cfg.rms_norm) norm_f_b = add("backbone.norm_f.bias", {D}, false);
}

const ParamTensor* ParamLayout::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

}  // namespace bhasa
