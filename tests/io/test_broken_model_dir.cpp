// Broken model directories, built from the fixtures: each must be a bhasa::Error whose
// message names the problem, never a crash or garbage weights.
#include <gtest/gtest.h>

#include "io/model_dir.h"
#include "io/safetensors.h"
#include "io_test_util.h"

using namespace bhasa;
using namespace bhasa::test;
using nlohmann::json;

namespace {

struct Broken : ::testing::Test {
  TempDir tmp;
  std::string dir;
  void SetUp() override { use("hf-tiny"); }
  void use(const std::string& fixture) {
    dir = tmp.str(fixture);
    copy_model_dir(fixture, dir);
  }
  std::string weights() const { return dir + "/model.safetensors"; }
  std::string config() const { return dir + "/config.json"; }
  void edit_config(const std::function<void(json&)>& fn) {
    json j = read_json(config());
    fn(j);
    write_json(config(), j);
  }
  // Rewrites the weights through read_tensors/write_tensors with `fn` applied.
  void edit_tensors(const std::function<void(std::map<std::string, TensorData>&)>& fn) {
    auto t = read_tensors(weights());
    fn(t);
    write_tensors(weights(), t);
  }
  void expect_load_error(std::initializer_list<std::string> parts) {
    expect_error([&] { load_model_dir(dir); }, parts);
  }
};

}  // namespace

TEST_F(Broken, FixtureCopyLoads) { EXPECT_NO_THROW(load_model_dir(dir)); }

TEST_F(Broken, MissingTensor) {
  edit_tensors([](auto& t) { t.erase("backbone.layers.1.mixer.D"); });
  expect_load_error({"'backbone.layers.1.mixer.D'", "missing"});
}

TEST_F(Broken, WrongShape) {
  edit_tensors([](auto& t) {
    TensorData& a = t.at("backbone.layers.0.mixer.A_log");
    a.shape = {64, 7};
    a.f32.resize(64 * 7);
  });
  expect_load_error({"'backbone.layers.0.mixer.A_log'", "has shape [64, 7] but config.json implies [64, 8]"});
}

TEST_F(Broken, TruncatedFile) {
  std::string bytes = read_bytes(weights());
  write_bytes(weights(), bytes.substr(0, bytes.size() - 1000));
  expect_load_error({"model.safetensors", "truncated"});
}

TEST_F(Broken, HeaderLengthPastEnd) {
  std::string bytes = read_bytes(weights());
  uint64_t n = bytes.size();  // claims more header than the whole file
  std::memcpy(bytes.data(), &n, 8);
  write_bytes(weights(), bytes);
  expect_load_error({"model.safetensors", "header length", "runs past the end"});
}

TEST_F(Broken, UnknownDtype) {
  edit_header(weights(), [](json& h) { h["backbone.norm_f.weight"]["dtype"] = "F8_E5M2"; });
  expect_load_error({"'backbone.norm_f.weight'", "unsupported dtype 'F8_E5M2'"});
}

TEST_F(Broken, CorruptHeader) {
  std::string bytes = read_bytes(weights());
  bytes[8] = '[';  // the header's opening brace
  bytes[9] = '}';
  write_bytes(weights(), bytes);
  expect_load_error({"model.safetensors", "not valid JSON"});
}

TEST_F(Broken, OverlappingOffsets) {
  edit_header(weights(), [](json& h) {
    h["backbone.layers.0.mixer.D"]["data_offsets"] = h["backbone.layers.0.mixer.A_log"]["data_offsets"];
    h["backbone.layers.0.mixer.D"]["shape"] = h["backbone.layers.0.mixer.A_log"]["shape"];
  });
  expect_load_error({"overlap", "backbone.layers.0.mixer."});
}

