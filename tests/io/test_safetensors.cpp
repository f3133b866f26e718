// safetensors reading, writing and validation; the atomic file writer.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/files.h"
#include "io/safetensors.h"
#include "io_test_util.h"

using namespace bhasa;
using namespace bhasa::test;
using nlohmann::json;

TEST(SafeTensors, RoundTripF32I64AndMetadata) {
  TempDir tmp;
  std::vector<float> w = {1.5f, -2.25f, 0.0f, 3e-8f, 1e30f, -0.0f};  // (2, 3)
  std::vector<int64_t> ids = {0, 1, -7, int64_t(1) << 40};          // (2, 2)
  std::vector<float> scalar = {42.0f};                               // (1)
  std::string path = tmp.str("t.safetensors");
  write_safetensors(path,
                    {{"w", DType::F32, {2, 3}, w.data()}, {"ids", DType::I64, {2, 2}, ids.data()},
                     {"loss", DType::F32, {1}, scalar.data()}, {"empty", DType::F32, {0, 4}, nullptr}},
                    {{"format", "pt"}, {"note", "hello"}});
  EXPECT_FALSE(fs::exists(path + ".tmp." + std::to_string(getpid())));

  SafeTensorsFile f(path);
  ASSERT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "hello");
  const TensorInfo& tw = f.at("w");
  EXPECT_EQ(tw.dtype, DType::F32);
  EXPECT_EQ(tw.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(tw.numel, 6u);
  std::vector<float> w2 = f.to_float("w");
  ASSERT_EQ(w2.size(), w.size());
  EXPECT_EQ(std::memcmp(w2.data(), w.data(), w.size() * 4), 0);  // bitwise, -0.0 included
  EXPECT_EQ(f.to_int64("ids"), ids);
  EXPECT_EQ(f.at("ids").shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(f.to_float("loss"), scalar);
  EXPECT_EQ(f.at("empty").numel, 0u);
  EXPECT_TRUE(f.to_float("empty").empty());
  EXPECT_EQ(f.find("nope"), nullptr);
  expect_error([&] { f.at("nope"); }, {"nope", path});
  expect_error([&] { f.to_float("ids"); }, {"ids", "integer"});
  expect_error([&] { f.to_int64("w"); }, {"'w'", "floating-point"});

  // The header is padded so the data section starts 8-byte aligned.
  std::string bytes = read_bytes(path);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 6 * 4 + 4 * 8 + 4);
}

TEST(SafeTensors, ReadTensorsAndWriteTensors) {
  TempDir tmp;
  std::map<std::string, TensorData> in;
  in["input_ids"] = {DType::I64, {1, 3}, {}, {5, 6, 7}};
  in["logits"] = {DType::F32, {1, 3, 2}, {1, 2, 3, 4, 5, 6}, {}};
  write_tensors(tmp.str("x.safetensors"), in);
  auto out = read_tensors(tmp.str("x.safetensors"));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out["input_ids"].dtype, DType::I64);
  EXPECT_EQ(out["input_ids"].i64, (std::vector<int64_t>{5, 6, 7}));
  EXPECT_EQ(out["logits"].shape, (std::vector<int64_t>{1, 3, 2}));
  EXPECT_EQ(out["logits"].f32, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  in["bad"] = {DType::F32, {2, 2}, {1, 2, 3}, {}};
  expect_error([&] { write_tensors(tmp.str("y.safetensors"), in); }, {"bad", "3 values", "[2, 2]"});
  EXPECT_FALSE(fs::exists(tmp.str("y.safetensors")));
}

static std::string u16s(std::initializer_list<uint16_t> v) {
  std::string s;
  for (uint16_t x : v) s.append(reinterpret_cast<const char*>(&x), 2);
  return s;
}

