// Model directories: the fixtures load with their configs and exact values; save then
// load round-trips bitwise in both namings; sharded directories load the same.
#include <gtest/gtest.h>

#include "io/model_dir.h"
#include "io/safetensors.h"
#include "io_test_util.h"
#include "model/params.h"

using namespace bhasa;
using namespace bhasa::test;
using nlohmann::json;

// Reads every F32 tensor of a safetensors file with plain file reads and the JSON
// header, independently of SafeTensorsFile.
static std::map<std::string, std::vector<float>> raw_f32_tensors(const std::string& path) {
  json h;
  std::string data;
  split_safetensors(read_bytes(path), &h, &data);
  std::map<std::string, std::vector<float>> out;
  for (auto& [name, v] : h.items()) {
    if (name == "__metadata__") continue;
    EXPECT_EQ(v["dtype"], "F32") << name;
    size_t b = v["data_offsets"][0], e = v["data_offsets"][1];
    std::vector<float> x((e - b) / 4);
    std::memcpy(x.data(), data.data() + b, e - b);
    out[name] = std::move(x);
  }
  return out;
}

static void expect_params_equal_file(const ModelFiles& m, const std::string& file) {
  const ParamLayout layout(m.cfg);
  ASSERT_EQ(m.params.size(), layout.total);
  auto raw = raw_f32_tensors(file);
  for (const ParamTensor& p : layout.tensors) {
    ASSERT_TRUE(raw.count(p.name)) << p.name;
    const std::vector<float>& want = raw[p.name];
    ASSERT_EQ(want.size(), p.numel) << p.name;
    EXPECT_EQ(std::memcmp(m.params.data() + p.offset, want.data(), p.numel * 4), 0) << p.name;
  }
}

TEST(ModelDir, LoadsFixtures) {
  struct Case { const char* name; int d_model, n_layer, d_state, dt_rank, vocab, d_intermediate; bool rms; Naming naming; size_t tensors; };
  for (const Case& c : {Case{"hf-tiny", 32, 2, 8, 4, 72, 0, true, Naming::HF, 22},
                        Case{"hf-small", 64, 3, 16, 8, 256, 0, true, Naming::HF, 32},
                        Case{"ssm-mlp-layernorm", 32, 2, 8, 4, 72, 128, false, Naming::MambaSSM, 33}}) {
    SCOPED_TRACE(c.name);
    ModelFiles m = load_model_dir(data_dir(c.name));
    EXPECT_EQ(m.cfg.d_model, c.d_model);
    EXPECT_EQ(m.cfg.n_layer, c.n_layer);
    EXPECT_EQ(m.cfg.d_state, c.d_state);
    EXPECT_EQ(m.cfg.dt_rank, c.dt_rank);
    EXPECT_EQ(m.cfg.vocab_size, c.vocab);
    EXPECT_EQ(m.cfg.d_intermediate, c.d_intermediate);
    EXPECT_EQ(m.cfg.rms_norm, c.rms);
    EXPECT_EQ(m.cfg.naming, c.naming);
    EXPECT_EQ(ParamLayout(m.cfg).tensors.size(), c.tensors);
    expect_params_equal_file(m, data_dir(c.name) + "/model.safetensors");
  }
  // Values pinned from Python's struct.unpack of hf-tiny/model.safetensors.
  ModelFiles m = load_model_dir(data_dir("hf-tiny"));
  const ParamLayout layout(m.cfg);
  const ParamTensor* D = layout.find("backbone.layers.0.mixer.D");
  const ParamTensor* A = layout.find("backbone.layers.0.mixer.A_log");
  ASSERT_TRUE(D && A);
  EXPECT_EQ(D->shape, (std::vector<int64_t>{64}));
  EXPECT_FLOAT_EQ(m.params[D->offset + 1], 1.1196045875549316f);
  EXPECT_FLOAT_EQ(m.params[A->offset + 8], -0.011101982556283474f);  // row 1, column 0
  EXPECT_FLOAT_EQ(m.params[layout.embedding + 1], 0.1433531492948532f);
}

