#include "core/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace bhasa {

static std::string sys_error() { return std::strerror(errno); }

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) throw Error("cannot open directory " + dir + " to flush it: " + sys_error());
  int rc = ::fsync(fd);
  int saved = errno;
  ::close(fd);
  // Some filesystems (e.g. certain network mounts) refuse fsync on directories;
  // the rename itself has still happened, so only real I/O errors are fatal.
  if (rc != 0 && saved != EINVAL && saved != ENOTSUP)
    throw Error("cannot flush directory " + dir + ": " + std::strerror(saved));
}

void atomic_write_file(const std::string& path, const std::vector<std::string_view>& pieces) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error("cannot create " + tmp + " (writing " + path + "): " + sys_error());
  auto fail = [&](const std::string& what) {
    std::string msg = "cannot write " + path + " (" + what + "): " + sys_error();
    ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(msg);
  };
  for (std::string_view piece : pieces) {
    const char* p = piece.data();
    size_t left = piece.size();
    while (left > 0) {
      ssize_t n = ::write(fd, p, left);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail("write");
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  if (::fsync(fd) != 0) fail("fsync");
  if (::close(fd) != 0) {
    std::string msg = "cannot write " + path + " (close): " + sys_error();
    ::unlink(tmp.c_str());
    throw Error(msg);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string msg = "cannot rename " + tmp + " to " + path + ": " + sys_error();
    ::unlink(tmp.c_str());
    throw Error(msg);
  }
  std::string parent = std::filesystem::path(path).parent_path().string();
  fsync_dir(parent.empty() ? "." : parent);
}

void atomic_write_file(const std::string& path, std::string_view bytes) {
  atomic_write_file(path, std::vector<std::string_view>{bytes});
}

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw Error(path + ": file not found");
  if (std::filesystem::is_directory(path, ec)) throw Error(path + ": is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open: " + sys_error());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error");
  return ss.str();
}

}  // namespace bhasa
