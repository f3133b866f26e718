// Small pieces every subcommand shares: threads and backend selection.
#pragma once
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "kernels/kernels.h"

namespace bhasa::cli {

// --threads N (0 = OpenMP's default) and --device cpu|cuda on a subcommand.
struct RuntimeOptions {
  int threads = 0;
  std::string device = "cpu";
  void add_to(CLI::App* cmd);
  // Applies the thread count and makes the backend.
  std::unique_ptr<Backend> make() const;
};

}  // namespace bhasa::cli
