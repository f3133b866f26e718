// Helpers shared by the io tests: temporary directories, raw file surgery.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace bhasa::test {

namespace fs = std::filesystem;

inline std::string data_dir(const std::string& name) { return std::string(BHASA_TEST_DATA) + "/" + name; }

// A fresh directory under the system temp dir, removed when the test ends.
struct TempDir {
  fs::path path;
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("bhasa_io_") + (info ? info->name() : "x") + "_" + std::to_string(::getpid());
    path = fs::temp_directory_path() / name;
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str(const std::string& sub = "") const { return sub.empty() ? path.string() : (path / sub).string(); }
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// A safetensors file assembled by hand from a header and a data section.
inline std::string make_safetensors(const std::string& header, const std::string& data) {
  uint64_t n = header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

// Splits a safetensors file into its parsed header and its data section.
inline void split_safetensors(const std::string& bytes, nlohmann::json* header, std::string* data) {
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  *header = nlohmann::json::parse(bytes.substr(8, n));
  *data = bytes.substr(8 + n);
}

// Rewrites the header of a safetensors file in place (data section untouched).
inline void edit_header(const std::string& path, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json h;
  std::string data;
  split_safetensors(read_bytes(path), &h, &data);
  edit(h);
  write_bytes(path, make_safetensors(h.dump(), data));
}

// Copies a fixture model directory into dst (config.json and model.safetensors).
inline void copy_model_dir(const std::string& fixture, const std::string& dst) {
  fs::create_directories(dst);
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(data_dir(fixture) + "/" + f, dst + "/" + f, fs::copy_options::overwrite_existing);
}

inline nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_bytes(path)); }
inline void write_json(const std::string& path, const nlohmann::json& j) { write_bytes(path, j.dump(2)); }

// Runs fn, expects a bhasa::Error whose message contains every one of `parts`.
template <class Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected bhasa::Error, nothing was thrown";
  } catch (const bhasa::Error& e) {
    std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected bhasa::Error, got another exception: " << e.what();
  }
}

}  // namespace bhasa::test
