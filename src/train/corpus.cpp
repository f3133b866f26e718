#include "train/corpus.h"

#include <strings.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

// Debian's cpp-httplib (a compiled library, built with OpenSSL for https).
#include <httplib.h>

#include "core/error.h"
#include "text/utf8.h"
#include "core/files.h"

namespace fs = std::filesystem;

namespace bhasa {

const char* const kShakespeareUrl =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";

static std::string hex_byte(unsigned char c) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02X", c);
  return buf;
}

void check_utf8_text(const std::string& bytes, const std::string& name) {
  check(!bytes.empty(), name + ": the file is empty; give a text file with some content to train on");
  const size_t nul = bytes.find('\0');
  const size_t bad = utf8::find_invalid(bytes);
  if (nul != std::string::npos && nul <= bad)
    throw Error(name + ": NUL byte at byte offset " + std::to_string(nul) +
                "; this looks like a binary file, not text");
  if (bad != std::string::npos)
    throw Error(name + ": invalid UTF-8 at byte offset " + std::to_string(bad) + " (byte " +
                hex_byte(static_cast<unsigned char>(bytes[bad])) +
                "); bhasa trains on UTF-8 text, convert the file first (e.g. iconv -f LATIN1 -t UTF-8)");
}

Corpus read_corpus(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw Error(path + ": no such file or directory (--data takes a text file or a directory of .txt files)");
  if (!fs::is_directory(path, ec)) {
    std::string text = read_text_file(path);
    check_utf8_text(text, path);
    return {std::move(text), path};
  }
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(path, ec))
    if (entry.is_regular_file() && entry.path().extension() == ".txt") files.push_back(entry.path().string());
  check(!ec, path + ": cannot list the directory: " + ec.message());
  check(!files.empty(), path + ": the directory has no .txt files; put the training text in *.txt files");
  std::sort(files.begin(), files.end());
  Corpus c;
  for (const auto& f : files) {
    std::string text = read_text_file(f);
    check_utf8_text(text, f);
    c.text += text;
  }
  c.source = path + " (" + std::to_string(files.size()) + " .txt files)";
  return c;
}

std::string cache_dir() {
  std::string base;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) base = x;
  else if (const char* h = std::getenv("HOME"); h && *h) base = std::string(h) + "/.cache";
  else throw Error("cannot find a cache directory: neither XDG_CACHE_HOME nor HOME is set");
  std::string dir = base + "/bhasa";
  std::error_code ec;
  fs::create_directories(dir, ec);
  check(!ec, "cannot create the cache directory " + dir + ": " + ec.message());
  return dir;
}

// Reads a cached corpus file; a corrupt cache entry is removed so that the next run rebuilds it.
static bool read_cached(const std::string& path, Corpus& out, const std::string& what) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return false;
  std::string text = read_text_file(path);
  try {
    check_utf8_text(text, path);
  } catch (const Error&) {
    fs::remove(path, ec);
    return false;
  }
  out = {std::move(text), what + " (cached at " + path + ")"};
  return true;
}

Corpus default_corpus() {
  const std::string path = cache_dir() + "/bible-kjv.txt";
  Corpus c;
  if (read_cached(path, c, "bible-kjv")) return c;
  FILE* p = ::popen("bible \"gen1:1-rev22:21\" </dev/null 2>/dev/null", "r");
  check(p != nullptr, "cannot run the `bible` program to build the default corpus");
  std::string text;
  char buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, got);
  int status = ::pclose(p);
  if (status != 0 || text.size() < 1000000)
    throw Error("the default corpus needs Debian's bible-kjv package (`bible` printed nothing usable); "
                "install it with scripts/setup or `sudo apt-get install bible-kjv`, or train on your own "
                "text with --data FILE");
  check_utf8_text(text, "the output of `bible`");
  atomic_write_file(path, text);
  return {std::move(text), "bible-kjv (King James Bible, cached at " + path + ")"};
}

