// Helpers for the training tests: a scratch directory, a synthetic corpus, and
// running the real bhasa binary (BHASA_BIN) as a child process we can signal.
#pragma once
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace bhasa::test {

inline std::string make_scratch_dir(const std::string& name) {
  std::string dir = (std::filesystem::temp_directory_path() /
                     ("bhasa-train-" + name + "-" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// About `bytes` bytes of English-like text with a fixed seed (same every run).
inline std::string synthetic_corpus(size_t bytes) {
  static const char* words[] = {"the", "king", "and", "queen", "of", "a", "river", "ran", "through", "old",
                                "town", "where", "people", "sang", "songs", "at", "night", "to", "stars", "bright"};
  std::mt19937_64 rng(7);
  std::string s;
  while (s.size() < bytes) {
    int n = 4 + static_cast<int>(rng() % 8);
    for (int i = 0; i < n; ++i) {
      std::string w = words[rng() % 20];
      if (i == 0) w[0] = static_cast<char>(w[0] - 32);
      s += w + (i + 1 < n ? " " : ".\n");
    }
  }
  return s;
}

// A small model and schedule so that each step takes milliseconds.
inline std::string write_tiny_config(const std::string& dir) {
  const std::string path = dir + "/tiny.json";
  write_file(path, R"({"d_model": 32, "n_layer": 2, "d_state": 8, "dt_rank": 4, "batch": 4, "seq_len": 32,
                       "warmup": 5, "lr": 0.003, "min_lr": 0.0003, "eval_batches": 2, "sample_tokens": 20})");
  return path;
}

struct Child {
  pid_t pid = -1;
  std::string log;  // stdout and stderr together
};

inline Child spawn_bhasa(const std::vector<std::string>& args, const std::string& log,
                         const std::vector<std::string>& env = {}) {
  Child c;
  c.log = log;
  c.pid = ::fork();
  if (c.pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::close(fd);
    for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> argv;
    std::string bin = BHASA_BIN;
    argv.push_back(bin.data());
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  return c;
}

// Exit status, or 128 + signal number when killed by a signal.
inline int wait_child(const Child& c) {
  int status = 0;
  while (::waitpid(c.pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

inline int run_bhasa(const std::vector<std::string>& args, std::string* output,
                     const std::vector<std::string>& env = {}) {
  static int counter = 0;
  const std::string log = (std::filesystem::temp_directory_path() /
                           ("bhasa-train-log-" + std::to_string(::getpid()) + "-" + std::to_string(counter++)))
                              .string();
  int rc = wait_child(spawn_bhasa(args, log, env));
  if (output) *output = slurp(log);
  std::filesystem::remove(log);
  return rc;
}

inline int count_lines(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) ++n;
  return n;
}

// Blocks until `path` has at least n lines (or the child has exited / timeout).
// (A child that exits early ends the wait at once; the long default is for the sanitizer
// build on a loaded 2-core machine, where a tiny-preset step took 25 s.)
inline bool wait_for_lines(const Child& c, const std::string& path, int n, double timeout_s = 300) {
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < timeout_s) {
    if (count_lines(path) >= n) return true;
    int status;
    if (::waitpid(c.pid, &status, WNOHANG) == c.pid) return false;  // exited early (reaped!)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

}  // namespace bhasa::test
