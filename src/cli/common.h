// Small pieces every subcommand shares: threads and backend selection.
#pragma once
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "kernels/kernels.h"

namespace bhasa::cli {

// --threads N (0 = OpenMP's default), --device cpu|cuda and --precision on a subcommand.
// --precision bf16|tf32|fp32 (the CUDA GEMM math), shared with `bhasa train`.
void add_precision_option(CLI::App* cmd, std::string& precision);
struct RuntimeOptions {
  int threads = 0;
  std::string device = "cpu";
  std::string precision;  // --precision: the CUDA GEMM math; empty for the default
  void add_to(CLI::App* cmd);
  // What make_backend() takes: "cpu", "cuda" or "cuda:<precision>".
  std::string device_spec() const { return bhasa::device_spec(device, precision); }
  // Applies the thread count and makes the backend.
  std::unique_ptr<Backend> make() const;
};

}  // namespace bhasa::cli