namespace {

struct Url {
  std::string scheme, host, path;
  int port = 0;
};

Url parse_url(const std::string& url) {
  const size_t sep = url.find("://");
  check(sep != std::string::npos, "bad URL " + url + ": expected http://host/path or https://host/path");
  Url u;
  u.scheme = url.substr(0, sep);
  const size_t path_at = url.find('/', sep + 3);
  const std::string host_port = url.substr(sep + 3, path_at == std::string::npos ? std::string::npos : path_at - sep - 3);
  u.path = path_at == std::string::npos ? "/" : url.substr(path_at);
  u.host = host_port;
  u.port = u.scheme == "https" ? 443 : 80;
  if (size_t colon = host_port.rfind(':'); colon != std::string::npos) {
    u.host = host_port.substr(0, colon);
    u.port = std::atoi(host_port.c_str() + colon + 1);
  }
  check(!u.host.empty() && u.port > 0 && u.port < 65536, "bad URL " + url);
  check(u.scheme == "http" || u.scheme == "https",
        "cannot download " + url + ": unsupported scheme '" + u.scheme + "' (use http or https)");
  return u;
}

struct Response {
  int status = 0;         // 0: no connection
  std::string error;      // why there is no response
  std::string location;   // of a redirect
  std::string body;
};

Response http_get(const Url& u) {
  auto fetch = [&](auto& cli) {
    cli.set_connection_timeout(10);
    cli.set_read_timeout(60);
    cli.set_follow_location(true);
    return cli.Get(u.path);
  };
  httplib::Result res = [&] {
    if (u.scheme == "https") {
      httplib::SSLClient cli(u.host, u.port);
      return fetch(cli);
    }
    httplib::Client cli(u.host, u.port);
    return fetch(cli);
  }();
  Response r;
  if (!res) {
    r.error = httplib::to_string(res.error());
    return r;
  }
  r.status = res->status;
  r.body = std::move(res->body);
  return r;
}

}  // namespace

void download_file(const std::string& url, const std::string& dest) {
  const std::string offline_hint = "; download it yourself and pass the file with --data FILE";
  std::string at = url;
  Response res;
  for (int redirects = 0; redirects < 5; ++redirects) {
    res = http_get(parse_url(at));
    if (res.status < 300 || res.status >= 400 || res.location.empty()) break;
    at = res.location;
  }
  if (res.status == 0)
    throw Error("cannot download " + url + ": " + res.error + " (are you offline?)" + offline_hint);
  if (res.status != 200)
    throw Error("cannot download " + url + ": the server answered HTTP " + std::to_string(res.status) + offline_hint);
  atomic_write_file(dest, res.body);
}

Corpus shakespeare_corpus() {
  const std::string path = cache_dir() + "/tinyshakespeare.txt";
  Corpus c;
  if (read_cached(path, c, "tinyshakespeare")) return c;
  const char* env = std::getenv("BHASA_SHAKESPEARE_URL");
  const std::string url = env && *env ? env : kShakespeareUrl;
  std::fprintf(stderr, "downloading tinyshakespeare from %s\n", url.c_str());
  download_file(url, path);
  std::string text = read_text_file(path);
  try {
    check_utf8_text(text, "tinyshakespeare downloaded from " + url);
  } catch (const Error&) {
    std::error_code ec;
    fs::remove(path, ec);
    throw;
  }
  return {std::move(text), "tinyshakespeare (cached at " + path + ")"};
}

Corpus load_training_text(const std::string& data) {
  if (data.empty()) return default_corpus();
  std::error_code ec;
  if (data == "shakespeare" && !fs::exists(data, ec)) return shakespeare_corpus();
  return read_corpus(data);
}

TokenSplit split_tokens(const std::vector<int32_t>& tokens, double val_fraction) {
  check(val_fraction >= 0.0 && val_fraction < 1.0,
        "--val-fraction must be in [0, 1), got " + std::to_string(val_fraction));
  const size_t n_train = static_cast<size_t>(static_cast<double>(tokens.size()) * (1.0 - val_fraction));
  TokenSplit s;
  s.train.assign(tokens.begin(), tokens.begin() + n_train);
  s.val.assign(tokens.begin() + n_train, tokens.end());
  return s;
}

}  // namespace bhasa
