// Small pieces every subcommand shares: threads and backend selection.
#pragma once
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "kernels/kernels.h"

namespace bhasa::cli {

// --threads N (0 = OpenMP's default), --device cpu|cuda and --precision on a subcommand.
// The --precision option's help, shared with `bhasa train`.
inline constexpr const char* kPrecisionHelp =
    "GEMM math on --device cuda: bf16 (default; bf16 operands, fp32 accumulation), tf32 or fp32";
struct RuntimeOptions {
  int threads = 0;
  std::string device = "cpu";
  std::string precision;  // --precision: the CUDA GEMM math; empty for the default
  void add_to(CLI::App* cmd);
  // What make_backend() takes: "cpu", "cuda" or "cuda:<precision>".
  std::string device_spec() const { return precision.empty() ? device : device + ":" + precision; }
  // Applies the thread count and makes the backend.
  std::unique_ptr<Backend> make() const;
};

}  // namespace bhasa::cli
