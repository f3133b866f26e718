// Command-line options shared by `bhasa generate` and `bhasa chat`: sampling and
// where to run. Values are checked by SamplerOptions::validate (clear Errors).
#pragma once
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/common.h"
#include "infer/sampler.h"

namespace bhasa::cli {

struct RunArgs {
  std::string model_dir;
  RuntimeOptions runtime;  // --threads, --device
  SamplerOptions sampling;
};

inline void add_run_options(CLI::App* cmd, RunArgs& a) {
  cmd->add_option("--model,-m", a.model_dir, "model directory (config.json, model.safetensors, tokenizer.json)")
      ->required();
  a.runtime.add_to(cmd);
  cmd->add_option("--temperature", a.sampling.temperature, "sampling temperature; 0 is greedy")
      ->capture_default_str();
  cmd->add_option("--top-k", a.sampling.top_k, "keep the k most likely tokens; 0 keeps all")
      ->capture_default_str();
  cmd->add_option("--top-p", a.sampling.top_p, "nucleus sampling: keep the smallest set of mass p, in (0, 1]")
      ->capture_default_str();
  cmd->add_option("--repeat-penalty", a.sampling.repeat_penalty,
                  "divide the logits of recently seen tokens by this (1 is off)")
      ->capture_default_str();
  cmd->add_option("--repeat-last-n", a.sampling.repeat_last_n,
                  "how many recent tokens the penalty looks at (0: all)")
      ->capture_default_str();
  cmd->add_option("--seed", a.sampling.seed, "random seed (runs with the same seed are identical)")
      ->capture_default_str();
}

}  // namespace bhasa::cli

namespace bhasa::cli {

// "\n", "\t" and "\\" in a --stop value become newline, tab and backslash, so a blank
// line can be given as --stop '\n\n'.
inline std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

inline std::vector<std::string> unescape_all(std::vector<std::string> v) {
  for (std::string& s : v) s = unescape(s);
  return v;
}

}  // namespace bhasa::cli
