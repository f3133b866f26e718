#include "cli/common.h"

#include <omp.h>

namespace bhasa::cli {

void RuntimeOptions::add_to(CLI::App* cmd) {
  cmd->add_option("--threads", threads, "CPU threads (0: all cores)")->check(CLI::Range(0, 4096));
  cmd->add_option("--device", device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  add_precision_option(cmd, precision);
}

void add_precision_option(CLI::App* cmd, std::string& precision) {
  cmd->add_option("--precision", precision,
                  "GEMM math on --device cuda: bf16 (default; bf16 operands, fp32 accumulation), tf32 or fp32")
      ->check(CLI::IsMember({"bf16", "tf32", "fp32"}));
}

std::unique_ptr<Backend> RuntimeOptions::make() const {
  if (threads > 0) omp_set_num_threads(threads);
  return make_backend(device_spec());
}

}  // namespace bhasa::cli
