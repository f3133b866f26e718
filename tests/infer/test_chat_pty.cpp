// `bhasa chat` driven through a real pseudo-terminal (forkpty), as a person would use
// it: readline prompt, replies, /save and /load across processes, Ctrl+C, Ctrl+D.
#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <regex>

#include "infer_test_util.h"

namespace {

// One chat process on a pseudo-terminal.
class PtyChat {
 public:
  explicit PtyChat(const std::vector<std::string>& args, const std::string& home) {
    pid_ = forkpty(&fd_, nullptr, nullptr, nullptr);
    if (pid_ == 0) {
      setenv("HOME", home.c_str(), 1);
      unsetenv("XDG_CACHE_HOME");
      setenv("TERM", "dumb", 1);
      std::vector<char*> argv = {const_cast<char*>(BHASA_BIN), const_cast<char*>("chat")};
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(BHASA_BIN, argv.data());
      _exit(127);
    }
  }
  ~PtyChat() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) close(fd_);
  }
  bool started() const { return pid_ > 0; }

  // Reads until the output holds `count` prompts ('>' appears only in prompts: the test
  // vocabulary has no '>'), or the timeout. Returns everything read so far.
  bool wait_prompts(int count, double timeout_s = 60) { return wait_for([&] { return prompts() >= count; }, timeout_s); }
  // Searches the raw output (cheap while a long reply streams in).
  bool wait_text(const std::string& s, double timeout_s = 60) {
    return wait_for([&] { return out_.find(s) != std::string::npos; }, timeout_s);
  }
  size_t size() const { return out_.size(); }
  void type(const std::string& s) { (void)!write(fd_, s.data(), s.size()); }

  int prompts() const { return int(std::count(out_.begin(), out_.end(), '>')); }
  // The output without terminal escape sequences and carriage returns.
  std::string clean() const {
    static const std::regex esc("\x1b\\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r");
    return std::regex_replace(out_, esc, "");
  }
  // Exit status after Ctrl+D, or -1.
  int wait_exit(double timeout_s = 30) {
    wait_for([] { return false; }, 0.2);
    auto t0 = std::chrono::steady_clock::now();
    int st = 0;
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < timeout_s) {
      pump(50);
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      }
    }
    return -1;
  }

 private:
  void pump(int ms) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, ms) > 0) {
      char buf[4096];
      ssize_t n = read(fd_, buf, sizeof buf);
      if (n > 0) out_.append(buf, size_t(n));
    }
  }
  template <class F>
  bool wait_for(F done, double timeout_s) {
    auto t0 = std::chrono::steady_clock::now();
    while (!done()) {
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > timeout_s) return false;
      pump(50);
    }
    return true;
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  bool exited_ = false;
  std::string out_;
};

// The reply to the line typed last: the text after that line's echo, before the next prompt.
std::string last_reply(const std::string& clean, const std::string& line) {
  size_t at = clean.rfind(line + "\n");
  if (at == std::string::npos) return "<no echo of " + line + ">";
  std::string rest = clean.substr(at + line.size() + 1);
  size_t prompt = rest.rfind("> ");
  return prompt == std::string::npos ? rest : rest.substr(0, prompt);
}

class ChatPty : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = bhasa::test::make_tiny_model_dir("chat_pty");
    args_ = {"--model", dir_, "--temperature", "0.8", "--seed", "7", "--max-reply-tokens", "30", "--threads", "1"};
  }
  std::string dir_;
  std::vector<std::string> args_;
};

