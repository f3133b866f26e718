// bhasa chat: talk to a model, keeping its recurrent state between turns (the history
// is never reprocessed, so turn 100 costs what turn 1 does).
//
// A turn: the user's line + "\n" is fed, then the model continues until a stop string
// (default "\n\n": a blank line ends a reply, as between speeches in a play-like
// corpus) or --max-reply-tokens (default 256). The reply's tokens, stop string
// included, stay in the state, so the next line follows them.
//
// On a terminal: GNU readline (line editing, history in $XDG_CACHE_HOME/bhasa/chat_history
// or ~/.cache/bhasa/chat_history), a "> " prompt, Ctrl+C stops the current reply and keeps
// the chat, Ctrl+D exits.
// Without a terminal (stdin piped), for scripts: one line of stdin per turn; stdout holds
// only the replies, each followed by "\n\n"; command messages go to stderr.
// Commands: /reset, /save FILE, /load FILE, /temp X, /help, /quit.
#include <readline/history.h>
#include <readline/readline.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>

#include "cli/command.h"
#include "cli/sampling_args.h"
#include "core/error.h"
#include "infer/generator.h"
#include "infer/model_loader.h"

namespace bhasa::cli {

namespace {

struct ChatArgs : RunArgs {
  int max_reply_tokens = 256;
  std::vector<std::string> stop;  // empty: a blank line ("\n\n")
};

std::atomic<bool> g_interrupted{false};
void on_sigint(int) { g_interrupted.store(true); }

const char* kHelp =
    "/reset       forget the conversation (zero state)\n"
    "/save FILE   save the conversation state to FILE\n"
    "/load FILE   restore a state saved with /save (same model)\n"
    "/temp X      set the sampling temperature (0 is greedy)\n"
    "/help        this list\n"
    "/quit        exit (or Ctrl+D)\n";

std::string history_path() {
  namespace fs = std::filesystem;
  fs::path dir;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x)
    dir = fs::path(x) / "bhasa";
  else if (const char* h = std::getenv("HOME"); h && *h)
    dir = fs::path(h) / ".cache" / "bhasa";
  else
    return "";
  std::error_code ec;
  fs::create_directories(dir, ec);
  return ec ? "" : (dir / "chat_history").string();
}

class Chat {
 public:
  Chat(ChatArgs& a, LoadedModel& m, bool tty)
      : a_(a), gen_(*m.model, m.tokenizer.get(), a.sampling), tty_(tty) {
    opts_.max_new_tokens = a.max_reply_tokens;
    opts_.stop = a.stop.empty() ? std::vector<std::string>{"\n\n"} : unescape_all(a.stop);
    opts_.validate();
  }

  // Handles one line of input; false when the chat should end.
  bool handle(const std::string& line) {
    if (line.empty()) return true;
    if (line[0] == '/') return command(line);
    g_interrupted.store(false);
    gen_.feed(std::string_view(line + "\n"));  // an Error here leaves the state unchanged
    Generation out = gen_.generate(opts_, [](std::string_view s) {
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
    }, &g_interrupted);
    if (tty_) {
      if (out.reason == StopReason::Cancelled) std::fputs(" [stopped]", stdout);
      std::fputs("\n", stdout);
    } else {
      std::fputs("\n\n", stdout);
    }
    std::fflush(stdout);
    return true;
  }

 private:
  void say(const std::string& s) {  // command feedback: stdout on a terminal, stderr for scripts
    std::fprintf(tty_ ? stdout : stderr, "%s\n", s.c_str());
    std::fflush(tty_ ? stdout : stderr);
  }

