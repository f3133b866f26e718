#include "train/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/files.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace bhasa {

nlohmann::json TrainerState::to_json() const {
  return {{"step", step},
          {"epoch", epoch},
          {"steps_per_epoch", steps_per_epoch},
          {"tokens_seen", tokens_seen},
          {"rng_mt19937_64", rng},
          {"schedule", {{"lr", lr}, {"min_lr", min_lr}, {"warmup_steps", warmup_steps}, {"total_steps", total_steps}}},
          {"config_hash", config_hash},
          {"data_hash", data_hash},
          {"best_val_loss", best_val_loss}, {"train_seconds", train_seconds}};
}

TrainerState TrainerState::from_json(const nlohmann::json& j, const std::string& source) {
  try {
    TrainerState s;
    s.step = j.at("step").get<int64_t>();
    s.epoch = j.at("epoch").get<int64_t>();
    s.steps_per_epoch = j.at("steps_per_epoch").get<int64_t>();
    s.tokens_seen = j.at("tokens_seen").get<int64_t>();
    s.rng = j.at("rng_mt19937_64").get<std::string>();
    const auto& sch = j.at("schedule");
    s.lr = sch.at("lr").get<float>();
    s.min_lr = sch.at("min_lr").get<float>();
    s.warmup_steps = sch.at("warmup_steps").get<int64_t>();
    s.total_steps = sch.at("total_steps").get<int64_t>();
    s.config_hash = j.at("config_hash").get<std::string>();
    s.data_hash = j.at("data_hash").get<std::string>();
    s.best_val_loss = j.value("best_val_loss", 0.0);
    s.train_seconds = j.value("train_seconds", 0.0);
    return s;
  } catch (const nlohmann::json::exception& e) {
    throw Error(source + ": damaged trainer state (" + e.what() + "); start over with --restart");
  }
}

void fsync_tree(const std::string& dir) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error("cannot open " + entry.path().string() + " to flush it: " + std::strerror(errno));
    int rc = ::fsync(fd);
    ::close(fd);
    if (rc != 0) throw Error("cannot flush " + entry.path().string() + ": " + std::strerror(errno));
  }
  fsync_dir(dir);
}

void swap_dir_into_place(const std::string& tmp, const std::string& dest) {
  const std::string parent = fs::path(dest).parent_path().string();
  std::error_code ec;
  if (!fs::exists(dest, ec)) {
    if (::rename(tmp.c_str(), dest.c_str()) != 0)
      throw Error("cannot move " + tmp + " to " + dest + ": " + std::strerror(errno));
    fsync_dir(parent);
    return;
  }
  // One atomic step: tmp becomes dest and the old dest now sits at tmp.
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dest.c_str(), RENAME_EXCHANGE) == 0) {
    fsync_dir(parent);
    fs::remove_all(tmp, ec);
    return;
  }
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
    throw Error("cannot swap " + tmp + " into " + dest + ": " + std::strerror(errno));
  // Filesystems without RENAME_EXCHANGE: two renames. In between, dest is missing
  // and dest.old is complete; recover_checkpoint_dirs puts it back after a crash.
  const std::string old = dest + ".old";
  fs::remove_all(old, ec);
  if (::rename(dest.c_str(), old.c_str()) != 0)
    throw Error("cannot move " + dest + " aside: " + std::strerror(errno));
  if (::rename(tmp.c_str(), dest.c_str()) != 0)
    throw Error("cannot move " + tmp + " to " + dest + ": " + std::strerror(errno));
  fsync_dir(parent);
  fs::remove_all(old, ec);
}

void recover_checkpoint_dirs(const std::string& parent) {
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) return;
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(parent, ec)) entries.push_back(e.path());
  for (const auto& p : entries) {
    const std::string name = p.filename().string();
    if (name.rfind(".tmp-", 0) == 0) {
      fs::remove_all(p, ec);
    } else if (name.size() > 4 && name.compare(name.size() - 4, 4, ".old") == 0) {
      const fs::path dest = p.parent_path() / name.substr(0, name.size() - 4);
      if (!fs::exists(dest, ec)) fs::rename(p, dest, ec);
      else fs::remove_all(p, ec);
    }
  }
}

void prune_epoch_dirs(const std::string& parent, int keep) {
  if (keep <= 0) return;
  std::error_code ec;
  std::vector<std::pair<long, fs::path>> epochs;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("epoch-", 0) != 0) continue;
    char* end = nullptr;
    long n = std::strtol(name.c_str() + 6, &end, 10);
    if (end && *end == '\0') epochs.push_back({n, e.path()});
  }
  std::sort(epochs.begin(), epochs.end());
  for (size_t i = 0; i + keep < epochs.size(); ++i) fs::remove_all(epochs[i].second, ec);
}

void save_checkpoint(const std::string& dest, const ModelConfig& cfg, const float* params,
                     const Tokenizer& tokenizer, const std::vector<float>& m, const std::vector<float>& v,
                     const TrainerState* state) {
  const fs::path dest_path(dest);
  const std::string parent = dest_path.parent_path().string();
  std::error_code ec;
  fs::create_directories(parent, ec);
  check(!ec, "cannot create " + parent + ": " + ec.message());
  const std::string tmp = parent + "/.tmp-" + dest_path.filename().string() + "-" + std::to_string(::getpid());
  fs::remove_all(tmp, ec);

  save_model_dir(tmp, cfg, params);
  tokenizer.save(tmp + "/tokenizer.json");
  if (!m.empty()) {
    const int64_t n = static_cast<int64_t>(m.size());
    write_safetensors(tmp + "/optimizer.safetensors",
                      {{"m", DType::F32, {n}, m.data()}, {"v", DType::F32, {n}, v.data()}},
                      {{"format", "bhasa AdamW moments, same flat order as the parameters"}});
  }
  if (state) atomic_write_file(tmp + "/trainer_state.json", state->to_json().dump(2) + "\n");
  fsync_tree(tmp);
  swap_dir_into_place(tmp, dest);
}

Checkpoint load_checkpoint(const std::string& dir) {
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors",
                        "trainer_state.json"}) {
    std::error_code ec;
    check(fs::exists(dir + "/" + f, ec),
          dir + ": not a complete training checkpoint (" + f + " is missing); start over with --restart");
  }
  Checkpoint c;
  c.model = load_model_dir(dir);
  c.tokenizer = load_tokenizer(dir + "/tokenizer.json");
  {
    SafeTensorsFile opt(dir + "/optimizer.safetensors");
    c.m = opt.to_float("m");
    c.v = opt.to_float("v");
    check(c.m.size() == c.model.params.size() && c.v.size() == c.model.params.size(),
          dir + "/optimizer.safetensors: the moments do not match the model's parameter count");
  }
  const std::string state_path = dir + "/trainer_state.json";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(state_path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(state_path + ": not valid JSON (" + e.what() + "); start over with --restart");
  }
  c.state = TrainerState::from_json(j, state_path);
  return c;
}

}  // namespace bhasa
