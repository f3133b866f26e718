#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"

static_assert(std::endian::native == std::endian::little, "safetensors reading assumes a little-endian host");

namespace bhasa {

using nlohmann::json;

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
  }
  return "?";
}
size_t dtype_size(DType d) {
  switch (d) {
    case DType::F16: case DType::BF16: return 2;
    case DType::F32: case DType::I32: return 4;
    case DType::F64: case DType::I64: return 8;
  }
  return 0;
}
bool dtype_is_float(DType d) { return d != DType::I64 && d != DType::I32; }

static bool parse_dtype(const std::string& s, DType* d) {
  for (DType x : {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I64, DType::I32})
    if (s == dtype_name(x)) { *d = x; return true; }
  return false;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {  // inf / NaN
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {  // normal: rebias 15 -> 127
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {  // +-0
    bits = sign;
  } else {  // subnormal: mant * 2^-24, exactly representable as a float
    float f = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -f : f;
  }
  return std::bit_cast<float>(bits);
}
float bf16_to_float(uint16_t b) { return std::bit_cast<float>(uint32_t(b) << 16); }

// ---- reading ------------------------------------------------------------------

SafeTensorsFile::SafeTensorsFile(const std::string& path) : path_(path) {
  const std::string& P = path_;
  int fd = ::open(P.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) throw Error(P + ": file not found");
    throw Error(P + ": cannot open: " + std::strerror(errno));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(P + ": not a regular file");
  }
  size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error(P + ": file is " + std::to_string(size) +
                " bytes, too short to be a safetensors file (truncated?)");
  }
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int saved = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (m == MAP_FAILED) throw Error(P + ": cannot memory-map: " + std::strerror(saved));
  map_ = m;
  map_size_ = size;
  try {
    const uint8_t* base = static_cast<const uint8_t*>(map_);
    uint64_t header_len;
    std::memcpy(&header_len, base, 8);
    if (header_len > size - 8)
      throw Error(P + ": header length " + std::to_string(header_len) + " runs past the end of the file (" +
                  std::to_string(size) + " bytes); the file is truncated or not safetensors");
    if (header_len > 100'000'000)
      throw Error(P + ": header length " + std::to_string(header_len) + " is implausibly large");
    data_ = base + 8 + header_len;
    const size_t data_size = size - 8 - header_len;

    json header;
    try {
      header = json::parse(reinterpret_cast<const char*>(base + 8), reinterpret_cast<const char*>(data_));
    } catch (const json::parse_error& e) {
      throw Error(P + ": header is not valid JSON (" + e.what() + "); the file is corrupt or not safetensors");
    }
    if (!header.is_object()) throw Error(P + ": header is not a JSON object");

    for (auto& [name, v] : header.items()) {
      if (name == "__metadata__") {
        if (!v.is_object()) throw Error(P + ": __metadata__ is not a JSON object");
        for (auto& [k, mv] : v.items()) metadata_[k] = mv.is_string() ? mv.get<std::string>() : mv.dump();
        continue;
      }
      const std::string T = P + ": tensor '" + name + "': ";
      if (!v.is_object()) throw Error(T + "header entry is not a JSON object");
      TensorInfo t;
      t.name = name;
      if (!v.contains("dtype") || !v["dtype"].is_string()) throw Error(T + "missing or non-string 'dtype'");
      std::string ds = v["dtype"].get<std::string>();
      if (!parse_dtype(ds, &t.dtype))
        throw Error(T + "unsupported dtype '" + ds + "' (supported: F32, F16, BF16, F64, I64, I32)");
      if (!v.contains("shape") || !v["shape"].is_array()) throw Error(T + "missing or non-array 'shape'");
      for (const json& d : v["shape"]) {
        if (!d.is_number_integer() || d.get<int64_t>() < 0)
          throw Error(T + "shape " + v["shape"].dump() + " has an entry that is not a non-negative integer");
        int64_t dim = d.get<int64_t>();
        if (dim != 0 && t.numel > (size_t(1) << 48) / size_t(dim)) throw Error(T + "shape " + v["shape"].dump() + " is too large");
        t.numel *= size_t(dim);
        t.shape.push_back(dim);
      }
      const json& off = v.contains("data_offsets") ? v["data_offsets"] : json();
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        throw Error(T + "'data_offsets' must be two non-negative integers, got " + off.dump());
      uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
      if (b > e) throw Error(T + "data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + "] end before they begin");
      if (e > data_size)
        throw Error(T + "data [" + std::to_string(b) + ", " + std::to_string(e) + ") lies past the end of the data (" +
                    std::to_string(data_size) + " bytes); the file is truncated");
      t.begin = b;
      t.end = e;
      if (t.numel * dtype_size(t.dtype) != e - b)
        throw Error(T + "shape " + shape_str(t.shape) + " of " + ds + " needs " +
                    std::to_string(t.numel * dtype_size(t.dtype)) + " bytes but data_offsets span " +
                    std::to_string(e - b));
      tensors_.push_back(std::move(t));
    }
    std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    // Overlapping tensors mean a corrupt header (empty tensors occupy no bytes).
    const TensorInfo* prev = nullptr;
    for (const TensorInfo& t : tensors_) {
      if (t.begin == t.end) continue;
      if (prev && t.begin < prev->end)
        throw Error(P + ": tensors '" + prev->name + "' and '" + t.name + "' overlap in the data section; the header is corrupt");
      prev = &t;
    }
    for (size_t i = 0; i < tensors_.size(); i++) index_[tensors_[i].name] = i;
  } catch (const json::exception& e) {  // safety net: a header shape the checks above missed
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw Error(P + ": malformed safetensors header: " + e.what());
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

SafeTensorsFile::SafeTensorsFile(SafeTensorsFile&& o) noexcept
    : path_(std::move(o.path_)), map_(o.map_), map_size_(o.map_size_), data_(o.data_),
      tensors_(std::move(o.tensors_)), index_(std::move(o.index_)), metadata_(std::move(o.metadata_)) {
  o.map_ = nullptr;
  o.map_size_ = 0;
  o.data_ = nullptr;
}

SafeTensorsFile::~SafeTensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const TensorInfo* SafeTensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafeTensorsFile::at(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) throw Error(path_ + ": no tensor named '" + name + "'");
  return *t;
}

void SafeTensorsFile::to_float(const TensorInfo& t, float* dst) const {
  const uint8_t* src = bytes(t);
  switch (t.dtype) {
    case DType::F32:
      if (t.numel) std::memcpy(dst, src, t.numel * 4);
      return;
    case DType::F16:
    case DType::BF16:
      for (size_t i = 0; i < t.numel; i++) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = t.dtype == DType::F16 ? half_to_float(h) : bf16_to_float(h);
      }
      return;
    case DType::F64:
      for (size_t i = 0; i < t.numel; i++) {
        double d;
        std::memcpy(&d, src + 8 * i, 8);
        dst[i] = static_cast<float>(d);
      }
      return;
    case DType::I64:
    case DType::I32:
      break;
  }
  throw Error(path_ + ": tensor '" + t.name + "' has integer dtype " + dtype_name(t.dtype) +
              " where floating-point values are expected");
}

