// A model directory: config.json + model.safetensors (or shards listed by
// model.safetensors.index.json), in either naming (Hugging Face MambaForCausalLM or
// state-spaces/mamba MambaLMHeadModel). Loading checks every tensor against the shape
// config.json implies, so a config that contradicts the weights is an Error, not garbage.
#pragma once
#include <string>
#include <vector>

#include "model/config.h"

namespace bhasa {

struct ModelFiles {
  ModelConfig cfg;
  std::vector<float> params;  // (ParamLayout(cfg).total) flat, in ParamLayout(cfg) order
};

// Reads and validates a config.json file; Errors name the file and the key.
ModelConfig load_config(const std::string& path);

// Reads DIR/config.json and its weights (any of F32/F16/BF16/F64, converted to float).
ModelFiles load_model_dir(const std::string& dir);

// Writes DIR/config.json and DIR/model.safetensors (F32, in cfg.naming; mamba_ssm also
// gets lm_head.weight, a copy of the tied embedding), each atomically. Creates DIR.
// params: (ParamLayout(cfg).total) floats.
void save_model_dir(const std::string& dir, const ModelConfig& cfg, const float* params);

}  // namespace bhasa
