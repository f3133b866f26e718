#include "io/export.h"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "io/model_dir.h"
#include "text/tokenizer.h"

namespace fs = std::filesystem;

namespace bhasa {

namespace {

// What transformers' AutoTokenizer needs beside tokenizer.json to wrap it as a
// PreTrainedTokenizerFast; the special token, when the tokenizer has one, is eos.
void write_tokenizer_config(const std::string& path, const Tokenizer& tok) {
  nlohmann::ordered_json j;
  j["tokenizer_class"] = "PreTrainedTokenizerFast";
  if (tok.token_id("<|endoftext|>") >= 0) {
    j["bos_token"] = "<|endoftext|>";
    j["eos_token"] = "<|endoftext|>";
  }
  j["model_max_length"] = 1000000000;
  atomic_write_file(path, j.dump(2) + "\n");
}

}  // namespace

ExportResult export_model_dir(const std::string& model_dir, const std::string& out_dir, ExportFormat format) {
  std::error_code ec;
  check(fs::is_directory(model_dir, ec), "--model " + model_dir + ": not a directory");
  if (fs::exists(out_dir, ec) && fs::equivalent(model_dir, out_dir, ec))
    throw Error("--out " + out_dir + " is the model directory itself; choose another directory");
  // A stale index would make loaders read the old shards instead of model.safetensors.
  check(!fs::exists(out_dir + "/model.safetensors.index.json", ec),
        "--out " + out_dir + " already holds sharded weights (model.safetensors.index.json); "
        "export into an empty directory");

  ModelFiles m = load_model_dir(model_dir);
  ExportResult r;
  r.written = format;
  if (format == ExportFormat::HF && (m.cfg.d_intermediate > 0 || !m.cfg.rms_norm)) {
    r.written = ExportFormat::MambaSSM;
    r.note = std::string("this model has ") +
             (m.cfg.d_intermediate > 0 ? "an MLP in each block" : "LayerNorm instead of RMSNorm") +
             ", which transformers' MambaForCausalLM cannot hold; wrote the mamba_ssm format "
             "(MambaLMHeadModel) instead";
  }
  m.cfg.naming = r.written == ExportFormat::HF ? Naming::HF : Naming::MambaSSM;

  std::unique_ptr<Tokenizer> tok;
  const std::string tok_path = model_dir + "/tokenizer.json";
  if (fs::exists(tok_path, ec)) {
    tok = load_tokenizer(tok_path);
    check(tok->vocab_size() <= m.cfg.vocab_size,
          tok_path + " has " + std::to_string(tok->vocab_size()) + " tokens but the model's embedding has only " +
              std::to_string(m.cfg.vocab_size) + " rows; this tokenizer does not belong to this model");
  }

  fs::create_directories(out_dir, ec);
  check(!ec, "cannot create " + out_dir + ": " + ec.message());
  save_model_dir(out_dir, m.cfg, m.params.data());
  if (tok) {
    tok->save(out_dir + "/tokenizer.json");
    if (r.written == ExportFormat::HF) write_tokenizer_config(out_dir + "/tokenizer_config.json", *tok);
    r.tokenizer = true;
  }
  return r;
}

}  // namespace bhasa