TEST_F(Broken, IntegerWeights) {
  edit_tensors([](auto& t) {
    TensorData& d = t.at("backbone.layers.0.mixer.D");
    d.dtype = DType::I64;
    d.i64.assign(d.f32.size(), 1);
    d.f32.clear();
  });
  expect_load_error({"'backbone.layers.0.mixer.D'", "integer dtype I64"});
}

TEST_F(Broken, ConfigMissingKey) {
  edit_config([](json& j) { j.erase("num_hidden_layers"); });
  expect_load_error({"config.json", "missing", "'num_hidden_layers'"});
  edit_config([](json& j) { j.erase("hidden_size"); });
  expect_load_error({"config.json", "hidden_size"});
}

TEST_F(Broken, ConfigWrongType) {
  edit_config([](json& j) { j["num_hidden_layers"] = "2"; });
  expect_load_error({"config.json", "num_hidden_layers", "integer"});
}

TEST_F(Broken, ConfigMoreLayersThanFile) {
  edit_config([](json& j) { j["num_hidden_layers"] = 3; });
  expect_load_error({"'backbone.layers.2.", "missing"});
}

TEST_F(Broken, ConfigFewerLayersThanFile) {
  edit_config([](json& j) { j["num_hidden_layers"] = 1; });
  expect_load_error({"unexpected tensor 'backbone.layers.1.", "n_layer"});
}

TEST_F(Broken, ConfigStateSizeContradictsFile) {
  edit_config([](json& j) { j["state_size"] = 16; });
  // x_proj (dt_rank + 2*d_state, d_inner) is the first tensor in file order that d_state shapes.
  expect_load_error({"'backbone.layers.0.mixer.x_proj.weight'", "has shape [20, 64] but config.json implies [36, 64]"});
}

TEST_F(Broken, ConfigVocabContradictsFile) {
  edit_config([](json& j) { j["vocab_size"] = 80; });
  expect_load_error({"'backbone.embeddings.weight'", "[72, 32]", "[80, 32]"});
}

TEST_F(Broken, InvalidJsonConfig) {
  write_bytes(config(), "{\"hidden_size\": 32,");
  expect_load_error({"config.json", "invalid JSON"});
}

TEST_F(Broken, MissingConfig) {
  fs::remove(config());
  expect_load_error({"config.json", "not found"});
}

TEST_F(Broken, MissingWeights) {
  fs::remove(weights());
  expect_load_error({"no model.safetensors"});
}

TEST_F(Broken, NotADirectory) {
  expect_error([&] { load_model_dir(tmp.str("nowhere")); }, {"nowhere", "not a directory"});
}

