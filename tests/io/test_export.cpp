// `bhasa export`: HF and mamba_ssm directories that load back bit for bit, the
// fallback to mamba_ssm for the MLP/LayerNorm layout, and the tokenizer alongside.
#include <gtest/gtest.h>

#include <cstdio>

#include "io/export.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "model/params.h"
#include "io_test_util.h"
#include "text/char_tokenizer.h"
#include "text/tokenizer.h"

using namespace bhasa;
using namespace bhasa::test;

namespace {

void expect_same_floats(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "parameters differ";
}

std::vector<std::string> tensor_names(const std::string& path) {
  SafeTensorsFile f(path);
  std::vector<std::string> names;
  for (const auto& t : f.tensors()) names.push_back(t.name);
  return names;
}

bool has_name(const std::vector<std::string>& names, const std::string& n) {
  return std::find(names.begin(), names.end(), n) != names.end();
}

std::string run_cli(const std::string& args, int* rc) {
  std::string cmd = std::string(BHASA_BIN) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  *rc = pclose(p);
  return out;
}

TEST(Export, HfRoundTripsBitwiseWithTokenizer) {
  TempDir t;
  copy_model_dir("hf-tiny", t.str("model"));
  // A char tokenizer no larger than the fixture's 72-row embedding.
  const std::string text = "the quick brown fox jumps over the lazy dog.\nTHE END!\n";
  CharTokenizer::from_corpus(text).save(t.str("model/tokenizer.json"));

  ExportResult r = export_model_dir(t.str("model"), t.str("out"), ExportFormat::HF);
  EXPECT_EQ(r.written, ExportFormat::HF);
  EXPECT_TRUE(r.note.empty());
  EXPECT_TRUE(r.tokenizer);

  ModelFiles a = load_model_dir(data_dir("hf-tiny")), b = load_model_dir(t.str("out"));
  EXPECT_EQ(b.cfg.naming, Naming::HF);
  EXPECT_EQ(b.cfg.layout_hash(), a.cfg.layout_hash());
  expect_same_floats(a.params, b.params);

  // transformers' keys and names.
  auto cfg = read_json(t.str("out/config.json"));
  EXPECT_EQ(cfg["model_type"], "mamba");
  EXPECT_EQ(cfg["architectures"][0], "MambaForCausalLM");
  EXPECT_EQ(cfg["hidden_size"], 32);
  EXPECT_EQ(cfg["vocab_size"], 72);
  auto names = tensor_names(t.str("out/model.safetensors"));
  EXPECT_TRUE(has_name(names, "backbone.embeddings.weight"));
  EXPECT_TRUE(has_name(names, "backbone.layers.1.mixer.A_log"));
  EXPECT_TRUE(has_name(names, "backbone.norm_f.weight"));

  auto tok_in = load_tokenizer(t.str("model/tokenizer.json"));
  auto tok_out = load_tokenizer(t.str("out/tokenizer.json"));
  EXPECT_EQ(tok_out->kind(), "char");
  EXPECT_EQ(tok_out->encode(text), tok_in->encode(text));
  EXPECT_EQ(read_json(t.str("out/tokenizer_config.json"))["tokenizer_class"], "PreTrainedTokenizerFast");
}

TEST(Export, MlpLayerNormFallsBackToMambaSsm) {
  TempDir t;
  ExportResult r = export_model_dir(data_dir("ssm-mlp-layernorm"), t.str("out"), ExportFormat::HF);
  EXPECT_EQ(r.written, ExportFormat::MambaSSM);
  EXPECT_NE(r.note.find("mamba_ssm"), std::string::npos) << r.note;
  EXPECT_FALSE(r.tokenizer);
  ModelFiles a = load_model_dir(data_dir("ssm-mlp-layernorm")), b = load_model_dir(t.str("out"));
  EXPECT_EQ(b.cfg.naming, Naming::MambaSSM);
  EXPECT_EQ(b.cfg.layout_hash(), a.cfg.layout_hash());
  expect_same_floats(a.params, b.params);
  auto cfg = read_json(t.str("out/config.json"));
  EXPECT_TRUE(cfg.contains("d_model"));
  EXPECT_FALSE(cfg.contains("hidden_size"));
}

TEST(Export, ForcedMambaSsmAndBackToHfGiveTheSameBytes) {
  TempDir t;
  export_model_dir(data_dir("hf-tiny"), t.str("hf1"), ExportFormat::HF);
  ExportResult r = export_model_dir(data_dir("hf-tiny"), t.str("ssm"), ExportFormat::MambaSSM);
  EXPECT_EQ(r.written, ExportFormat::MambaSSM);
  auto names = tensor_names(t.str("ssm/model.safetensors"));
  EXPECT_TRUE(has_name(names, "backbone.embedding.weight"));
  EXPECT_TRUE(has_name(names, "lm_head.weight"));
  expect_same_floats(load_model_dir(data_dir("hf-tiny")).params, load_model_dir(t.str("ssm")).params);
  export_model_dir(t.str("ssm"), t.str("hf2"), ExportFormat::HF);
  EXPECT_EQ(read_bytes(t.str("hf2/model.safetensors")), read_bytes(t.str("hf1/model.safetensors")));
}

// An HF model's vocab_size need not be a multiple of 8 (transformers does not pad);
// the mamba_ssm config must then not claim a padding its weights do not have.
// (Found by fuzzing the config round trip.)
TEST(Export, UnpaddedHfVocabToMambaSsm) {
  TempDir t;
  ModelConfig cfg = load_config(data_dir("hf-tiny/config.json"));
  cfg.vocab_size = 73;
  std::vector<float> params(ParamLayout(cfg).total);
  for (size_t i = 0; i < params.size(); i++) params[i] = 0.001f * float(i % 997) - 0.3f;
  save_model_dir(t.str("hf"), cfg, params.data());
  ExportResult r = export_model_dir(t.str("hf"), t.str("ssm"), ExportFormat::MambaSSM);
  EXPECT_EQ(r.written, ExportFormat::MambaSSM);
  ModelFiles b = load_model_dir(t.str("ssm"));
  EXPECT_EQ(b.cfg.vocab_size, 73);
  expect_same_floats(params, b.params);
}

TEST(Export, ClearErrors) {
  TempDir t;
  copy_model_dir("hf-tiny", t.str("model"));
  expect_error([&] { export_model_dir(t.str("model"), t.str("model"), ExportFormat::HF); },
               {"is the model directory itself"});
  expect_error([&] { export_model_dir(t.str("nowhere"), t.str("out"), ExportFormat::HF); }, {"not a directory"});
  // A tokenizer with more tokens than the embedding has rows belongs to another model.
  fs::copy_file(data_dir("bpe-shakespeare-512/tokenizer.json"), t.str("model/tokenizer.json"));
  expect_error([&] { export_model_dir(t.str("model"), t.str("out"), ExportFormat::HF); },
               {"512 tokens", "72 rows"});
}

TEST(Export, CliSaysWhichFormatItWrote) {
  TempDir t;
  int rc = 0;
  std::string out = run_cli("export --format hf --model " + data_dir("ssm-mlp-layernorm") + " --out " + t.str("o1"), &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("mamba_ssm format"), std::string::npos) << out;
  out = run_cli("export --model " + data_dir("hf-tiny") + " --out " + t.str("o2"), &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("Hugging Face format"), std::string::npos) << out;
  out = run_cli("export --format onnx --model " + data_dir("hf-tiny") + " --out " + t.str("o3"), &rc);
  EXPECT_NE(rc, 0) << out;
}

}  // namespace
