// Opening a model directory for inference: config + weights on a backend, and the
// tokenizer from DIR/tokenizer.json when there is one (without it, only token ids
// can be given and printed).
#pragma once
#include <memory>
#include <string>

#include "kernels/kernels.h"
#include "model/mamba.h"
#include "text/tokenizer.h"

namespace bhasa {

struct LoadedModel {
  std::string dir;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<MambaLM> model;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the directory has no tokenizer.json
};

// device: "cpu" or "cuda". threads > 0 sets the CPU thread count (0: OpenMP's default).
// Throws Error naming the directory and what is missing or wrong.
LoadedModel load_model(const std::string& dir, const std::string& device = "cpu", int threads = 0);

// Sets the number of CPU threads for kernels and BLAS (n > 0).
void set_cpu_threads(int n);

}  // namespace bhasa
