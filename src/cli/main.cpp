// bhasa: train and run Mamba language models. One binary, one subcommand per job.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "cli/command.h"
#include "core/error.h"

// OpenMP's threads spin while they wait for work by default. On a small shared
// machine (2 cores, other processes) the spinning thread steals the core the
// working thread needs: measured, a tiny-model training step ran 4x slower. The
// policy is read once when libgomp loads, so set it and start again.
static void prefer_passive_openmp_waits(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "passive", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then carry on as we are
}

int main(int argc, char** argv) {
  prefer_passive_openmp_waits(argv);
  CLI::App app{"bhasa: train and run Mamba (selective state space) language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "bhasa 0.1.0");
  bhasa::cli::add_forward_command(app);
  bhasa::cli::add_bench_command(app);
  bhasa::cli::add_train_command(app);
  bhasa::cli::add_generate_command(app);
  bhasa::cli::add_chat_command(app);
  bhasa::cli::add_eval_command(app);
  bhasa::cli::add_tokenize_command(app);
  bhasa::cli::add_export_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const bhasa::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
