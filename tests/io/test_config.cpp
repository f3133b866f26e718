// config.json in both key sets: parsing, defaults, errors, writing, layout hash.
#include <gtest/gtest.h>

#include "io/model_dir.h"
#include "io_test_util.h"
#include "model/config.h"

using namespace bhasa;
using namespace bhasa::test;
using nlohmann::json;

TEST(Config, HfFixture) {
  ModelConfig c = load_config(data_dir("hf-tiny") + "/config.json");
  EXPECT_EQ(c.naming, Naming::HF);
  EXPECT_EQ(c.d_model, 32);
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.d_state, 8);
  EXPECT_EQ(c.dt_rank, 4);
  EXPECT_EQ(c.vocab_size, 72);
  EXPECT_EQ(c.d_conv, 4);
  EXPECT_EQ(c.expand, 2);
  EXPECT_EQ(c.d_inner(), 64);
  EXPECT_EQ(c.d_intermediate, 0);
  EXPECT_TRUE(c.rms_norm);
  EXPECT_FALSE(c.use_bias);
  EXPECT_TRUE(c.use_conv_bias);
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.initializer_range, 0.1f);
  EXPECT_FLOAT_EQ(c.dt_min, 1e-3f);
  EXPECT_FLOAT_EQ(c.dt_max, 0.1f);
  EXPECT_FLOAT_EQ(c.dt_init_floor, 1e-4f);
}

TEST(Config, MambaSsmFixture) {
  ModelConfig c = load_config(data_dir("ssm-mlp-layernorm") + "/config.json");
  EXPECT_EQ(c.naming, Naming::MambaSSM);
  EXPECT_EQ(c.d_model, 32);
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.d_intermediate, 128);
  EXPECT_FALSE(c.rms_norm);
  EXPECT_EQ(c.d_state, 8);
  EXPECT_EQ(c.dt_rank, 4);
  EXPECT_EQ(c.vocab_size, 72);
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-5f);
}

TEST(Config, AutoDtRankAndVocabPadding) {
  ModelConfig hf = ModelConfig::from_json({{"hidden_size", 40}, {"num_hidden_layers", 1}, {"vocab_size", 50},
                                           {"time_step_rank", "auto"}});
  EXPECT_EQ(hf.dt_rank, 3);        // ceil(40 / 16)
  EXPECT_EQ(hf.vocab_size, 50);    // HF does not pad
  EXPECT_EQ(hf.d_state, 16);       // transformers' defaults
  ModelConfig ssm = ModelConfig::from_json({{"d_model", 768}, {"n_layer", 24}, {"vocab_size", 50277}});
  EXPECT_EQ(ssm.vocab_size, 50280);  // padded up to a multiple of 8, as MambaLMHeadModel does
  EXPECT_EQ(ssm.dt_rank, 48);
  EXPECT_EQ(ssm.d_state, 16);
  EXPECT_TRUE(ssm.rms_norm);
  ModelConfig ssm16 = ModelConfig::from_json(
      {{"d_model", 64}, {"n_layer", 1}, {"vocab_size", 100}, {"pad_vocab_size_multiple", 16}, {"ssm_cfg", {{"dt_rank", "auto"}}}});
  EXPECT_EQ(ssm16.vocab_size, 112);
  EXPECT_EQ(ssm16.dt_rank, 4);
}

TEST(Config, ErrorsNameTheKey) {
  json hf = read_json(data_dir("hf-tiny") + "/config.json");
  json ssm = read_json(data_dir("ssm-mlp-layernorm") + "/config.json");
  auto bad = [](json j, std::initializer_list<std::string> parts) {
    expect_error([&] { ModelConfig::from_json(j); }, parts);
  };
  { json j = hf; j.erase("num_hidden_layers"); bad(j, {"missing", "num_hidden_layers"}); }
  { json j = hf; j["state_size"] = "eight"; bad(j, {"state_size", "integer"}); }
  { json j = hf; j["expand"] = 2.5; bad(j, {"expand", "integer"}); }
  { json j = hf; j["use_conv_bias"] = 1; bad(j, {"use_conv_bias", "true or false"}); }
  { json j = hf; j["time_step_rank"] = "big"; bad(j, {"time_step_rank", "auto"}); }
  { json j = hf; j["tie_word_embeddings"] = false; bad(j, {"tie_word_embeddings"}); }
  { json j = hf; j["use_bias"] = true; bad(j, {"use_bias", "not supported"}); }
  { json j = hf; j["model_type"] = "mamba2"; bad(j, {"model_type", "mamba2"}); }
  { json j = hf; j["hidden_size"] = 0; j["intermediate_size"] = 0; bad(j, {"d_model", "positive"}); }
  { json j = hf; j["intermediate_size"] = 100; bad(j, {"intermediate_size", "100"}); }
  { json j = hf; j["layer_norm_epsilon"] = "tiny"; bad(j, {"layer_norm_epsilon", "number"}); }
  { json j = ssm; j.erase("d_model"); j.erase("vocab_size"); bad(j, {"hidden_size", "d_model"}); }
  { json j = ssm; j.erase("vocab_size"); bad(j, {"missing", "vocab_size"}); }
  { json j = ssm; j["ssm_cfg"]["layer"] = "Mamba2"; bad(j, {"Mamba2", "not implemented"}); }
  { json j = ssm; j["ssm_cfg"]["d_state"] = -4; bad(j, {"d_state", "positive"}); }
  { json j = ssm; j["ssm_cfg"]["d_conv"] = "4"; bad(j, {"ssm_cfg.d_conv", "integer"}); }
  { json j = ssm; j["attn_layer_idx"] = {1}; bad(j, {"attn_layer_idx"}); }
  { json j = ssm; j["tie_embeddings"] = false; bad(j, {"tie_embeddings"}); }
  { json j = ssm; j["d_intermediate"] = -1; bad(j, {"d_intermediate"}); }
  bad(json::array(), {"JSON object"});
}

