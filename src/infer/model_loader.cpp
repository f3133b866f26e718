#include "infer/model_loader.h"

#include <omp.h>

#include <filesystem>

#include "core/error.h"
#include "io/model_dir.h"

extern "C" void openblas_set_num_threads(int num_threads);

namespace bhasa {

namespace fs = std::filesystem;

void set_cpu_threads(int n) {
  check(n > 0, "--threads must be > 0, got " + std::to_string(n));
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

LoadedModel load_model(const std::string& dir, const std::string& device, int threads) {
  check(threads >= 0, "--threads must be >= 0 (0: all cores), got " + std::to_string(threads));
  std::error_code ec;
  check(fs::is_directory(dir, ec),
        "model directory '" + dir + "' does not exist or is not a directory (a model directory "
        "holds config.json, model.safetensors and, for text, tokenizer.json)");
  check(fs::exists(fs::path(dir) / "config.json", ec),
        "'" + dir + "' is not a model directory: it has no config.json (a model directory holds "
        "config.json, model.safetensors and, for text, tokenizer.json)");
  if (threads > 0) set_cpu_threads(threads);

  LoadedModel m;
  m.dir = dir;
  ModelFiles files = load_model_dir(dir);
  m.backend = make_backend(device);
  m.model = std::make_unique<MambaLM>(files.cfg, *m.backend);
  m.model->load_params(files.params.data());

  fs::path tok_path = fs::path(dir) / "tokenizer.json";
  if (fs::exists(tok_path, ec)) {
    m.tokenizer = load_tokenizer(tok_path.string());
    check(m.tokenizer->vocab_size() <= files.cfg.vocab_size,
          tok_path.string() + " has " + std::to_string(m.tokenizer->vocab_size()) +
              " tokens but the model's embedding has only " + std::to_string(files.cfg.vocab_size) +
              " rows: the tokenizer does not belong to this model");
  }
  return m;
}

}  // namespace bhasa
