// bhasa: train and run Mamba language models. One binary, one subcommand per job.
#include <cstdio>

#include "cli/command.h"
#include "core/error.h"

int main(int argc, char** argv) {
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
