// Each subcommand lives in its own file and adds itself to the app through one
// function declared here; main.cpp calls them all. The CLI stays thin: parse
// options, call the library, print.
#pragma once
#include <CLI/CLI.hpp>

namespace bhasa::cli {

void add_forward_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_chat_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);   // also "tokenizer train"
void add_export_command(CLI::App& app);

}  // namespace bhasa::cli
