#include "text/utf8.h"

#include <cstdio>

#include "core/error.h"

namespace bhasa::utf8 {

// Length of the longest prefix of s[pos..] that is a valid start of a UTF-8
// sequence (Unicode's "maximal subpart"), and whether it is complete. The ranges
// of the second byte follow Table 3-7 of the Unicode standard.
static size_t valid_prefix(std::string_view s, size_t pos, uint32_t& cp, bool& complete) {
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size();
  unsigned char c0 = b[pos];
  complete = false;
  if (c0 < 0x80) { cp = c0; complete = true; return 1; }
  int len;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c0 >= 0xC2 && c0 <= 0xDF) { len = 2; cp = c0 & 0x1F; }
  else if (c0 >= 0xE0 && c0 <= 0xEF) {
    len = 3; cp = c0 & 0x0F;
    if (c0 == 0xE0) lo = 0xA0;
    if (c0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (c0 >= 0xF0 && c0 <= 0xF4) {
    len = 4; cp = c0 & 0x07;
    if (c0 == 0xF0) lo = 0x90;
    if (c0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  for (int k = 1; k < len; k++) {
    if (pos + k >= n) return k;
    unsigned char c = b[pos + k];
    if (c < lo || c > hi) return k;
    lo = 0x80; hi = 0xBF;
    cp = (cp << 6) | (c & 0x3F);
  }
  complete = true;
  return len;
}

bool next(std::string_view s, size_t& pos, uint32_t& code_point) {
  if (pos >= s.size()) return false;
  bool complete;
  uint32_t cp;
  size_t len = valid_prefix(s, pos, cp, complete);
  if (!complete) return false;
  code_point = cp;
  pos += len;
  return true;
}

void append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

size_t find_invalid(std::string_view s) {
  size_t pos = 0;
  uint32_t cp;
  while (pos < s.size()) {
    // ASCII fast path: most text is mostly ASCII.
    if (static_cast<unsigned char>(s[pos]) < 0x80) { pos++; continue; }
    if (!next(s, pos, cp)) return pos;
  }
  return std::string_view::npos;
}

void check_valid(std::string_view s, const std::string& what) {
  size_t bad = find_invalid(s);
  if (bad == std::string_view::npos) return;
  char buf[160];
  std::snprintf(buf, sizeof buf, " is not valid UTF-8: bad byte 0x%02X at byte offset %zu",
                static_cast<unsigned char>(s[bad]), bad);
  throw Error(what + buf + " (convert the text to UTF-8 first)");
}

std::string code_point_name(uint32_t cp) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "U+%04X", cp);
  return buf;
}

std::string lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    bool complete;
    uint32_t cp;
    size_t len = valid_prefix(s, pos, cp, complete);
    if (complete) {
      out.append(s.data() + pos, len);
      pos += len;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD for the maximal invalid subpart
      pos += len == 0 ? 1 : len;
    }
  }
  return out;
}

}  // namespace bhasa::utf8
