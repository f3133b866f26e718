// The model's hyperparameters, read from either config.json key set:
// Hugging Face MambaConfig (hidden_size, num_hidden_layers, state_size, ...) or
// state-spaces/mamba (d_model, n_layer, ssm_cfg{...}, rms_norm, ...).
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace bhasa {

enum class Naming { HF, MambaSSM };  // tensor names of MambaForCausalLM vs MambaLMHeadModel

struct ModelConfig {
  int d_model = 0;
  int n_layer = 0;
  int vocab_size = 0;      // rows of the embedding (already padded)
  int d_state = 16;
  int d_conv = 4;
  int expand = 2;
  int dt_rank = 0;         // 0 in a file means "auto": ceil(d_model / 16)
  int d_intermediate = 0;  // > 0: each block adds norm2 + gated MLP (fc1 -> 2*d_intermediate)
  bool rms_norm = true;    // false: LayerNorm with bias
  float norm_eps = 1e-5f;
  bool use_bias = false;       // in_proj / out_proj bias (unsupported when true)
  bool use_conv_bias = true;
  int pad_vocab_size_multiple = 8;
  // Initialisation (the official code's defaults)
  float dt_min = 1e-3f, dt_max = 0.1f, dt_init_floor = 1e-4f, dt_scale = 1.0f;
  float initializer_range = 0.02f;

  Naming naming = Naming::HF;  // which naming the model directory used

  int d_inner() const { return expand * d_model; }

  // Reads either key set. Throws Error naming the missing or bad key.
  static ModelConfig from_json(const nlohmann::json& j);
  // HF keys when naming == HF, mamba_ssm keys otherwise.
  nlohmann::json to_json() const;
  // Sanity checks on values (positive sizes, supported options).
  void validate() const;
  // A short stable hash of the fields that define the parameter layout.
  std::string layout_hash() const;
};

}  // namespace bhasa
