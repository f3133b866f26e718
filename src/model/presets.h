// Named model shapes used by `bhasa train --preset` and `bhasa bench --preset`.
#pragma once
#include <string>
#include <vector>

#include "model/config.h"

namespace bhasa {

// tiny     trains in minutes on 2 cores (char-level)
// seed     the seed's README model: d_model 512, 8 layers, d_state 32, dt_rank 64, gated MLP 1024, LayerNorm
// char10m  nanoGPT shakespeare_char sized: d_model 384, 8 layers, d_state 16
// m130     state-spaces/mamba-130m: d_model 768, 24 layers, d_state 16, vocab 50280
// vocab_size is the tokenizer's size; it is padded up to a multiple of 8 here.
ModelConfig preset_config(const std::string& name, int vocab_size);
std::vector<std::string> preset_names();
// vocab_size rounded up to cfg.pad_vocab_size_multiple.
int padded_vocab(int vocab_size, int multiple);

}  // namespace bhasa
