// Where every parameter lives inside the one flat float buffer, and its names in
// both model-directory namings. Gradients and optimizer moments use the same offsets.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "model/config.h"

namespace bhasa {

struct ParamTensor {
  std::string name;            // as in the model directory of cfg.naming
  std::vector<int64_t> shape;  // as stored in safetensors
  size_t offset = 0;           // into the flat buffer, in floats
  size_t numel = 0;
  bool decay = true;           // false for A_log, D, dt bias, norms, biases
};

// Offsets of one layer's tensors (SIZE_MAX when the tensor is absent).
struct LayerParams {
  size_t norm_w, norm_b;        // (d_model)
  size_t in_proj;               // (2*d_inner, d_model)
  size_t conv_w, conv_b;        // (d_inner, 1, d_conv), (d_inner)
  size_t x_proj;                // (dt_rank + 2*d_state, d_inner)
  size_t dt_proj_w, dt_proj_b;  // (d_inner, dt_rank), (d_inner)
  size_t A_log;                 // (d_inner, d_state)
  size_t D;                     // (d_inner)
  size_t out_proj;              // (d_model, d_inner)
  size_t norm2_w, norm2_b;      // (d_model)                 MLP layout only
  size_t fc1;                   // (2*d_intermediate, d_model) MLP layout only
  size_t fc2;                   // (d_model, d_intermediate)   MLP layout only
};

struct ParamLayout {
  std::vector<ParamTensor> tensors;  // in file order
  std::vector<LayerParams> layers;
  size_t embedding = 0;              // (vocab_size, d_model); also the tied LM head
  size_t norm_f_w = 0, norm_f_b = SIZE_MAX;
  size_t total = 0;                  // floats in the flat buffer

  explicit ParamLayout(const ModelConfig& cfg);
  const ParamTensor* find(const std::string& name) const;
};

}  // namespace bhasa