TEST(ModelDir, SaveLoadRoundTripsBitwise) {
  TempDir tmp;
  for (const char* fixture : {"hf-tiny", "ssm-mlp-layernorm"}) {
    ModelFiles a = load_model_dir(data_dir(fixture));
    for (Naming naming : {Naming::HF, Naming::MambaSSM}) {
      SCOPED_TRACE(std::string(fixture) + (naming == Naming::HF ? " as HF" : " as mamba_ssm"));
      a.cfg.naming = naming;
      std::string dir = tmp.str(std::string(fixture) + (naming == Naming::HF ? "-hf" : "-ssm") + "/sub");
      save_model_dir(dir, a.cfg, a.params.data());  // creates the directory
      ModelFiles b = load_model_dir(dir);
      EXPECT_EQ(b.cfg.naming, naming);
      EXPECT_EQ(b.cfg.layout_hash(), a.cfg.layout_hash());
      EXPECT_EQ(b.cfg.to_json(), a.cfg.to_json());
      ASSERT_EQ(b.params.size(), a.params.size());
      EXPECT_EQ(std::memcmp(b.params.data(), a.params.data(), a.params.size() * 4), 0);

      SafeTensorsFile f(dir + "/model.safetensors");
      EXPECT_EQ(f.metadata().at("format"), "pt");
      const ParamLayout layout(a.cfg);
      size_t expected = layout.tensors.size() + (naming == Naming::MambaSSM ? 1 : 0);
      EXPECT_EQ(f.tensors().size(), expected);
      if (naming == Naming::MambaSSM) {
        EXPECT_NE(f.find("backbone.embedding.weight"), nullptr);
        std::vector<float> head = f.to_float("lm_head.weight");  // the tied head, written out
        ASSERT_EQ(head.size(), size_t(a.cfg.vocab_size) * a.cfg.d_model);
        EXPECT_EQ(std::memcmp(head.data(), a.params.data() + layout.embedding, head.size() * 4), 0);
        EXPECT_TRUE(read_json(dir + "/config.json").contains("d_model"));
      } else {
        EXPECT_NE(f.find("backbone.embeddings.weight"), nullptr);
        EXPECT_EQ(f.find("lm_head.weight"), nullptr);
        json j = read_json(dir + "/config.json");
        EXPECT_EQ(j["model_type"], "mamba");
        EXPECT_EQ(j["architectures"][0], "MambaForCausalLM");
      }
      for (auto& e : fs::directory_iterator(dir))  // no temp files left
        EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
    }
  }
}

// Writes the fixture's tensors as two shards plus model.safetensors.index.json.
static void make_sharded(const std::string& fixture, const std::string& dir) {
  fs::create_directories(dir);
  fs::copy_file(data_dir(fixture) + "/config.json", dir + "/config.json");
  auto all = read_tensors(data_dir(fixture) + "/model.safetensors");
  std::map<std::string, TensorData> s1, s2;
  json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
  size_t i = 0;
  for (auto& [name, t] : all) {
    bool first = i++ < all.size() / 2;
    (first ? s1 : s2)[name] = t;
    index["weight_map"][name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_tensors(dir + "/model-00001-of-00002.safetensors", s1, {{"format", "pt"}});
  write_tensors(dir + "/model-00002-of-00002.safetensors", s2, {{"format", "pt"}});
  write_json(dir + "/model.safetensors.index.json", index);
}

TEST(ModelDir, ShardedLoadsTheSame) {
  TempDir tmp;
  for (const char* fixture : {"hf-small", "ssm-mlp-layernorm"}) {
    std::string dir = tmp.str(fixture);
    make_sharded(fixture, dir);
    ModelFiles a = load_model_dir(data_dir(fixture));
    ModelFiles b = load_model_dir(dir);
    ASSERT_EQ(a.params.size(), b.params.size());
    EXPECT_EQ(std::memcmp(a.params.data(), b.params.data(), a.params.size() * 4), 0) << fixture;
  }
}

TEST(ModelDir, HalfPrecisionWeightsConvert) {
  // A model stored in BF16 (as many published checkpoints are) loads as float.
  TempDir tmp;
  std::string dir = tmp.str("bf16");
  fs::create_directories(dir);
  fs::copy_file(data_dir("hf-tiny") + "/config.json", dir + "/config.json");
  auto all = read_tensors(data_dir("hf-tiny") + "/model.safetensors");
  json h = json::object();
  std::string data;
  for (auto& [name, t] : all) {
    size_t b = data.size();
    for (float x : t.f32) {
      uint32_t bits;
      std::memcpy(&bits, &x, 4);
      uint16_t top = uint16_t(bits >> 16);  // truncation: exact for the check below
      data.append(reinterpret_cast<const char*>(&top), 2);
    }
    h[name] = {{"dtype", "BF16"}, {"shape", t.shape}, {"data_offsets", {b, data.size()}}};
  }
  write_bytes(dir + "/model.safetensors", make_safetensors(h.dump(), data));
  ModelFiles m = load_model_dir(dir);
  const ParamLayout layout(m.cfg);
  for (const ParamTensor& p : layout.tensors) {
    const std::vector<float>& src = all[p.name].f32;
    for (size_t i = 0; i < p.numel; i++) {
      uint32_t bits;
      std::memcpy(&bits, &src[i], 4);
      bits &= 0xffff0000u;
      float want;
      std::memcpy(&want, &bits, 4);
      ASSERT_EQ(m.params[p.offset + i], want) << p.name << "[" << i << "]";
    }
  }
}