  bool command(const std::string& line) {
    std::string name = line.substr(0, line.find(' '));
    std::string arg = line.size() > name.size() ? line.substr(name.size() + 1) : "";
    while (!arg.empty() && arg.back() == ' ') arg.pop_back();
    while (!arg.empty() && arg.front() == ' ') arg.erase(0, 1);
    if (name == "/quit" || name == "/exit") return false;
    if (name == "/help") {
      std::fputs(kHelp, tty_ ? stdout : stderr);
    } else if (name == "/reset") {
      gen_.reset();
      say("[state reset]");
    } else if (name == "/save") {
      check(!arg.empty(), "/save needs a file name: /save FILE");
      gen_.save_state(arg);
      say("[saved state to " + arg + "]");
    } else if (name == "/load") {
      check(!arg.empty(), "/load needs a file name: /load FILE");
      gen_.load_state(arg);
      say("[loaded state from " + arg + "]");
    } else if (name == "/temp") {
      float t = 0;
      try {
        size_t used = 0;
        t = std::stof(arg, &used);
        check(used == arg.size(), "");
      } catch (const std::exception&) {
        throw Error("/temp needs a number, e.g. /temp 0.7 (0 is greedy)");
      }
      gen_.sampler().set_temperature(t);
      say("[temperature " + arg + "]");
    } else {
      throw Error("unknown command " + name + ": /help lists the commands");
    }
    return true;
  }

  ChatArgs& a_;
  Generator gen_;
  GenerateOptions opts_;
  bool tty_;
};

void run_terminal(Chat& chat, const LoadedModel& m) {
  std::string hist = history_path();
  if (!hist.empty() && read_history(hist.c_str()) != 0) write_history(hist.c_str());  // creates it
  std::printf("bhasa chat: %s (%zu parameters, %s tokenizer). /help for commands, Ctrl+D to exit.\n",
              m.dir.c_str(), m.model->num_params(), m.tokenizer->kind().c_str());
  for (;;) {
    g_interrupted.store(false);
    char* raw = readline("> ");
    if (!raw) {  // Ctrl+D
      std::printf("\n");
      break;
    }
    std::string line = raw;
    std::free(raw);
    if (!line.empty()) {
      add_history(line.c_str());
      if (!hist.empty()) append_history(1, hist.c_str());
    }
    try {
      if (!chat.handle(line)) break;
    } catch (const Error& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
    }
  }
  if (!hist.empty()) history_truncate_file(hist.c_str(), 1000);
}

void run_script(Chat& chat) {
  std::string line;
  while (std::getline(std::cin, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    try {
      if (!chat.handle(line)) break;
    } catch (const Error& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
    }
  }
}

void run_chat(ChatArgs& a) {
  a.sampling.validate();
  LoadedModel m = load_model(a.model_dir, a.runtime.device_spec(), a.runtime.threads);
  check(m.tokenizer != nullptr,
        a.model_dir + " has no tokenizer.json: chat needs one to turn text into tokens");
  bool tty = isatty(STDIN_FILENO);
  Chat chat(a, m, tty);

  // Ctrl+C sets a flag that generation checks before each token; no SA_RESTART, so it
  // never kills the process while a chat is open.
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  struct sigaction old {};
  sigaction(SIGINT, &sa, &old);
  if (tty)
    run_terminal(chat, m);
  else
    run_script(chat);
  sigaction(SIGINT, &old, nullptr);
}

}  // namespace

void add_chat_command(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  CLI::App* cmd = app.add_subcommand("chat", "interactive chat that keeps the model's state between turns");
  add_run_options(cmd, *a);
  cmd->add_option("--max-reply-tokens", a->max_reply_tokens, "tokens per reply at most")
      ->capture_default_str();
  cmd->add_option("--stop", a->stop, "a reply ends at this text (repeatable; \\n is a newline; default a blank line)");
  cmd->footer(
      "Each line you type (+ newline) is fed to the model, which replies until a stop string or\n"
      "--max-reply-tokens. The state is kept between turns. Commands:\n" + std::string(kHelp) +
      "Piped stdin (no terminal): one line per turn; stdout holds only the replies, each followed\n"
      "by a blank line; command messages go to stderr.");
  cmd->callback([a] { run_chat(*a); });
}

}  // namespace bhasa::cli
