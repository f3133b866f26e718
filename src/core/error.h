// One error type for every user-facing failure: the message names what is wrong
// and what to do. The CLI prints it and exits non-zero; nothing catches it silently.
#pragma once
#include <stdexcept>
#include <string>

namespace bhasa {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// check(cond, msg): throw Error(msg) when cond is false. Used for input validation,
// never for internal invariants (those are asserts).
inline void check(bool cond, const std::string& msg) {
  if (!cond) throw Error(msg);
}

}  // namespace bhasa
