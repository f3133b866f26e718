// safetensors: an 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the tensor bytes (offsets are relative to the end of the header).
// https://github.com/huggingface/safetensors
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace bhasa {

enum class DType { F32, F16, BF16, F64, I64, I32 };
const char* dtype_name(DType d);   // "F32", ...
size_t dtype_size(DType d);        // bytes per element
bool dtype_is_float(DType d);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;  // byte offsets into the data section
  size_t numel = 1;
};

std::string shape_str(const std::vector<int64_t>& shape);  // "[72, 32]"

// A read-only memory map of one .safetensors file, validated on open: every
// problem (truncation, bad header, bad offsets, unknown dtype) is an Error that
// names the file and, where there is one, the tensor.
class SafeTensorsFile {
 public:
  explicit SafeTensorsFile(const std::string& path);
  ~SafeTensorsFile();
  SafeTensorsFile(const SafeTensorsFile&) = delete;
  SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;
  SafeTensorsFile(SafeTensorsFile&& o) noexcept;
  SafeTensorsFile& operator=(SafeTensorsFile&&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // by offset
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr when absent
  const TensorInfo& at(const std::string& name) const;    // Error when absent

  // Raw little-endian bytes of a tensor (not necessarily aligned).
  const uint8_t* bytes(const TensorInfo& t) const { return data_ + t.begin; }

  // Converted copies. Floats from F32/F16/BF16/F64; integers from I64/I32.
  // Asking for the other kind (e.g. to_float of I64) is an Error.
  std::vector<float> to_float(const std::string& name) const;
  void to_float(const TensorInfo& t, float* dst) const;  // writes t.numel floats
  std::vector<int64_t> to_int64(const std::string& name) const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// One tensor to write: F32 (data points at numel floats) or I64 (numel int64s).
struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// Writes a .safetensors file atomically (temp file, fsync, rename), tensors laid out
// in the given order, header padded to 8 bytes so the data is aligned.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Whole-file convenience for tools such as `bhasa forward`: every tensor converted
// to f32 (float dtypes) or i64 (integer dtypes).
struct TensorData {
  DType dtype = DType::F32;     // F32 or I64 after conversion
  std::vector<int64_t> shape;
  std::vector<float> f32;       // filled when dtype == F32
  std::vector<int64_t> i64;     // filled when dtype == I64
};
std::map<std::string, TensorData> read_tensors(const std::string& path);
void write_tensors(const std::string& path, const std::map<std::string, TensorData>& tensors,
                   const std::map<std::string, std::string>& metadata = {});

// IEEE half and bfloat16 bit patterns to float (exact; subnormals, inf and NaN kept).
float half_to_float(uint16_t h);
float bf16_to_float(uint16_t b);

}  // namespace bhasa
