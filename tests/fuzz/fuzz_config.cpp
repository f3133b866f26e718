// libFuzzer target: config.json, both through ModelConfig::from_json on parsed
// JSON (either key set) and through load_config on a file. Errors must be
// bhasa::Error; a config that parses must survive validate() and to_json() in
// both namings, and reading its own to_json() back must give the same layout.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/model_dir.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded()) {
    try {
      bhasa::ModelConfig c = bhasa::ModelConfig::from_json(j);
      c.validate();
      for (bhasa::Naming n : {bhasa::Naming::HF, bhasa::Naming::MambaSSM}) {
        c.naming = n;
        bhasa::ModelConfig back = bhasa::ModelConfig::from_json(c.to_json());
        back.validate();
        if (back.layout_hash() != c.layout_hash()) __builtin_trap();  // to_json lost a layout field
      }
    } catch (const bhasa::Error&) {
    }
  }
  static const std::string path = "/dev/shm/bhasa-fuzz-config-" + std::to_string(::getpid()) + ".json";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    (void)bhasa::load_config(path);
  } catch (const bhasa::Error&) {
  }
  return 0;
}