TEST(SafeTensors, HalfAndBFloat16Conversion) {
  const float inf = std::numeric_limits<float>::infinity();
  // F16: 1, -2, smallest subnormal 2^-24, largest subnormal 1023*2^-24, smallest normal 2^-14,
  // max 65504, +inf, -inf, -0, 0.333251953125 (0x3555)
  std::string f16 = u16s({0x3C00, 0xC000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00, 0x8000, 0x3555, 0x7E00});
  std::vector<float> want16 = {1.0f, -2.0f, std::ldexp(1.0f, -24), 1023 * std::ldexp(1.0f, -24), std::ldexp(1.0f, -14),
                               65504.0f, inf, -inf, -0.0f, 0.333251953125f};
  // BF16: 1, -3, a float subnormal 2^-133, 3.140625, +inf, -inf, -1.5e-38ish (0x8080 = -2^-126*... ), NaN
  std::string bf16 = u16s({0x3F80, 0xC040, 0x0001, 0x4049, 0x7F80, 0xFF80, 0x8080, 0x7FC0});
  std::vector<float> wantbf = {1.0f, -3.0f, std::ldexp(1.0f, -133), 3.140625f, inf, -inf, -std::ldexp(1.0f, -126)};
  // F64 and I32 too.
  double d[3] = {0.1, -1e300, 2.5};
  int32_t i32[3] = {-1, 0, 2147483647};
  std::string f64(reinterpret_cast<const char*>(d), 24), si32(reinterpret_cast<const char*>(i32), 12);
  size_t a = f16.size(), b = a + bf16.size(), c = b + f64.size(), e = c + si32.size();
  json h = {{"h", {{"dtype", "F16"}, {"shape", {11}}, {"data_offsets", {0, a}}}},
            {"b", {{"dtype", "BF16"}, {"shape", {2, 4}}, {"data_offsets", {a, b}}}},
            {"d", {{"dtype", "F64"}, {"shape", {3}}, {"data_offsets", {b, c}}}},
            {"i", {{"dtype", "I32"}, {"shape", {3}}, {"data_offsets", {c, e}}}}};
  TempDir tmp;
  std::string path = tmp.str("half.safetensors");
  write_bytes(path, make_safetensors(h.dump(), f16 + bf16 + f64 + si32));  // unaligned header on purpose
  SafeTensorsFile f(path);
  std::vector<float> got16 = f.to_float("h");
  for (size_t i = 0; i < want16.size(); i++) {
    EXPECT_EQ(got16[i], want16[i]) << "F16 element " << i;
    EXPECT_EQ(std::signbit(got16[i]), std::signbit(want16[i])) << "F16 element " << i;
  }
  EXPECT_TRUE(std::isnan(got16[10]));
  std::vector<float> gotbf = f.to_float("b");
  for (size_t i = 0; i < wantbf.size(); i++) EXPECT_EQ(gotbf[i], wantbf[i]) << "BF16 element " << i;
  EXPECT_TRUE(std::isnan(gotbf[7]));
  EXPECT_EQ(f.to_float("d"), (std::vector<float>{0.1f, -inf, 2.5f}));
  EXPECT_EQ(f.to_int64("i"), (std::vector<int64_t>{-1, 0, 2147483647}));
  EXPECT_EQ(half_to_float(0x3C00), 1.0f);
  EXPECT_EQ(bf16_to_float(0xBF80), -1.0f);
}

// Each malformed file must be a clear Error naming the file, never a crash.
TEST(SafeTensors, MalformedFiles) {
  TempDir tmp;
  std::string p = tmp.str("bad.safetensors");
  std::string data(16, '\0');
  auto hdr = [](const std::string& dtype, json shape, size_t b, size_t e) {
    return json{{"x", {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {b, e}}}}}.dump();
  };
  auto expect_bad = [&](const std::string& bytes, std::initializer_list<std::string> parts) {
    write_bytes(p, bytes);
    expect_error([&] { SafeTensorsFile f(p); }, parts);
  };
  expect_error([&] { SafeTensorsFile f(tmp.str("absent.safetensors")); }, {"absent.safetensors", "not found"});
  expect_bad("abc", {p, "too short"});
  std::string huge(8, '\xff');
  expect_bad(huge + "{}", {p, "runs past the end"});
  expect_bad(make_safetensors("{\"x\": [", data), {p, "not valid JSON"});
  expect_bad(make_safetensors("[1,2]", data), {p, "not a JSON object"});
  expect_bad(make_safetensors(hdr("F8_E4M3", {4}, 0, 4), data), {p, "'x'", "unsupported dtype 'F8_E4M3'"});
  expect_bad(make_safetensors(hdr("F32", {3}, 0, 16), data), {p, "'x'", "[3]", "needs 12 bytes", "span 16"});
  expect_bad(make_safetensors(hdr("F32", {8}, 0, 32), data), {p, "'x'", "past the end", "truncated"});
  expect_bad(make_safetensors(hdr("F32", {-1}, 0, 4), data), {p, "'x'", "non-negative"});
  expect_bad(make_safetensors(hdr("F32", {1}, 8, 4), data), {p, "'x'", "end before"});
  expect_bad(make_safetensors(R"({"x": {"dtype": "F32", "shape": [2]}})", data), {p, "'x'", "data_offsets"});
  expect_bad(make_safetensors(R"({"x": {"shape": [2], "data_offsets": [0, 8]}})", data), {p, "'x'", "dtype"});
  json overlap = {{"x", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}},
                  {"y", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {4, 12}}}}};
  expect_bad(make_safetensors(overlap.dump(), data), {p, "'x'", "'y'", "overlap"});

  // A valid file cut short: its last tensor now runs past the end.
  std::vector<float> v(64, 1.0f);
  write_safetensors(p, {{"a", DType::F32, {64}, v.data()}, {"b", DType::F32, {64}, v.data()}});
  std::string full = read_bytes(p);
  expect_bad(full.substr(0, full.size() - 10), {p, "'b'", "truncated"});
  expect_bad(full.substr(0, 20), {p, "runs past the end"});
}

TEST(Files, AtomicWriteReplacesAndLeavesNoTemp) {
  TempDir tmp;
  std::string p = tmp.str("f.txt");
  atomic_write_file(p, "first");
  atomic_write_file(p, std::vector<std::string_view>{"sec", "ond"});
  EXPECT_EQ(read_bytes(p), "second");
  EXPECT_EQ(read_text_file(p), "second");
  size_t n = 0;
  for (auto& e : fs::directory_iterator(tmp.path)) n += e.is_regular_file();
  EXPECT_EQ(n, 1u);  // no p.tmp.<pid> left behind
  expect_error([&] { atomic_write_file(tmp.str("no/such/dir/f.txt"), "x"); }, {"no/such/dir/f.txt"});
  expect_error([&] { read_text_file(tmp.str("absent.txt")); }, {"absent.txt", "not found"});
  fsync_dir(tmp.str());
}
