// config.json in either key set. HF MambaConfig is what transformers' save_pretrained
// writes; mamba_ssm's is MambaConfig of state-spaces/mamba (mamba_ssm/models/config_mamba.py).
#include "model/config.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"

namespace bhasa {

using nlohmann::json;

namespace {

// Typed access to one key of a JSON object, with an Error that names the key.
// `where` is the key's parent for messages ("" or "ssm_cfg.").
bool has(const json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

int get_int(const json& j, const char* key, const std::string& where) {
  const json& v = j.at(key);
  if (v.is_number_integer()) {
    int64_t x = v.get<int64_t>();
    check(x >= INT32_MIN && x <= INT32_MAX, "config key '" + where + key + "' is out of range");
    return static_cast<int>(x);
  }
  if (v.is_number_float()) {  // 2.0 is fine, 2.5 is not
    double x = v.get<double>();
    if (std::floor(x) == x && std::abs(x) < 2e9) return static_cast<int>(x);
  }
  throw Error("config key '" + where + key + "' must be an integer, got " + v.dump());
}
int opt_int(const json& j, const char* key, int dflt, const std::string& where = "") {
  return has(j, key) ? get_int(j, key, where) : dflt;
}
int req_int(const json& j, const char* key, const std::string& where = "") {
  if (!has(j, key)) throw Error("config is missing the required key '" + where + key + "'");
  return get_int(j, key, where);
}
float opt_float(const json& j, const char* key, float dflt, const std::string& where = "") {
  if (!has(j, key)) return dflt;
  const json& v = j.at(key);
  if (!v.is_number()) throw Error("config key '" + where + key + "' must be a number, got " + v.dump());
  return static_cast<float>(v.get<double>());
}
bool opt_bool(const json& j, const char* key, bool dflt, const std::string& where = "") {
  if (!has(j, key)) return dflt;
  const json& v = j.at(key);
  if (!v.is_boolean()) throw Error("config key '" + where + key + "' must be true or false, got " + v.dump());
  return v.get<bool>();
}
// dt_rank / time_step_rank: "auto" or a positive integer. Returns 0 for auto.
int opt_rank(const json& j, const char* key, const std::string& where = "") {
  if (!has(j, key)) return 0;
  const json& v = j.at(key);
  if (v.is_string()) {
    if (v.get<std::string>() == "auto") return 0;
    throw Error("config key '" + where + key + "' must be \"auto\" or an integer, got " + v.dump());
  }
  return get_int(j, key, where);
}
int auto_dt_rank(int d_model) { return (d_model + 15) / 16; }  // math.ceil(d_model / 16)

// The shortest decimal that reads back as this float, as a double: 1e-5f is written
// as 1e-05, not 9.999999747378752e-06.
double clean(float f) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, f);
  *end = '\0';
  return std::strtod(buf, nullptr);
}

ModelConfig from_hf(const json& j) {
  ModelConfig c;
  c.naming = Naming::HF;
  if (has(j, "model_type")) {
    const json& mt = j.at("model_type");
    if (!mt.is_string() || mt.get<std::string>() != "mamba")
      throw Error("config model_type is " + mt.dump() +
                  "; only \"mamba\" (Mamba-1) is supported");
  }
  c.d_model = req_int(j, "hidden_size");
  c.n_layer = req_int(j, "num_hidden_layers");
  c.vocab_size = req_int(j, "vocab_size");
  c.d_state = opt_int(j, "state_size", 16);
  c.expand = opt_int(j, "expand", 2);
  c.d_conv = opt_int(j, "conv_kernel", 4);
  c.dt_rank = opt_rank(j, "time_step_rank");
  if (c.dt_rank == 0) c.dt_rank = auto_dt_rank(c.d_model);
  c.use_bias = opt_bool(j, "use_bias", false);
  c.use_conv_bias = opt_bool(j, "use_conv_bias", true);
  c.norm_eps = opt_float(j, "layer_norm_epsilon", 1e-5f);
  if (!opt_bool(j, "tie_word_embeddings", true))
    throw Error("config has tie_word_embeddings: false; only models whose LM head is tied "
                "to the embedding are supported");
  c.dt_min = opt_float(j, "time_step_min", c.dt_min);
  c.dt_max = opt_float(j, "time_step_max", c.dt_max);
  c.dt_init_floor = opt_float(j, "time_step_floor", c.dt_init_floor);
  c.dt_scale = opt_float(j, "time_step_scale", c.dt_scale);
  c.initializer_range = opt_float(j, "initializer_range", c.initializer_range);
  // HF Mamba is RMSNorm without MLP; ours extends it with these two keys.
  c.d_intermediate = opt_int(j, "d_intermediate", 0);
  c.rms_norm = opt_bool(j, "rms_norm", true);
  // HF ignores pad_vocab_size_multiple for the embedding size; keep it for to_json only.
  c.pad_vocab_size_multiple = opt_int(j, "pad_vocab_size_multiple", 8);
  if (has(j, "intermediate_size")) {
    int inter = get_int(j, "intermediate_size", "");
    check(inter == c.expand * c.d_model,
          "config intermediate_size " + std::to_string(inter) + " contradicts expand * hidden_size = " +
              std::to_string(c.expand * c.d_model));
  }
  return c;
}

ModelConfig from_mamba_ssm(const json& j) {
  ModelConfig c;
  c.naming = Naming::MambaSSM;
  c.d_model = req_int(j, "d_model");
  c.n_layer = req_int(j, "n_layer");
  int vocab = req_int(j, "vocab_size");
  c.d_intermediate = opt_int(j, "d_intermediate", 0);
  c.rms_norm = opt_bool(j, "rms_norm", true);
  c.norm_eps = opt_float(j, "norm_epsilon", 1e-5f);
  c.pad_vocab_size_multiple = opt_int(j, "pad_vocab_size_multiple", 8);
  check(c.pad_vocab_size_multiple > 0, "config pad_vocab_size_multiple must be positive");
  // MambaLMHeadModel pads the embedding rows up to the multiple.
  int m = c.pad_vocab_size_multiple;
  c.vocab_size = vocab % m == 0 ? vocab : vocab + (m - vocab % m);
  if (!opt_bool(j, "tie_embeddings", true))
    throw Error("config has tie_embeddings: false; only models whose LM head is tied "
                "to the embedding are supported");
  if (has(j, "attn_layer_idx")) {
    const json& a = j.at("attn_layer_idx");
    if (!a.is_array() || !a.empty())
      throw Error("config attn_layer_idx is " + a.dump() +
                  "; hybrid attention layers are not supported (it must be empty)");
  }
  json ssm = json::object();
  if (has(j, "ssm_cfg")) {
    ssm = j.at("ssm_cfg");
    if (!ssm.is_object()) throw Error("config key 'ssm_cfg' must be an object, got " + ssm.dump());
  }
  const std::string w = "ssm_cfg.";
  if (has(ssm, "layer")) {
    const json& layer = ssm.at("layer");
    if (!layer.is_string() || layer.get<std::string>() != "Mamba1")
      throw Error("config ssm_cfg.layer is " + layer.dump() +
                  "; only \"Mamba1\" is supported (Mamba2 is not implemented)");
  }
  c.d_state = opt_int(ssm, "d_state", 16, w);
  c.d_conv = opt_int(ssm, "d_conv", 4, w);
  c.expand = opt_int(ssm, "expand", 2, w);
  c.dt_rank = opt_rank(ssm, "dt_rank", w);
  if (c.dt_rank == 0) c.dt_rank = auto_dt_rank(c.d_model);
  c.use_bias = opt_bool(ssm, "bias", false, w);
  c.use_conv_bias = opt_bool(ssm, "conv_bias", true, w);
  c.dt_min = opt_float(ssm, "dt_min", c.dt_min, w);
  c.dt_max = opt_float(ssm, "dt_max", c.dt_max, w);
  c.dt_init_floor = opt_float(ssm, "dt_init_floor", c.dt_init_floor, w);
  c.dt_scale = opt_float(ssm, "dt_scale", c.dt_scale, w);
  c.initializer_range = opt_float(j, "initializer_range", c.initializer_range);
  return c;
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j) {
  if (!j.is_object()) throw Error("config must be a JSON object, got " + std::string(j.type_name()));
  ModelConfig c;
  if (j.contains("hidden_size")) c = from_hf(j);
  else if (j.contains("d_model")) c = from_mamba_ssm(j);
  else
    throw Error("config has neither 'hidden_size' (Hugging Face MambaConfig) nor 'd_model' "
                "(state-spaces/mamba); it is not a Mamba config");
  c.validate();
  return c;
}

json ModelConfig::to_json() const {
  json j;
  if (naming == Naming::HF) {
    // The keys transformers' MambaConfig.save_pretrained writes (5.x), in its order.
    j["architectures"] = json::array({"MambaForCausalLM"});
    j["bos_token_id"] = 0;
    j["conv_kernel"] = d_conv;
    j["dtype"] = "float32";
    j["eos_token_id"] = 0;
    j["expand"] = expand;
    j["hidden_act"] = "silu";
    j["hidden_size"] = d_model;
    j["initializer_range"] = clean(initializer_range);
    j["intermediate_size"] = d_inner();
    j["layer_norm_epsilon"] = clean(norm_eps);
    j["model_type"] = "mamba";
    j["num_hidden_layers"] = n_layer;
    j["pad_token_id"] = 0;
    j["rescale_prenorm_residual"] = false;
    j["residual_in_fp32"] = true;
    j["state_size"] = d_state;
    j["tie_word_embeddings"] = true;
    j["time_step_floor"] = clean(dt_init_floor);
    j["time_step_init_scheme"] = "random";
    j["time_step_max"] = clean(dt_max);
    j["time_step_min"] = clean(dt_min);
    j["time_step_rank"] = dt_rank;
    j["time_step_scale"] = clean(dt_scale);
    j["use_associative_scan"] = true;
    j["use_bias"] = use_bias;
    j["use_cache"] = true;
    j["use_conv_bias"] = use_conv_bias;
    j["use_mambapy"] = false;
    j["vocab_size"] = vocab_size;
    // Our extensions, only where the model is not plain HF Mamba (transformers ignores them).
    if (d_intermediate != 0) j["d_intermediate"] = d_intermediate;
    if (!rms_norm) j["rms_norm"] = false;
  } else {
    j["d_model"] = d_model;
    j["d_intermediate"] = d_intermediate;
    j["n_layer"] = n_layer;
    j["vocab_size"] = vocab_size;
    json ssm;
    ssm["layer"] = "Mamba1";
    ssm["d_state"] = d_state;
    ssm["d_conv"] = d_conv;
    ssm["expand"] = expand;
    ssm["dt_rank"] = dt_rank;
    if (use_bias) ssm["bias"] = true;
    if (!use_conv_bias) ssm["conv_bias"] = false;
    ssm["dt_min"] = clean(dt_min);
    ssm["dt_max"] = clean(dt_max);
    ssm["dt_init_floor"] = clean(dt_init_floor);
    ssm["dt_scale"] = clean(dt_scale);
    j["ssm_cfg"] = ssm;
    j["attn_layer_idx"] = json::array();
    j["attn_cfg"] = json::object();
    j["rms_norm"] = rms_norm;
    j["norm_epsilon"] = clean(norm_eps);
    j["residual_in_fp32"] = true;
    j["fused_add_norm"] = false;
    // vocab_size is already the row count; a multiple that does not divide it (an
    // unpadded HF vocab) would make readers pad it again, so write 1 then.
    const int m = pad_vocab_size_multiple > 0 ? pad_vocab_size_multiple : 1;
    j["pad_vocab_size_multiple"] = vocab_size % m == 0 ? m : 1;
    j["tie_embeddings"] = true;
    j["initializer_range"] = clean(initializer_range);
  }
  return j;
}

void ModelConfig::validate() const {
  auto positive = [](int v, const char* name) {
    check(v > 0, std::string("config: ") + name + " must be positive, got " + std::to_string(v));
  };
  positive(d_model, "d_model (hidden_size)");
  positive(n_layer, "n_layer (num_hidden_layers)");
  positive(vocab_size, "vocab_size");
  positive(d_state, "d_state (state_size)");
  positive(d_conv, "d_conv (conv_kernel)");
  positive(expand, "expand");
  positive(dt_rank, "dt_rank (time_step_rank)");
  positive(pad_vocab_size_multiple, "pad_vocab_size_multiple");
  check(d_intermediate >= 0,
        "config: d_intermediate must be 0 (no MLP) or positive, got " + std::to_string(d_intermediate));
  check(std::isfinite(norm_eps) && norm_eps > 0,
        "config: the norm epsilon must be a positive number, got " + std::to_string(norm_eps));
  check(!use_bias, "config: use_bias (bias in in_proj/out_proj) is not supported; set it to false");
  // Sizes whose products must fit the int arithmetic of the kernels.
  check(int64_t(expand) * d_model < (int64_t(1) << 30) && int64_t(vocab_size) * d_model < (int64_t(1) << 40),
        "config: sizes are unreasonably large (d_model " + std::to_string(d_model) + ", expand " +
            std::to_string(expand) + ", vocab_size " + std::to_string(vocab_size) + ")");
  check(dt_min > 0 && dt_max >= dt_min, "config: time_step_min/max (dt_min/dt_max) must satisfy 0 < min <= max");
}

std::string ModelConfig::layout_hash() const {
  // FNV-1a 64 over a canonical text of the layout-defining fields.
  std::string s = "mamba1;d_model=" + std::to_string(d_model) + ";n_layer=" + std::to_string(n_layer) +
                  ";vocab=" + std::to_string(vocab_size) + ";d_state=" + std::to_string(d_state) +
                  ";d_conv=" + std::to_string(d_conv) + ";expand=" + std::to_string(expand) +
                  ";dt_rank=" + std::to_string(dt_rank) + ";d_intermediate=" + std::to_string(d_intermediate) +
                  ";rms_norm=" + std::to_string(rms_norm) + ";use_bias=" + std::to_string(use_bias) +
                  ";use_conv_bias=" + std::to_string(use_conv_bias);  // naming does not move offsets
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 0x100000001b3ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace bhasa
