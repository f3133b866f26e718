// bhasa eval: how well a model predicts a text file.
//   bhasa eval --model DIR --data valid.txt [--seq-len 256 --batch 4 --max-tokens N] [--json]
// Prints loss (mean nats per token), perplexity and bits per character (char tokenizer)
// or per byte (BPE), as one human line, or one JSON line with --json.
#include <cstdio>
#include <memory>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/common.h"
#include "core/error.h"
#include "core/files.h"
#include "infer/evaluate.h"
#include "infer/model_loader.h"

namespace bhasa::cli {

namespace {

struct EvalArgs {
  std::string model_dir, data;
  RuntimeOptions runtime;  // --threads, --device
  int seq_len = 256, batch = 4;
  int64_t max_tokens = 0;
  bool json = false;
};

void run_eval(const EvalArgs& a) {
  check(a.seq_len > 0, "--seq-len must be > 0, got " + std::to_string(a.seq_len));
  check(a.batch > 0, "--batch must be > 0, got " + std::to_string(a.batch));
  check(a.max_tokens >= 0, "--max-tokens must be >= 0 (0: all), got " + std::to_string(a.max_tokens));
  LoadedModel m = load_model(a.model_dir, a.runtime.device_spec(), a.runtime.threads);
  check(m.tokenizer != nullptr, a.model_dir + " has no tokenizer.json: eval needs it to tokenize " + a.data);
  std::string text = read_text_file(a.data);
  check(!text.empty(), a.data + " is empty: give a text file to evaluate on");
  EvalResult r = evaluate_text(*m.model, *m.tokenizer, text, a.seq_len, a.batch, a.max_tokens);

  if (a.json) {
    nlohmann::json j = {{"model", a.model_dir}, {"data", a.data}, {"tokens", r.tokens},
                        {"loss", r.loss}, {"perplexity", r.perplexity},
                        {"bits_per_" + r.unit, r.bits_per_unit}, {r.unit + "s", r.units},
                        {"seconds", r.seconds}, {"tokens_per_s", r.tokens / r.seconds}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s on %s: %lld tokens, loss %.4f, perplexity %.3f, %.4f bits per %s (%.1f s)\n",
                a.model_dir.c_str(), a.data.c_str(), (long long)r.tokens, r.loss, r.perplexity,
                r.bits_per_unit, r.unit.c_str(), r.seconds);
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "loss, perplexity and bits per character/byte on a text file");
  cmd->add_option("--model,-m", a->model_dir, "model directory")->required();
  cmd->add_option("--data", a->data, "text file to evaluate on")->required();
  cmd->add_option("--seq-len", a->seq_len, "tokens per window (each starts from a zero state)")
      ->capture_default_str();
  cmd->add_option("--batch", a->batch, "windows run together")->capture_default_str();
  cmd->add_option("--max-tokens", a->max_tokens, "use only the first N tokens (0: all)")->capture_default_str();
  a->runtime.add_to(cmd);
  cmd->add_flag("--json", a->json, "print one JSON line");
  cmd->callback([a] { run_eval(*a); });
}

}  // namespace bhasa::cli