// Sharded: model.safetensors replaced by two shards and an index.
struct BrokenSharded : Broken {
  void SetUp() override {
    Broken::SetUp();
    auto all = read_tensors(weights());
    std::map<std::string, TensorData> s1, s2;
    json index = {{"weight_map", json::object()}};
    for (auto& [name, t] : all) {
      bool first = name.find("layers.1.") == std::string::npos;
      (first ? s1 : s2)[name] = t;
      index["weight_map"][name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    }
    write_tensors(dir + "/model-00001-of-00002.safetensors", s1);
    write_tensors(dir + "/model-00002-of-00002.safetensors", s2);
    write_json(dir + "/model.safetensors.index.json", index);
    fs::remove(weights());
  }
  void edit_index(const std::function<void(json&)>& fn) {
    json j = read_json(dir + "/model.safetensors.index.json");
    fn(j);
    write_json(dir + "/model.safetensors.index.json", j);
  }
};

TEST_F(BrokenSharded, LoadsWhenIntact) { EXPECT_NO_THROW(load_model_dir(dir)); }

TEST_F(BrokenSharded, MissingShard) {
  fs::remove(dir + "/model-00002-of-00002.safetensors");
  expect_load_error({"model-00002-of-00002.safetensors", "missing"});
}

TEST_F(BrokenSharded, IndexNamesMissingTensor) {
  edit_index([](json& j) { j["weight_map"]["backbone.layers.7.mixer.D"] = "model-00001-of-00002.safetensors"; });
  expect_load_error({"index.json", "'backbone.layers.7.mixer.D'", "has no tensor"});
}

TEST_F(BrokenSharded, IndexWithoutWeightMap) {
  write_json(dir + "/model.safetensors.index.json", json{{"metadata", json::object()}});
  expect_load_error({"index.json", "weight_map"});
}

TEST_F(BrokenSharded, TruncatedShard) {
  std::string p = dir + "/model-00001-of-00002.safetensors";
  std::string bytes = read_bytes(p);
  write_bytes(p, bytes.substr(0, bytes.size() / 2));
  expect_load_error({"model-00001-of-00002.safetensors", "truncated"});
}

// mamba_ssm naming.
struct BrokenSsm : Broken {
  void SetUp() override { use("ssm-mlp-layernorm"); }
};

TEST_F(BrokenSsm, LmHeadWrongShape) {
  edit_tensors([](auto& t) {
    TensorData& h = t.at("lm_head.weight");
    h.shape = {64, 32};
    h.f32.resize(64 * 32);
  });
  expect_load_error({"'lm_head.weight'", "[64, 32]", "[72, 32]"});
}

TEST_F(BrokenSsm, LmHeadMayBeOmitted) {
  // A safetensors conversion that dropped the tied duplicate still loads.
  edit_tensors([](auto& t) { t.erase("lm_head.weight"); });
  EXPECT_EQ(load_model_dir(dir).cfg.vocab_size, 72);
}

TEST_F(BrokenSsm, NoMlpInConfig) {
  edit_config([](json& j) { j["d_intermediate"] = 0; });
  expect_load_error({"unexpected tensor 'backbone.layers.0.mlp.fc1.weight'", "d_intermediate"});
}

TEST_F(BrokenSsm, RmsNormInConfig) {
  edit_config([](json& j) { j["rms_norm"] = true; });
  expect_load_error({"unexpected tensor", ".bias'", "rms_norm"});
}

TEST_F(BrokenSsm, Mamba2) {
  edit_config([](json& j) { j["ssm_cfg"]["layer"] = "Mamba2"; });
  expect_load_error({"config.json", "Mamba2"});
}

TEST_F(BrokenSsm, VocabPaddedPastFile) {
  // 73 pads to 80 rows, but the file has 72: the message explains the padding.
  edit_config([](json& j) { j["vocab_size"] = 73; });
  expect_load_error({"'backbone.embedding.weight'", "[80, 32]", "pad_vocab_size_multiple"});
  edit_config([](json& j) { j["vocab_size"] = 70; });  // pads to 72: loads
  EXPECT_EQ(load_model_dir(dir).cfg.vocab_size, 72);
}

// Every truncation and many single-byte corruptions of a real file: an Error or a
// successful load, never a crash (run under the sanitizer build to mean something).
TEST_F(Broken, TruncationsAndByteFlipsNeverCrash) {
  const std::string good = read_bytes(weights());
  uint64_t header_len;
  std::memcpy(&header_len, good.data(), 8);
  for (size_t cut = 0; cut < good.size(); cut += 211) {
    write_bytes(weights(), good.substr(0, cut));
    expect_error([&] { load_model_dir(dir); }, {"model.safetensors"});
  }
  uint32_t rng = 12345;
  int loaded = 0, errors = 0;
  for (int trial = 0; trial < 300; trial++) {
    std::string bad = good;
    rng = rng * 1664525u + 1013904223u;
    size_t pos = (rng >> 8) % (8 + header_len);  // the length field or the JSON header
    rng = rng * 1664525u + 1013904223u;
    bad[pos] = char(rng >> 24);
    write_bytes(weights(), bad);
    try {
      load_model_dir(dir);
      loaded++;
    } catch (const bhasa::Error&) {
      errors++;
    }
  }
  EXPECT_EQ(loaded + errors, 300);
  EXPECT_GT(errors, 100);
}
