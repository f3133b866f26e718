// bhasa export: a model directory rewritten for Hugging Face transformers
// (MambaForCausalLM) or state-spaces/mamba (MambaLMHeadModel).
#include <cstdio>
#include <memory>

#include "cli/command.h"
#include "io/export.h"

namespace bhasa::cli {

void add_export_command(CLI::App& app) {
  struct ExportOptions {
    std::string format = "hf", model, out;
  };
  auto o = std::make_shared<ExportOptions>();
  auto* cmd = app.add_subcommand("export", "Write a model directory that transformers or mamba_ssm loads");
  cmd->add_option("--format", o->format,
                  "hf (MambaForCausalLM; models with an MLP or LayerNorm fall back to mamba_ssm) or mamba_ssm")
      ->check(CLI::IsMember({"hf", "mamba_ssm"}))
      ->capture_default_str();
  cmd->add_option("--model", o->model, "model directory (config.json + safetensors), e.g. runs/tiny/final")
      ->required();
  cmd->add_option("--out", o->out, "directory to write")->required();
  cmd->callback([o] {
    const ExportFormat want = o->format == "hf" ? ExportFormat::HF : ExportFormat::MambaSSM;
    const ExportResult r = export_model_dir(o->model, o->out, want);
    if (!r.note.empty()) std::printf("note: %s\n", r.note.c_str());
    std::printf("exported %s -> %s (%s format%s)\n", o->model.c_str(), o->out.c_str(),
                r.written == ExportFormat::HF ? "Hugging Face" : "mamba_ssm",
                r.tokenizer ? ", with tokenizer.json" : ", no tokenizer.json in the model directory");
  });
}

}  // namespace bhasa::cli