// Turn 2's reply is the same whether the chat runs straight through, or is saved after
// turn 1, the process ends, and a new process loads the state and takes turn 2.
TEST_F(ChatPty, SaveAndLoadBetweenTurnsGiveTheSameContinuation) {
  const std::string state = dir_ + "/chat.state";
  std::string reply1, reply2;
  {
    PtyChat chat(args_, dir_);
    ASSERT_TRUE(chat.started());
    ASSERT_TRUE(chat.wait_prompts(1)) << chat.clean();
    chat.type("Hello there\r");
    ASSERT_TRUE(chat.wait_prompts(2)) << chat.clean();
    reply1 = last_reply(chat.clean(), "Hello there");
    chat.type("How are you\r");
    ASSERT_TRUE(chat.wait_prompts(3)) << chat.clean();
    reply2 = last_reply(chat.clean(), "How are you");
    chat.type("\x04");  // Ctrl+D
    EXPECT_EQ(chat.wait_exit(), 0);
  }
  ASSERT_FALSE(reply2.empty());
  std::printf("turn 1 reply: [%s]\nturn 2 reply: [%s]\n", reply1.c_str(), reply2.c_str());
  {
    PtyChat chat(args_, dir_);
    ASSERT_TRUE(chat.wait_prompts(1)) << chat.clean();
    chat.type("Hello there\r");
    ASSERT_TRUE(chat.wait_prompts(2)) << chat.clean();
    EXPECT_EQ(last_reply(chat.clean(), "Hello there"), reply1);
    chat.type("/save " + state + "\r");
    ASSERT_TRUE(chat.wait_prompts(3)) << chat.clean();
    EXPECT_NE(chat.clean().find("[saved state to"), std::string::npos) << chat.clean();
    chat.type("\x04");
    EXPECT_EQ(chat.wait_exit(), 0);
  }
  {
    PtyChat chat(args_, dir_);
    ASSERT_TRUE(chat.wait_prompts(1)) << chat.clean();
    chat.type("/load " + state + "\r");
    ASSERT_TRUE(chat.wait_prompts(2)) << chat.clean();
    chat.type("How are you\r");
    ASSERT_TRUE(chat.wait_prompts(3)) << chat.clean();
    EXPECT_EQ(last_reply(chat.clean(), "How are you"), reply2);
    chat.type("\x04");
    EXPECT_EQ(chat.wait_exit(), 0);
  }
  {  // without the saved state, turn 2 alone gives another reply: the state matters
    PtyChat chat(args_, dir_);
    ASSERT_TRUE(chat.wait_prompts(1)) << chat.clean();
    chat.type("How are you\r");
    ASSERT_TRUE(chat.wait_prompts(2)) << chat.clean();
    EXPECT_NE(last_reply(chat.clean(), "How are you"), reply2);
    chat.type("\x04");
    EXPECT_EQ(chat.wait_exit(), 0);
  }
  // readline kept a history file
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/.cache/bhasa/chat_history"));
}

// Ctrl+C stops a long reply and the chat goes on; bad commands print errors, not exits.
TEST_F(ChatPty, CtrlCStopsTheReplyAndKeepsTheChat) {
  std::vector<std::string> args = {"--model", dir_, "--temperature", "1", "--max-reply-tokens", "100000000",
                                   "--stop", "@@", "--threads", "1"};
  PtyChat chat(args, dir_);
  ASSERT_TRUE(chat.wait_prompts(1)) << chat.clean();
  chat.type("Go on forever\r");
  ASSERT_TRUE(chat.wait_text("Go on forever", 30)) << chat.clean();
  const size_t echoed = chat.size();
  // wait for some reply text, then interrupt
  for (int i = 0; i < 600 && chat.size() < echoed + 40; ++i) chat.wait_text("\x01never", 0.05);
  chat.type("\x03");  // Ctrl+C
  ASSERT_TRUE(chat.wait_text("[stopped]", 60)) << chat.size() << " bytes: " << chat.clean().substr(0, 300);
  ASSERT_TRUE(chat.wait_prompts(2)) << chat.clean().substr(0, 500);
  chat.type("/temp abc\r");
  ASSERT_TRUE(chat.wait_text("/temp needs a number")) << chat.clean();
  ASSERT_TRUE(chat.wait_prompts(3));
  chat.type("/help\r");
  ASSERT_TRUE(chat.wait_text("/save FILE")) << chat.clean();
  // Ctrl+D only once readline is reading again: typed earlier, the terminal is still
  // in canonical mode and the end-of-file it makes there is lost.
  ASSERT_TRUE(chat.wait_prompts(4)) << chat.clean();
  chat.type("\x04");
  EXPECT_EQ(chat.wait_exit(), 0);
}

}  // namespace
