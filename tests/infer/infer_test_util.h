// Helpers for the inference tests: a tiny char-level model directory made on the fly,
// and running the real `bhasa` binary.
#pragma once
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "fixture_util.h"
#include "io/model_dir.h"
#include "kernels/kernels.h"
#include "model/mamba.h"
#include "text/char_tokenizer.h"

namespace bhasa::test {

inline std::string temp_dir(const std::string& name) {
  auto d = std::filesystem::temp_directory_path() / ("bhasa_infer_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d.string();
}

// The characters of the test vocabulary: no '>' (the chat prompt) and no '@', so a
// reply can never contain them.
inline std::vector<std::string> test_chars() {
  std::vector<std::string> chars = {"\n", " ", "!", ",", ".", ":", "?"};
  for (char c = 'A'; c <= 'Z'; ++c) chars.push_back(std::string(1, c));
  for (char c = 'a'; c <= 'z'; ++c) chars.push_back(std::string(1, c));
  return chars;
}

// A randomly initialised char-level model directory (config.json, model.safetensors,
// tokenizer.json). Returns the directory.
inline std::string make_tiny_model_dir(const std::string& name, uint64_t seed = 7) {
  const std::string dir = temp_dir(name);
  CharTokenizer tok(test_chars());
  ModelConfig cfg;
  cfg.d_model = 32;
  cfg.n_layer = 2;
  cfg.d_state = 8;
  cfg.dt_rank = 2;
  cfg.vocab_size = (tok.vocab_size() + 7) / 8 * 8;
  auto backend = make_cpu_backend();
  MambaLM model(cfg, *backend);
  model.init_params(seed);
  std::vector<float> params(model.num_params());
  model.store_params(params.data());
  save_model_dir(dir, cfg, params.data());
  tok.save(dir + "/tokenizer.json");
  return dir;
}

struct RunResult {
  int status = -1;     // exit status
  std::string output;  // stdout (and stderr when merged)
};

// Runs `bhasa <args>` through the shell; merge_stderr folds stderr into output.
inline RunResult run_bhasa(const std::string& args, bool merge_stderr = true, const std::string& stdin_text = "") {
  std::string cmd = std::string("'") + BHASA_BIN + "' " + args;
  if (!stdin_text.empty()) {
    std::string in_path = std::filesystem::temp_directory_path() / ("bhasa_infer_stdin_" + std::to_string(::getpid()));
    FILE* f = std::fopen(in_path.c_str(), "wb");
    std::fwrite(stdin_text.data(), 1, stdin_text.size(), f);
    std::fclose(f);
    cmd += " < '" + in_path + "'";
  } else {
    cmd += " < /dev/null";
  }
  if (merge_stderr) cmd += " 2>&1";
  RunResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

}  // namespace bhasa::test
