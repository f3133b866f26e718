// bhasa generate: continue a prompt, streaming the text to stdout as it is sampled.
//   bhasa generate --model DIR --prompt "ROMEO:" --max-new-tokens 200
//   echo "ROMEO:" | bhasa generate --model DIR            (prompt from stdin)
//   bhasa generate --model DIR --prompt-ids 1,2,3 --format ids --temperature 0
// Text output is the continuation only (not the prompt), exactly as generated, plus a
// final newline when stdout is a terminal. --format ids prints the generated ids,
// space-separated, on one line.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>

#include "cli/command.h"
#include "cli/sampling_args.h"
#include "core/error.h"
#include "infer/generator.h"
#include "infer/model_loader.h"

namespace bhasa::cli {

namespace {

struct GenerateArgs : RunArgs {
  std::string prompt;
  bool prompt_given = false;
  std::string prompt_ids;
  std::string format = "text";
  bool stats = false;
  GenerateOptions gen;
};

// "1,2,3" or "1 2 3" -> ids.
std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::string token;
  std::string norm = s;
  for (char& c : norm)
    if (c == ',') c = ' ';
  std::istringstream in(norm);
  while (in >> token) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(token, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    check(used == token.size() && v >= 0 && v <= INT32_MAX,
          "--prompt-ids: '" + token + "' is not a token id (expected non-negative integers like 1,2,3)");
    ids.push_back(int32_t(v));
  }
  check(!ids.empty(), "the prompt is empty: --prompt-ids needs at least one id, like 1,2,3");
  return ids;
}

void run_generate(GenerateArgs& a) {
  a.sampling.validate();
  a.gen.stop = unescape_all(a.gen.stop);
  a.gen.validate();
  check(a.format == "text" || a.format == "ids", "--format must be text or ids, got '" + a.format + "'");
  check(!(a.prompt_given && !a.prompt_ids.empty()), "give either --prompt or --prompt-ids, not both");

  LoadedModel m = load_model(a.model_dir, a.runtime.device_spec(), a.runtime.threads);
  check(a.format == "ids" || m.tokenizer,
        a.model_dir + " has no tokenizer.json, so text cannot be printed: use --format ids");
  Generator gen(*m.model, m.tokenizer.get(), a.sampling);

  auto t0 = std::chrono::steady_clock::now();
  if (!a.prompt_ids.empty()) {
    gen.feed(parse_ids(a.prompt_ids));
  } else {
    std::string prompt = a.prompt;
    if (!a.prompt_given || prompt == "-")
      prompt.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    check(!prompt.empty(), "the prompt is empty: pass --prompt TEXT, pipe text to stdin, or use --prompt-ids");
    gen.feed(std::string_view(prompt));
  }
  auto t1 = std::chrono::steady_clock::now();

  std::function<void(std::string_view)> on_text;
  if (a.format == "text")
    on_text = [](std::string_view s) {
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
    };
  Generation out = gen.generate(a.gen, on_text);
  auto t2 = std::chrono::steady_clock::now();

  if (a.format == "ids") {
    for (size_t i = 0; i < out.ids.size(); ++i) std::printf(i ? " %d" : "%d", out.ids[i]);
    std::printf("\n");
  } else if (isatty(STDOUT_FILENO)) {
    std::printf("\n");
  }
  std::fflush(stdout);
  if (a.stats) {
    double prefill_s = std::chrono::duration<double>(t1 - t0).count();
    double decode_s = std::chrono::duration<double>(t2 - t1).count();
    std::fprintf(stderr, "prompt: %lld tokens in %.3f s; generated %zu tokens in %.3f s (%.1f tokens/s); stop: %s\n",
                 (long long)(gen.n_past() - int64_t(out.ids.size())), prefill_s, out.ids.size(), decode_s,
                 out.ids.empty() ? 0.0 : out.ids.size() / decode_s, stop_reason_name(out.reason));
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "continue a prompt, streaming the text to stdout");
  add_run_options(cmd, *a);
  cmd->add_option("--prompt,-p", a->prompt, "prompt text; read from stdin when absent or '-'");
  cmd->add_option("--prompt-ids", a->prompt_ids, "prompt as token ids, e.g. 1,2,3");
  cmd->add_option("--format", a->format, "text (stream the continuation) or ids (print generated ids)")
      ->capture_default_str();
  cmd->add_option("--max-new-tokens,-n", a->gen.max_new_tokens, "how many tokens to generate at most")
      ->capture_default_str();
  cmd->add_option("--stop", a->gen.stop, "stop when this text is generated (repeatable; not printed; \\n is a newline)");
  cmd->add_flag("--stats", a->stats, "print timing to stderr");
  cmd->callback([a, cmd] {
    a->prompt_given = cmd->count("--prompt") > 0;
    run_generate(*a);
  });
}

}  // namespace bhasa::cli
