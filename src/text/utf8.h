// UTF-8 decoding and encoding helpers shared by the tokenizers. Validation is
// strict (no overlongs, no surrogates, nothing above U+10FFFF), so a byte offset
// can be reported for the first bad sequence.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace bhasa::utf8 {

// Decodes the code point starting at s[pos]; advances pos past it. Returns false
// (pos unchanged) when the bytes there are not valid UTF-8.
bool next(std::string_view s, size_t& pos, uint32_t& code_point);

// Appends the UTF-8 encoding of code_point to out.
void append(std::string& out, uint32_t code_point);

// Byte offset of the first invalid sequence, or npos when s is valid UTF-8.
size_t find_invalid(std::string_view s);

// Throws Error("<what> is not valid UTF-8: bad byte 0x.. at byte offset N ...")
// when s is not valid UTF-8.
void check_valid(std::string_view s, const std::string& what);

// "U+00E9" style name of a code point.
std::string code_point_name(uint32_t code_point);

// Decodes bytes that may be invalid UTF-8 the way Rust's String::from_utf8_lossy
// (and so Hugging Face tokenizers) does: each maximal invalid subsequence becomes
// one U+FFFD.
std::string lossy(std::string_view bytes);

}  // namespace bhasa::utf8
