// libFuzzer target: the safetensors reader on arbitrary bytes. A bhasa::Error is
// the expected answer to a bad file; anything else (crash, sanitizer report, other
// exception escaping) is a bug. The bytes go through a file in /dev/shm because
// SafeTensorsFile memory-maps a path, exactly as it does for a real model.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/dev/shm/bhasa-fuzz-" + std::to_string(::getpid()) + ".safetensors";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    bhasa::SafeTensorsFile st(path);
    // Touch every tensor's bytes through the converting readers.
    for (const auto& t : st.tensors()) {
      if (t.numel > (1u << 20)) continue;  // keep each run fast; the bounds were checked on open
      if (bhasa::dtype_is_float(t.dtype)) (void)st.to_float(t.name);
      else (void)st.to_int64(t.name);
    }
    (void)st.find("backbone.embeddings.weight");
  } catch (const bhasa::Error&) {
  }
  return 0;
}
