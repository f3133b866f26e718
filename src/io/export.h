// `bhasa export`: a model directory rewritten for other tools. Hugging Face
// transformers' MambaForCausalLM covers only RMSNorm blocks without an MLP, so a
// model with the MLP or LayerNorm layout is written in the state-spaces/mamba
// (mamba_ssm) naming instead, which MambaLMHeadModel loads.
#pragma once
#include <string>

namespace bhasa {

enum class ExportFormat { HF, MambaSSM };

struct ExportResult {
  ExportFormat written = ExportFormat::HF;  // may differ from the request (see above)
  std::string note;                         // why it differs, or "" when it does not
  bool tokenizer = false;                   // whether a tokenizer.json was written
};

// Reads model_dir (any naming, shards, F32/F16/BF16) and writes out_dir/config.json,
// out_dir/model.safetensors (F32) and, when model_dir has one, out_dir/tokenizer.json
// (re-saved, so it is what HF tokenizers loads), plus tokenizer_config.json for HF.
// Loading out_dir gives back the same floats bit for bit. Throws Error when out_dir
// is model_dir, when out_dir holds sharded weights that would shadow the new ones,
// or when the tokenizer has more tokens than the model's embedding has rows.
ExportResult export_model_dir(const std::string& model_dir, const std::string& out_dir, ExportFormat format);

}  // namespace bhasa
