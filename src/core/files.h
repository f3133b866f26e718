// Crash-safe file writing: a file is written to a temporary name beside its
// destination, flushed to disk, then renamed over it. A crash or kill at any instant
// leaves either the old file or the new one, never a torn one.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace bhasa {

// Writes `bytes` to `path` atomically (path.tmp.<pid>, fsync, rename, fsync of the
// parent directory). Throws Error naming the path and the system error.
void atomic_write_file(const std::string& path, std::string_view bytes);
// The same, for content assembled from several pieces (written in order), so large
// tensors need not be copied into one buffer first.
void atomic_write_file(const std::string& path, const std::vector<std::string_view>& pieces);

// fsync a directory so that a rename inside it survives a power loss.
void fsync_dir(const std::string& dir);

// Reads a whole (small) file, e.g. a config.json. Throws Error if it cannot be read.
std::string read_text_file(const std::string& path);

}  // namespace bhasa