TEST(Config, HfToJsonMatchesSavePretrained) {
  // Every key transformers wrote for hf-tiny comes back with the same value.
  json fixture = read_json(data_dir("hf-tiny") + "/config.json");
  json ours = ModelConfig::from_json(fixture).to_json();
  for (auto& [k, v] : fixture.items()) {
    if (k == "transformers_version") continue;
    ASSERT_TRUE(ours.contains(k)) << k;
    if (v.is_number_float()) EXPECT_DOUBLE_EQ(ours[k].get<double>(), v.get<double>()) << k;
    else EXPECT_EQ(ours[k], v) << k;
  }
  EXPECT_FALSE(ours.contains("d_intermediate"));
  EXPECT_FALSE(ours.contains("rms_norm"));
}

TEST(Config, ToJsonRoundTripsBothNamings) {
  for (const char* fixture : {"hf-tiny", "hf-small", "ssm-mlp-layernorm"}) {
    ModelConfig c = load_config(data_dir(fixture) + "/config.json");
    for (Naming naming : {Naming::HF, Naming::MambaSSM}) {
      c.naming = naming;
      ModelConfig r = ModelConfig::from_json(c.to_json());
      EXPECT_EQ(r.naming, naming) << fixture;
      EXPECT_EQ(r.d_model, c.d_model);
      EXPECT_EQ(r.n_layer, c.n_layer);
      EXPECT_EQ(r.vocab_size, c.vocab_size);
      EXPECT_EQ(r.d_state, c.d_state);
      EXPECT_EQ(r.d_conv, c.d_conv);
      EXPECT_EQ(r.expand, c.expand);
      EXPECT_EQ(r.dt_rank, c.dt_rank);
      EXPECT_EQ(r.d_intermediate, c.d_intermediate) << fixture;
      EXPECT_EQ(r.rms_norm, c.rms_norm) << fixture;
      EXPECT_EQ(r.norm_eps, c.norm_eps);
      EXPECT_EQ(r.dt_min, c.dt_min);
      EXPECT_EQ(r.dt_max, c.dt_max);
      EXPECT_EQ(r.dt_init_floor, c.dt_init_floor);
      EXPECT_EQ(r.initializer_range, c.initializer_range);
      EXPECT_EQ(r.layout_hash(), c.layout_hash());
    }
  }
  ModelConfig c = load_config(data_dir("ssm-mlp-layernorm") + "/config.json");
  c.naming = Naming::HF;
  json j = c.to_json();
  EXPECT_EQ(j["d_intermediate"], 128);  // our extension keys appear when needed
  EXPECT_EQ(j["rms_norm"], false);
  EXPECT_EQ(j["layer_norm_epsilon"].dump(), "1e-05");  // not 9.999999747378752e-06
}

TEST(Config, LayoutHashIsStableAndSensitive) {
  ModelConfig c = load_config(data_dir("hf-tiny") + "/config.json");
  std::string h = c.layout_hash();
  EXPECT_EQ(h.size(), 16u);
  EXPECT_EQ(h, "4ca62f45cb4090bf") << "the hash of hf-tiny's layout changed; old checkpoints would not resume";
  ModelConfig d = c;
  d.initializer_range = 0.5f;  // not a layout field
  d.naming = Naming::MambaSSM;  // names differ, offsets do not
  EXPECT_EQ(d.layout_hash(), h);
  d = c; d.d_state = 16; EXPECT_NE(d.layout_hash(), h);
  d = c; d.n_layer = 3; EXPECT_NE(d.layout_hash(), h);
  d = c; d.rms_norm = false; EXPECT_NE(d.layout_hash(), h);
  d = c; d.d_intermediate = 8; EXPECT_NE(d.layout_hash(), h);
  d = c; d.vocab_size = 80; EXPECT_NE(d.layout_hash(), h);
}
