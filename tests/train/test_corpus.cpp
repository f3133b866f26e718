// Corpus reading and validation, the split, and the tinyshakespeare download
// against a server on loopback.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdlib>
#include <thread>

#include "core/error.h"
#include "train/corpus.h"
#include "train_test_util.h"

using namespace bhasa;
using namespace bhasa::test;
namespace fs = std::filesystem;

namespace {

std::string utf8_error(const std::string& bytes) {
  try {
    check_utf8_text(bytes, "f.txt");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Utf8, AcceptsTextAndRejectsWithTheOffset) {
  EXPECT_EQ(utf8_error("plain ascii\n"), "");
  EXPECT_EQ(utf8_error("na\xC3\xAFve \xE2\x82\xAC \xF0\x9F\x98\x80"), "");  // ï € 😀
  EXPECT_NE(utf8_error("").find("f.txt: the file is empty"), std::string::npos);
  EXPECT_NE(utf8_error(std::string("ab\0c", 4)).find("NUL byte at byte offset 2"), std::string::npos);
  EXPECT_NE(utf8_error("abc\xFF").find("invalid UTF-8 at byte offset 3 (byte 0xFF)"), std::string::npos);
  EXPECT_NE(utf8_error("ab\xC3").find("byte offset 2"), std::string::npos);             // truncated
  EXPECT_NE(utf8_error("a\xC3(").find("byte offset 1"), std::string::npos);             // bad continuation
  EXPECT_NE(utf8_error("\xC0\xAF").find("byte offset 0"), std::string::npos);           // overlong '/'
  EXPECT_NE(utf8_error("x\xE0\x80\xAF").find("byte offset 1"), std::string::npos);      // overlong 3-byte
  EXPECT_NE(utf8_error("xy\xED\xA0\x80").find("byte offset 2"), std::string::npos);     // surrogate D800
  EXPECT_NE(utf8_error("\xF4\x90\x80\x80").find("byte offset 0"), std::string::npos);   // > U+10FFFF
  EXPECT_NE(utf8_error("ok\x80").find("byte offset 2"), std::string::npos);             // stray continuation
}

TEST(Corpus, DirectoryOfTxtFilesIsSortedAndConcatenated) {
  const std::string dir = make_scratch_dir("corpusdir");
  write_file(dir + "/b.txt", "second\n");
  write_file(dir + "/a.txt", "first\n");
  write_file(dir + "/notes.md", "ignored\n");
  Corpus c = read_corpus(dir);
  EXPECT_EQ(c.text, "first\nsecond\n");
  write_file(dir + "/c.txt", "bad \xFE byte");
  try {
    read_corpus(dir);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir + "/c.txt: invalid UTF-8 at byte offset 4"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_corpus(dir + "/nope"), Error);
  fs::remove_all(dir);
}

TEST(Corpus, SplitIsNanoGptsNinetyTen) {
  std::vector<int32_t> t(1000);
  for (int i = 0; i < 1000; ++i) t[i] = i;
  TokenSplit s = split_tokens(t, 0.1);
  ASSERT_EQ(s.train.size(), 900u);
  ASSERT_EQ(s.val.size(), 100u);
  EXPECT_EQ(s.train.back(), 899);
  EXPECT_EQ(s.val.front(), 900);
  EXPECT_EQ(split_tokens(t, 0.25).train.size(), 750u);
  EXPECT_EQ(split_tokens(t, 0.0).val.size(), 0u);
  EXPECT_THROW(split_tokens(t, 1.0), Error);
}

TEST(Corpus, DefaultCorpusIsTheKingJamesBibleCached) {
  if (std::system("command -v bible >/dev/null 2>&1") != 0) GTEST_SKIP() << "bible-kjv is not installed";
  const std::string cache = make_scratch_dir("kjvcache");
  ::setenv("XDG_CACHE_HOME", cache.c_str(), 1);
  Corpus c = default_corpus();
  EXPECT_GT(c.text.size(), 4000000u);
  EXPECT_NE(c.text.find("In the beginning God created the heaven and the earth."), std::string::npos);
  EXPECT_TRUE(fs::exists(cache + "/bhasa/bible-kjv.txt"));
  EXPECT_EQ(default_corpus().text, c.text);  // from the cache
  ::unsetenv("XDG_CACHE_HOME");
  fs::remove_all(cache);
}

// A one-thread HTTP server on 127.0.0.1: /input.txt answers the body, /moved
// redirects to it, anything else is a 404. Serves until stopped.
class LoopbackServer {
 public:
  explicit LoopbackServer(std::string body) : body_(std::move(body)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    ::listen(fd_, 8);
    thread_ = std::thread([this] { serve(); });
  }
  ~LoopbackServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  int requests() const { return requests_; }

 private:
  void serve() {
    while (!stop_) {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string req;
      char buf[4096];
      while (req.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        req.append(buf, n);
      }
      ++requests_;
      std::string resp;
      if (req.rfind("GET /input.txt ", 0) == 0)
        resp = "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body_.size()) +
               "\r\nConnection: close\r\n\r\n" + body_;
      else if (req.rfind("GET /moved ", 0) == 0)
        resp = "HTTP/1.1 302 Found\r\nLocation: " + url("/input.txt") + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
      else
        resp = "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found";
      ::send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
      ::close(c);
    }
  }
  std::string body_;
  int fd_ = -1, port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::thread thread_;
};

TEST(Download, ShakespeareFromLoopbackIsCachedAndOfflineIsClear) {
  const std::string cache = make_scratch_dir("dlcache");
  ::setenv("XDG_CACHE_HOME", cache.c_str(), 1);
  const std::string body = "First Citizen:\nBefore we proceed any further, hear me speak.\n\xC3\xA9\n";
  {
    LoopbackServer server(body);
    ::setenv("BHASA_SHAKESPEARE_URL", server.url("/moved").c_str(), 1);  // through a redirect
    Corpus c = shakespeare_corpus();
    EXPECT_EQ(c.text, body);
    EXPECT_EQ(slurp(cache + "/bhasa/tinyshakespeare.txt"), body);
    EXPECT_EQ(server.requests(), 2);
    EXPECT_EQ(load_training_text("shakespeare").text, body);  // cached: no new request
    EXPECT_EQ(server.requests(), 2);

    fs::remove(cache + "/bhasa/tinyshakespeare.txt");
    ::setenv("BHASA_SHAKESPEARE_URL", server.url("/missing").c_str(), 1);
    try {
      shakespeare_corpus();
      FAIL() << "expected an Error for a 404";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("HTTP 404"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(cache + "/bhasa/tinyshakespeare.txt"));
  }
  // Offline: nothing listens on that port any more.
  LoopbackServer* gone = new LoopbackServer("");
  const std::string dead = gone->url("/input.txt");
  delete gone;
  ::setenv("BHASA_SHAKESPEARE_URL", dead.c_str(), 1);
  try {
    shakespeare_corpus();
    FAIL() << "expected an Error offline";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cannot download"), std::string::npos) << msg;
    EXPECT_NE(msg.find("offline"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--data FILE"), std::string::npos) << msg;
  }
  ::unsetenv("BHASA_SHAKESPEARE_URL");
  ::unsetenv("XDG_CACHE_HOME");
  fs::remove_all(cache);
}

}  // namespace
