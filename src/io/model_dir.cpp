#include "io/model_dir.h"

#include <filesystem>
#include <map>
#include <memory>
#include <set>

#include "core/error.h"
#include "core/files.h"
#include "io/safetensors.h"
#include "model/params.h"

namespace bhasa {

namespace fs = std::filesystem;
using nlohmann::json;

ModelConfig load_config(const std::string& path) {
  std::string text;
  try {
    text = read_text_file(path);
  } catch (const Error&) {
    std::error_code ec;
    if (!fs::exists(path, ec))
      throw Error(path + ": not found; a model directory needs a config.json (Hugging Face MambaConfig "
                         "or state-spaces/mamba keys)");
    throw;
  }
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e999
    throw Error(path + ": invalid JSON: " + e.what());
  }
  try {
    return ModelConfig::from_json(j);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  } catch (const json::exception& e) {  // safety net: a value shape the typed getters missed
    throw Error(path + ": bad value: " + e.what());
  }
}

namespace {

// Opens the weights: model.safetensors, or the shards named by the index.
// Returns name -> (file, tensor) for every tensor in them.
struct Weights {
  std::vector<std::unique_ptr<SafeTensorsFile>> files;
  std::map<std::string, std::pair<const SafeTensorsFile*, const TensorInfo*>> by_name;
};

Weights open_weights(const std::string& dir) {
  Weights w;
  const std::string single = (fs::path(dir) / "model.safetensors").string();
  const std::string index = (fs::path(dir) / "model.safetensors.index.json").string();
  std::error_code ec;
  auto add_file = [&](const std::string& path) -> const SafeTensorsFile* {
    w.files.push_back(std::make_unique<SafeTensorsFile>(path));
    const SafeTensorsFile* f = w.files.back().get();
    for (const TensorInfo& t : f->tensors()) {
      auto [it, fresh] = w.by_name.emplace(t.name, std::make_pair(f, &t));
      if (!fresh)
        throw Error("tensor '" + t.name + "' appears in both " + it->second.first->path() + " and " + path);
    }
    return f;
  };
  if (fs::exists(single, ec)) {
    add_file(single);
    return w;
  }
  if (!fs::exists(index, ec))
    throw Error(dir + ": no model.safetensors (nor model.safetensors.index.json for a sharded model)");
  json j;
  try {
    j = json::parse(read_text_file(index));
  } catch (const json::exception& e) {
    throw Error(index + ": invalid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw Error(index + ": missing the 'weight_map' object");
  std::map<std::string, std::string> weight_map;  // tensor -> shard file name
  std::map<std::string, const SafeTensorsFile*> shards;
  for (auto& [name, v] : j["weight_map"].items()) {
    if (!v.is_string()) throw Error(index + ": weight_map entry for '" + name + "' is not a file name");
    std::string shard = v.get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "..")
      throw Error(index + ": weight_map entry for '" + name + "' names an invalid shard '" + shard + "'");
    weight_map[name] = shard;
    if (!shards.count(shard)) {
      std::string path = (fs::path(dir) / shard).string();
      if (!fs::exists(path, ec))
        throw Error(index + " names shard " + shard + " (for tensor '" + name + "') but " + path + " is missing");
      shards[shard] = add_file(path);
    }
  }
  for (const auto& [name, shard] : weight_map) {
    auto it = w.by_name.find(name);
    if (it == w.by_name.end() || it->second.first != shards[shard])
      throw Error(index + " maps tensor '" + name + "' to " + shard + " but that shard has no tensor '" + name + "'");
  }
  return w;
}

}  // namespace

ModelFiles load_model_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(dir + ": not a directory (expected a model directory with config.json and model.safetensors)");
  ModelFiles m;
  m.cfg = load_config((fs::path(dir) / "config.json").string());
  const ParamLayout layout(m.cfg);
  m.params.assign(layout.total, 0.0f);
  Weights w = open_weights(dir);

  std::set<std::string> used;
  for (const ParamTensor& p : layout.tensors) {
    auto it = w.by_name.find(p.name);
    if (it == w.by_name.end())
      throw Error(dir + ": tensor '" + p.name + "' is missing from the weights but config.json implies it "
                        "(check n_layer / num_hidden_layers, d_intermediate, rms_norm)");
    const auto [file, t] = it->second;
    if (t->shape != p.shape) {
      std::string hint = p.offset == layout.embedding
                             ? " (vocab_size padded to a multiple of pad_vocab_size_multiple = " +
                                   std::to_string(m.cfg.pad_vocab_size_multiple) + " for mamba_ssm configs)"
                             : "";
      throw Error(file->path() + ": tensor '" + p.name + "' has shape " + shape_str(t->shape) +
                  " but config.json implies " + shape_str(p.shape) + hint);
    }
    if (!dtype_is_float(t->dtype))
      throw Error(file->path() + ": tensor '" + p.name + "' has integer dtype " + dtype_name(t->dtype) +
                  "; model weights must be F32, F16, BF16 or F64");
    file->to_float(*t, m.params.data() + p.offset);
    used.insert(p.name);
  }
  // The tied LM head may be stored (mamba_ssm always, HF sometimes): its values are the
  // embedding's, but a wrong shape means the file is not what config.json says.
  const std::string head = "lm_head.weight";
  if (!layout.find(head)) {
    auto it = w.by_name.find(head);
    if (it != w.by_name.end()) {
      std::vector<int64_t> want = {m.cfg.vocab_size, m.cfg.d_model};
      if (it->second.second->shape != want)
        throw Error(it->second.first->path() + ": tensor 'lm_head.weight' has shape " +
                    shape_str(it->second.second->shape) + " but config.json implies " + shape_str(want) +
                    " (tied to the embedding)");
      used.insert(head);
    }
  }
  for (const auto& [name, ft] : w.by_name)
    if (!used.count(name))
      throw Error(ft.first->path() + ": unexpected tensor '" + name + "' that config.json does not account for "
                  "(check n_layer / num_hidden_layers, d_intermediate, rms_norm, and that it is a Mamba-1 model)");
  return m;
}

void save_model_dir(const std::string& dir, const ModelConfig& cfg, const float* params) {
  cfg.validate();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create model directory " + dir + ": " + ec.message());
  const ParamLayout layout(cfg);
  std::vector<TensorToWrite> list;
  for (const ParamTensor& p : layout.tensors) list.push_back({p.name, DType::F32, p.shape, params + p.offset});
  if (cfg.naming == Naming::MambaSSM && !layout.find("lm_head.weight"))
    list.push_back({"lm_head.weight", DType::F32, {cfg.vocab_size, cfg.d_model}, params + layout.embedding});
  atomic_write_file((fs::path(dir) / "config.json").string(), cfg.to_json().dump(2) + "\n");
  write_safetensors((fs::path(dir) / "model.safetensors").string(), list, {{"format", "pt"}});
}

}  // namespace bhasa