std::vector<float> SafeTensorsFile::to_float(const std::string& name) const {
  const TensorInfo& t = at(name);
  std::vector<float> out(t.numel);
  to_float(t, out.data());
  return out;
}

std::vector<int64_t> SafeTensorsFile::to_int64(const std::string& name) const {
  const TensorInfo& t = at(name);
  std::vector<int64_t> out(t.numel);
  const uint8_t* src = bytes(t);
  if (t.dtype == DType::I64) {
    if (t.numel) std::memcpy(out.data(), src, t.numel * 8);
  } else if (t.dtype == DType::I32) {
    for (size_t i = 0; i < t.numel; i++) {
      int32_t v;
      std::memcpy(&v, src + 4 * i, 4);
      out[i] = v;
    }
  } else {
    throw Error(path_ + ": tensor '" + name + "' has floating-point dtype " + dtype_name(t.dtype) +
                " where integers are expected");
  }
  return out;
}

// ---- writing ------------------------------------------------------------------

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<std::string_view> pieces(2);  // [0] length, [1] header, then data
  size_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    check(t.dtype == DType::F32 || t.dtype == DType::I64,
          "write_safetensors(" + path + "): tensor '" + t.name + "' must be F32 or I64");
    check(t.name != "__metadata__" && !header.contains(t.name),
          "write_safetensors(" + path + "): duplicate or reserved tensor name '" + t.name + "'");
    size_t numel = 1;
    for (int64_t d : t.shape) {
      check(d >= 0, "write_safetensors(" + path + "): tensor '" + t.name + "' has a negative dimension");
      numel *= size_t(d);
    }
    size_t nbytes = numel * dtype_size(t.dtype);
    check(nbytes == 0 || t.data, "write_safetensors(" + path + "): tensor '" + t.name + "' has no data");
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + nbytes}}};
    pieces.emplace_back(static_cast<const char*>(t.data), nbytes);
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // spec: pad with spaces so data starts 8-aligned
  uint64_t n = text.size();
  char len[8];
  std::memcpy(len, &n, 8);
  pieces[0] = std::string_view(len, 8);
  pieces[1] = text;
  atomic_write_file(path, pieces);
}

std::map<std::string, TensorData> read_tensors(const std::string& path) {
  SafeTensorsFile f(path);
  std::map<std::string, TensorData> out;
  for (const TensorInfo& t : f.tensors()) {
    TensorData d;
    d.shape = t.shape;
    if (dtype_is_float(t.dtype)) {
      d.dtype = DType::F32;
      d.f32.resize(t.numel);
      f.to_float(t, d.f32.data());
    } else {
      d.dtype = DType::I64;
      d.i64 = f.to_int64(t.name);
    }
    out.emplace(t.name, std::move(d));
  }
  return out;
}

void write_tensors(const std::string& path, const std::map<std::string, TensorData>& tensors,
                   const std::map<std::string, std::string>& metadata) {
  std::vector<TensorToWrite> list;
  for (const auto& [name, d] : tensors) {
    size_t numel = 1;
    for (int64_t s : d.shape) numel *= size_t(s < 0 ? 0 : s);
    size_t have = d.dtype == DType::I64 ? d.i64.size() : d.f32.size();
    check(have == numel, "write_tensors(" + path + "): tensor '" + name + "' has " + std::to_string(have) +
                             " values but shape " + shape_str(d.shape) + " needs " + std::to_string(numel));
    list.push_back({name, d.dtype, d.shape,
                    d.dtype == DType::I64 ? static_cast<const void*>(d.i64.data()) : d.f32.data()});
  }
  write_safetensors(path, list, metadata);
}

}  // namespace bhasa
