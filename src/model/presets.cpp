#include "model/presets.h"

#include "core/error.h"

namespace bhasa {

int padded_vocab(int vocab_size, int multiple) {
  if (multiple <= 1) return vocab_size;
  return (vocab_size + multiple - 1) / multiple * multiple;
}

std::vector<std::string> preset_names() { return {"tiny", "seed", "char10m", "m130"}; }

ModelConfig preset_config(const std::string& name, int vocab_size) {
  ModelConfig c;
  c.naming = Naming::MambaSSM;
  c.d_conv = 4;
  c.expand = 2;
  if (name == "tiny") {
    c.d_model = 192; c.n_layer = 4; c.d_state = 16; c.dt_rank = 12;
  } else if (name == "seed") {
    c.d_model = 512; c.n_layer = 8; c.d_state = 32; c.dt_rank = 64;
    c.d_intermediate = 1024; c.rms_norm = false;
  } else if (name == "char10m") {
    c.d_model = 384; c.n_layer = 8; c.d_state = 16; c.dt_rank = 24;
  } else if (name == "m130") {
    c.d_model = 768; c.n_layer = 24; c.d_state = 16; c.dt_rank = 48;
    if (vocab_size <= 0) vocab_size = 50280;
  } else {
    throw Error("unknown preset '" + name + "': choose one of tiny, seed, char10m, m130");
  }
  check(vocab_size > 0, "preset '" + name + "' needs a vocabulary size");
  c.vocab_size = padded_vocab(vocab_size, c.pad_vocab_size_multiple);
  return c;
}

}  // namespace bhasa
